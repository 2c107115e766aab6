/* libFuzzer target: arbitrary bytes as a safetensors file image. Every
 * input must be either accepted (then every tensor reads back) or refused
 * with an error, never crash, leak or read out of bounds. */
#include <stddef.h>
#include <stdint.h>

#include "models/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  st_safetensors *st = NULL;
  if (st_safetensors_parse(data, size, "fuzz", &st) != 0)
    return 0;
  for (size_t i = 0; i < st_safetensors_count(st); i++) {
    st_tensor t;
    if (st_safetensors_read(st, st_safetensors_name(st, i), &t) == 0)
      st_tensor_free(&t);
  }
  st_safetensors_metadata(st, "format");
  st_safetensors_free(st);
  return 0;
}
