/* libFuzzer target: arbitrary bytes as an ONNX model. The loader must
 * accept or refuse every input without crashing, leaking or reading out of
 * bounds (its nesting and size pre-scan included). */
#include <stddef.h>
#include <stdint.h>

#include "models/onnx_graph.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  st_onnx_model *m = NULL;
  if (st_onnx_model_parse(data, size, "fuzz", &m) == 0)
    st_onnx_model_free(m);
  return 0;
}
