/* libFuzzer target: arbitrary bytes as one protocol v1 message body, decoded
 * with the default limits. Every input must be refused with a status or
 * accepted, never crash, leak or read out of bounds. An accepted message
 * must re-encode, decode again to the same type, and re-encode to the same
 * bytes (encode and decode agree on every rule; see src/proto/proto.c). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  st_proto_limits limits;
  st_proto_limits_default(&limits);
  st_msg first;
  if (st_msg_decode(data, size, &limits, &first) != 0)
    return 0;

  uint8_t *enc1 = NULL, *enc2 = NULL;
  size_t len1 = 0, len2 = 0;
  if (st_msg_encode(&first, &enc1, &len1) != 0)
    abort(); /* the decoder accepted what the encoder refuses */
  /* Re-encoding may grow a body (float32 becomes float64), so the second
   * decode allows up to the ceiling. */
  st_proto_limits ceiling = {ST_PROTO_MAX_MESSAGE_BYTES_CEILING};
  st_msg second;
  if (st_msg_decode(enc1 + ST_PROTO_HEADER_BYTES,
                    len1 - ST_PROTO_HEADER_BYTES, &ceiling, &second) != 0)
    abort(); /* our own encoding does not decode */
  if (second.type != first.type)
    abort();
  if (st_msg_encode(&second, &enc2, &len2) != 0 || len2 != len1 ||
      memcmp(enc1, enc2, len1) != 0)
    abort(); /* decode(encode(m)) lost or changed a field */
  st_msg_free(&second);
  st_msg_free(&first);
  free(enc1);
  free(enc2);
  return 0;
}
