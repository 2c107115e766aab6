// Temporary: replaced by the implementation being written now.
#include "gpu/cuda/cuda_impl.h"

extern "C" int st__cuda_relu_fwd(st_backend *be, const st_tensor *x, st_tensor *y) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_relu_fwd: not built yet");
}

extern "C" int st__cuda_relu_bwd(st_backend *be, const st_tensor *y, const st_tensor *dy, st_tensor *dx) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_relu_bwd: not built yet");
}

extern "C" int st__cuda_add(st_backend *be, const st_tensor *a, const st_tensor *b, st_tensor *y) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_add: not built yet");
}

extern "C" int st__cuda_concat_channels(st_backend *be, const st_tensor *a, const st_tensor *b, st_tensor *y) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_concat_channels: not built yet");
}

extern "C" int st__cuda_split_channels(st_backend *be, const st_tensor *dy, st_tensor *da, st_tensor *db) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_split_channels: not built yet");
}

extern "C" int st__cuda_subsample(st_backend *be, const st_tensor *x, int stride, st_tensor *y) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_subsample: not built yet");
}

extern "C" int st__cuda_subsample_bwd(st_backend *be, const st_tensor *dy, int stride, st_tensor *dx) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_subsample_bwd: not built yet");
}

extern "C" int st__cuda_cast(st_backend *be, const st_tensor *src, st_tensor *dst) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_cast: not built yet");
}

extern "C" int st__cuda_copy(st_backend *be, const st_tensor *src, st_tensor *dst) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_copy: not built yet");
}

extern "C" int st__cuda_fill(st_backend *be, st_tensor *t, float value) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_fill: not built yet");
}

extern "C" int st__cuda_image_to_tensor(st_backend *be, const st_tensor *image, const int channel_order[3], const float mean[3], const float std_[3], st_tensor *y) {
  (void)be;
  return st_error_set(ST_ENOTSUP, "st__cuda_image_to_tensor: not built yet");
}
