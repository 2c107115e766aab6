/* JPEG key frames through libavcodec (FFmpeg's mjpeg codec): the client
 * encodes RGB frames before sending them, the server decodes them back to
 * RGB at the size the message declares.
 *
 * A codec object holds one libavcodec context plus the frame, packet and
 * swscale state it reuses; it is not thread-safe (one per worker / per
 * client thread). Decoding never trusts the peer: the declared size must
 * match the JPEG's own size, the payload is bounded by the caller's limit,
 * and libavcodec errors come back as ST_EBADMSG with its message.
 *
 * Ownership: output buffers are the caller's; nothing is kept between calls
 * except reusable scratch owned by the codec.
 */
#ifndef ST_PROTO_JPEG_H
#define ST_PROTO_JPEG_H

#include <stddef.h>
#include <stdint.h>

#define ST_JPEG_DEFAULT_QUALITY 90 /* 1..100, like libjpeg's scale */

typedef struct st_jpeg st_jpeg;

int st_jpeg_new(st_jpeg **out);
/* Accepts NULL. */
void st_jpeg_free(st_jpeg *j);

/* Decodes `len` bytes into `rgb` (width*height*3 bytes, RGB u8 row-major).
 * ST_EBADMSG when the data is not a decodable JPEG or its size is not
 * width x height. */
int st_jpeg_decode(st_jpeg *j, const uint8_t *data, size_t len, int width,
                   int height, uint8_t *rgb);

/* Encodes an RGB frame at `quality` (1..100). *out is malloc'd, the caller
 * frees it. */
int st_jpeg_encode(st_jpeg *j, const uint8_t *rgb, int width, int height,
                   int quality, uint8_t **out, size_t *out_len);

#endif
