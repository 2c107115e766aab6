/* What the user looks at: fixed class colours, the alpha blend of a class
 * map over its frame, and the palette of the PNG class maps. Pure
 * functions on caller-owned buffers (no allocation, no FFmpeg), shared by
 * the output writer and the tests.
 *
 * Colours are PASCAL VOC's colour map (class 1 dark red, 2 dark green,
 * 3 olive, 4 dark blue, ...), which every segmentation viewer knows; class
 * 0 is the background: black in the masks and left unblended in the
 * overlay, so the picture stays readable.
 */
#ifndef ST_CLIENT_OVERLAY_H
#define ST_CLIENT_OVERLAY_H

#include <stddef.h>
#include <stdint.h>

/* Classes a label map can hold (u8). */
#define ST_OVERLAY_MAX_CLASSES 256
/* The class drawn as "nothing": not blended in the overlay. */
#define ST_OVERLAY_BACKGROUND_CLASS 0
/* Fixed-point scale of the blend weight. */
#define ST_OVERLAY_ALPHA_ONE 256

/* The RGB colour of a class (VOC colour map; any value 0..255). */
void st_class_color(int cls, uint8_t rgb[3]);
/* The 256-entry palette of a PAL8 picture: 0xAARRGGBB per class, opaque. */
void st_class_palette(uint32_t palette[ST_OVERLAY_MAX_CLASSES]);
/* out = frame with every non-background pixel moved `alpha` (0..1) of the
 * way to its class colour. rgb/out: w*h*3 bytes (may be the same buffer);
 * labels: w*h bytes. */
void st_overlay_blend(const uint8_t *rgb, const uint8_t *labels, size_t pixels,
                      double alpha, uint8_t *out);

#endif
