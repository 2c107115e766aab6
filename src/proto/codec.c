/* Update codecs (see codec.h for the mirror rule they exist for).
 *
 * Payloads are little-endian on every host: the bytes are assembled and
 * taken apart explicitly below, which is correct on a big-endian machine
 * too and compiles to plain loads and stores on the little-endian ones we
 * run on. The f16 conversions are the shared round-to-nearest-even ones of
 * src/gpu/tensor.h, so server and client round identically. */
#include "proto/codec.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "base/error.h"
#include "gpu/tensor.h"

/* Largest finite f16 (0x7bff). f16 payloads are clamped to +-this so they
 * never encode an infinity. */
#define ST_CODEC_F16_MAX 65504.0f

enum { F32_BYTES = 4, F16_BYTES = 2, BITS_PER_BYTE = 8 };

static bool codec_valid(st_update_encoding enc) {
  return (int)enc >= 0 && (int)enc < (int)ST_UPDATE_ENCODING_COUNT;
}

st_wire_dtype st_codec_dtype(st_update_encoding enc) {
  return enc == ST_UPDATE_F32 ? ST_WIRE_F32 : ST_WIRE_F16;
}

size_t st_codec_bytes(st_update_encoding enc, size_t numel) {
  if (!codec_valid(enc))
    return 0;
  size_t elem = st_codec_dtype(enc) == ST_WIRE_F32 ? F32_BYTES : F16_BYTES;
  if (numel > SIZE_MAX / elem)
    return 0;
  return numel * elem;
}

static void store_le16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> BITS_PER_BYTE);
}

static uint16_t load_le16(const uint8_t *p) {
  return (uint16_t)(p[0] | (unsigned)p[1] << BITS_PER_BYTE);
}

static void store_f32_le(uint8_t *p, float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  for (int i = 0; i < F32_BYTES; i++)
    p[i] = (uint8_t)(u >> (BITS_PER_BYTE * i));
}

static float load_f32_le(const uint8_t *p) {
  uint32_t u = 0;
  for (int i = 0; i < F32_BYTES; i++)
    u |= (uint32_t)p[i] << (BITS_PER_BYTE * i);
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Rounds to f16 after clamping to its finite range; an overflowed f32
 * difference (+-inf) clamps too. */
static uint16_t f16_clamped(float x) {
  if (x > ST_CODEC_F16_MAX)
    x = ST_CODEC_F16_MAX;
  else if (x < -ST_CODEC_F16_MAX)
    x = -ST_CODEC_F16_MAX;
  return st_f32_to_f16(x);
}

/* The new value of element i once the payload is applied. */
static float applied_value(st_update_encoding enc, const uint8_t *data,
                           size_t i, float current) {
  switch (enc) {
  case ST_UPDATE_F32:
    return load_f32_le(data + i * F32_BYTES);
  case ST_UPDATE_F16:
    return st_f16_to_f32(load_le16(data + i * F16_BYTES));
  default: /* ST_UPDATE_F16_DELTA */
    return current + st_f16_to_f32(load_le16(data + i * F16_BYTES));
  }
}

int st_codec_apply(st_update_encoding enc, st_wire_dtype dtype,
                   const uint8_t *data, size_t bytes, size_t numel,
                   float *weights) {
  if (!codec_valid(enc))
    return st_error_set(ST_EINVAL, "codec: unknown update encoding %d",
                        (int)enc);
  if (dtype != st_codec_dtype(enc))
    return st_error_set(ST_EBADMSG,
                        "codec: a %s payload must have dtype %s",
                        st_update_encoding_name(enc),
                        enc == ST_UPDATE_F32 ? "f32" : "f16");
  size_t want = st_codec_bytes(enc, numel);
  if ((numel > 0 && want == 0) || bytes != want)
    return st_error_set(ST_EBADMSG,
                        "codec: payload of %zu bytes for %zu elements of %s",
                        bytes, numel, st_update_encoding_name(enc));
  if (numel > 0 && (!data || !weights))
    return st_error_set(ST_EINVAL, "codec: NULL buffer");
  /* Check every result first, so a payload that would make any weight
   * non-finite changes none of them. */
  for (size_t i = 0; i < numel; i++)
    if (!isfinite(applied_value(enc, data, i, weights[i])))
      return st_error_set(ST_EBADMSG,
                          "codec: element %zu would become non-finite", i);
  for (size_t i = 0; i < numel; i++)
    weights[i] = applied_value(enc, data, i, weights[i]);
  return ST_OK;
}

int st_codec_encode(st_update_encoding enc, size_t numel, const float *value,
                    float *mirror, uint8_t *out) {
  if (!codec_valid(enc))
    return st_error_set(ST_EINVAL, "codec: unknown update encoding %d",
                        (int)enc);
  size_t bytes = st_codec_bytes(enc, numel);
  if (numel > 0 && bytes == 0)
    return st_error_set(ST_EINVAL, "codec: %zu elements overflow", numel);
  if (numel > 0 && (!value || !mirror || !out))
    return st_error_set(ST_EINVAL, "codec: NULL buffer");
  /* Refused up front: a non-finite weight means training diverged, and
   * the client must never be sent it. */
  for (size_t i = 0; i < numel; i++) {
    if (!isfinite(value[i]))
      return st_error_set(ST_ERANGE, "codec: value %zu is not finite", i);
    if (enc == ST_UPDATE_F16_DELTA && !isfinite(mirror[i]))
      return st_error_set(ST_ERANGE, "codec: mirror %zu is not finite", i);
  }
  for (size_t i = 0; i < numel; i++) {
    switch (enc) {
    case ST_UPDATE_F32:
      store_f32_le(out + i * F32_BYTES, value[i]);
      break;
    case ST_UPDATE_F16:
      store_le16(out + i * F16_BYTES, f16_clamped(value[i]));
      break;
    default: /* ST_UPDATE_F16_DELTA: the rounding left by the last update
                is in (value - mirror), so it is carried into this one. */
      store_le16(out + i * F16_BYTES, f16_clamped(value[i] - mirror[i]));
      break;
    }
  }
  /* The mirror advances by the very payload, through the client's own
   * function, so it equals the client's weights bit for bit. */
  return st_codec_apply(enc, st_codec_dtype(enc), out, bytes, numel, mirror);
}
