// Temporary: replaced by the implementation being written now.
#include "gpu/cuda/cuda_impl.h"

extern "C" int st__cuda_adam_step(st_backend *be, const st_adam_params *p, int64_t step, st_tensor *param, const st_tensor *grad, st_tensor *m, st_tensor *v) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_adam_step: not built yet");
}
