#include "overlay.h"

#include <math.h>

/* VOC's colour map spreads the bits of the class index over the three
 * channels, most significant bit first, three bits per round. */
#define VOC_ROUNDS 8
#define BYTE_TOP_BIT 7
#define OPAQUE_ALPHA 0xff000000u

void st_class_color(int cls, uint8_t rgb[3]) {
  unsigned c = (unsigned)cls & (ST_OVERLAY_MAX_CLASSES - 1);
  unsigned r = 0, g = 0, b = 0;
  for (int j = 0; j < VOC_ROUNDS && c; j++) {
    r |= (c & 1u) << (BYTE_TOP_BIT - j);
    g |= ((c >> 1) & 1u) << (BYTE_TOP_BIT - j);
    b |= ((c >> 2) & 1u) << (BYTE_TOP_BIT - j);
    c >>= 3;
  }
  rgb[0] = (uint8_t)r;
  rgb[1] = (uint8_t)g;
  rgb[2] = (uint8_t)b;
}

void st_class_palette(uint32_t palette[ST_OVERLAY_MAX_CLASSES]) {
  for (int i = 0; i < ST_OVERLAY_MAX_CLASSES; i++) {
    uint8_t c[3];
    st_class_color(i, c);
    palette[i] = OPAQUE_ALPHA | (uint32_t)c[0] << 16 | (uint32_t)c[1] << 8 |
                 (uint32_t)c[2];
  }
}

void st_overlay_blend(const uint8_t *rgb, const uint8_t *labels, size_t pixels,
                      double alpha, uint8_t *out) {
  /* Integer blend: a = alpha in 1/256ths, rounded; out = (p*(256-a) +
   * colour*a + 128) / 256. */
  int a = (int)lround((alpha < 0   ? 0
                       : alpha > 1 ? 1
                                   : alpha) *
                      ST_OVERLAY_ALPHA_ONE);
  uint16_t tint[ST_OVERLAY_MAX_CLASSES][3];
  for (int k = 0; k < ST_OVERLAY_MAX_CLASSES; k++) {
    uint8_t c[3];
    st_class_color(k, c);
    for (int ch = 0; ch < 3; ch++)
      tint[k][ch] = (uint16_t)(c[ch] * a + ST_OVERLAY_ALPHA_ONE / 2);
  }
  const int keep = ST_OVERLAY_ALPHA_ONE - a;
  for (size_t p = 0; p < pixels; p++) {
    const uint8_t *src = rgb + 3 * p;
    uint8_t *dst = out + 3 * p;
    unsigned k = labels[p];
    if (k == ST_OVERLAY_BACKGROUND_CLASS) {
      if (dst != src) {
        dst[0] = src[0];
        dst[1] = src[1];
        dst[2] = src[2];
      }
      continue;
    }
    for (int ch = 0; ch < 3; ch++)
      dst[ch] =
          (uint8_t)((src[ch] * keep + tint[k][ch]) / ST_OVERLAY_ALPHA_ONE);
  }
}
