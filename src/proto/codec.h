/* Update codecs: how the server turns "the student it trained" into the
 * bytes of an `update`, and how a client (and the server's mirror of that
 * client) turns those bytes back into weights.
 *
 * The server keeps, per session, a mirror of exactly what the client holds.
 * To send tensor i it calls st_codec_encode(value, mirror), which writes the
 * payload AND advances the mirror by applying that very payload with
 * st_codec_apply, the function the client runs. So after any number of
 * lossy (f16, f16-delta) updates the mirror equals the client's weights bit
 * for bit, and the next delta carries the rounding left over from the last.
 *
 *   f32        payload = value as little-endian f32; apply: w = payload
 *   f16        payload = value rounded to f16; apply: w = f32(payload)
 *   f16-delta  payload = f16(value - w), clamped to +-65504 so it stays
 *              finite; apply: w = w + f32(payload)
 *
 * Nothing here allocates; buffers are the caller's.
 */
#ifndef ST_PROTO_CODEC_H
#define ST_PROTO_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"

/* Wire dtype an encoding uses for its payload. */
st_wire_dtype st_codec_dtype(st_update_encoding enc);
/* Payload bytes for `numel` elements (0 on overflow). */
size_t st_codec_bytes(st_update_encoding enc, size_t numel);

/* Encodes `numel` values against `mirror` into `out` (st_codec_bytes
 * bytes), then applies the payload to `mirror`. */
int st_codec_encode(st_update_encoding enc, size_t numel, const float *value,
                    float *mirror, uint8_t *out);

/* Applies a received payload to `weights` (numel elements). `dtype` and
 * `bytes` come from the wire tensor and are checked against the encoding:
 * ST_EBADMSG when they disagree. Non-finite results are refused
 * (ST_EBADMSG) and leave `weights` untouched. */
int st_codec_apply(st_update_encoding enc, st_wire_dtype dtype,
                   const uint8_t *data, size_t bytes, size_t numel,
                   float *weights);

#endif
