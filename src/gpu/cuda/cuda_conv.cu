// Temporary: replaced by the implementation being written now.
#include "gpu/cuda/cuda_impl.h"

void st__cuda_conv_cache_free(st_cuda_backend *cu) { (void)cu; }

extern "C" int st__cuda_conv2d_fwd(st_backend *be, const st_conv2d_params *p, const st_tensor *x, const st_tensor *w, const st_tensor *bias, st_activation act, float beta, st_tensor *y) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_conv2d_fwd: not built yet");
}

extern "C" int st__cuda_conv2d_bwd_data(st_backend *be, const st_conv2d_params *p, const st_tensor *dy, const st_tensor *w, st_tensor *dx) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_conv2d_bwd_data: not built yet");
}

extern "C" int st__cuda_conv2d_bwd_weights(st_backend *be, const st_conv2d_params *p, const st_tensor *x, const st_tensor *dy, st_tensor *dw, st_tensor *db) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_conv2d_bwd_weights: not built yet");
}
