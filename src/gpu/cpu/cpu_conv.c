/* Temporary: replaced by the implementation being written now. */
#include "base/error.h"
#include "gpu/cpu/cpu_impl.h"

void st__cpu_conv_cache_free(st_cpu_backend *cpu) {
  (void)cpu;
}

int st__cpu_conv2d_fwd(st_backend *be, const st_conv2d_params *p,
                       const st_tensor *x, const st_tensor *w,
                       const st_tensor *bias, st_activation act, float beta,
                       st_tensor *y) {
  (void)be;
  (void)p;
  (void)x;
  (void)w;
  (void)bias;
  (void)act;
  (void)beta;
  (void)y;
  return st_error_set(ST_ENOTSUP, "st__cpu_conv2d_fwd: not built yet");
}

int st__cpu_conv2d_bwd_data(st_backend *be, const st_conv2d_params *p,
                            const st_tensor *dy, const st_tensor *w,
                            st_tensor *dx) {
  (void)be;
  (void)p;
  (void)dy;
  (void)w;
  (void)dx;
  return st_error_set(ST_ENOTSUP, "st__cpu_conv2d_bwd_data: not built yet");
}

int st__cpu_conv2d_bwd_weights(st_backend *be, const st_conv2d_params *p,
                               const st_tensor *x, const st_tensor *dy,
                               st_tensor *dw, st_tensor *db) {
  (void)be;
  (void)p;
  (void)x;
  (void)dy;
  (void)dw;
  (void)db;
  return st_error_set(ST_ENOTSUP, "st__cpu_conv2d_bwd_weights: not built yet");
}
