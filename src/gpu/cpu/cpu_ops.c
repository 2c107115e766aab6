/* Temporary: replaced by the implementation being written now. */
#include "base/error.h"
#include "gpu/cpu/cpu_impl.h"

int st__cpu_batchnorm_fwd(st_backend *be, const st_tensor *x,
                          const st_tensor *gamma, const st_tensor *beta_,
                          float eps, st_activation act, st_tensor *y,
                          st_tensor *mean, st_tensor *invstd) {
  (void)be;
  (void)x;
  (void)gamma;
  (void)beta_;
  (void)eps;
  (void)act;
  (void)y;
  (void)mean;
  (void)invstd;
  return st_error_set(ST_ENOTSUP, "st__cpu_batchnorm_fwd: not built yet");
}

int st__cpu_batchnorm_bwd(st_backend *be, const st_tensor *x,
                          const st_tensor *y, const st_tensor *dy,
                          const st_tensor *gamma, const st_tensor *mean,
                          const st_tensor *invstd, st_activation act,
                          st_tensor *dx, st_tensor *dgamma, st_tensor *dbeta) {
  (void)be;
  (void)x;
  (void)y;
  (void)dy;
  (void)gamma;
  (void)mean;
  (void)invstd;
  (void)act;
  (void)dx;
  (void)dgamma;
  (void)dbeta;
  return st_error_set(ST_ENOTSUP, "st__cpu_batchnorm_bwd: not built yet");
}

int st__cpu_relu_fwd(st_backend *be, const st_tensor *x, st_tensor *y) {
  (void)be;
  (void)x;
  (void)y;
  return st_error_set(ST_ENOTSUP, "st__cpu_relu_fwd: not built yet");
}

int st__cpu_relu_bwd(st_backend *be, const st_tensor *y, const st_tensor *dy,
                     st_tensor *dx) {
  (void)be;
  (void)y;
  (void)dy;
  (void)dx;
  return st_error_set(ST_ENOTSUP, "st__cpu_relu_bwd: not built yet");
}

int st__cpu_add(st_backend *be, const st_tensor *a, const st_tensor *b,
                st_tensor *y) {
  (void)be;
  (void)a;
  (void)b;
  (void)y;
  return st_error_set(ST_ENOTSUP, "st__cpu_add: not built yet");
}

int st__cpu_concat_channels(st_backend *be, const st_tensor *a,
                            const st_tensor *b, st_tensor *y) {
  (void)be;
  (void)a;
  (void)b;
  (void)y;
  return st_error_set(ST_ENOTSUP, "st__cpu_concat_channels: not built yet");
}

int st__cpu_split_channels(st_backend *be, const st_tensor *dy, st_tensor *da,
                           st_tensor *db) {
  (void)be;
  (void)dy;
  (void)da;
  (void)db;
  return st_error_set(ST_ENOTSUP, "st__cpu_split_channels: not built yet");
}

int st__cpu_subsample(st_backend *be, const st_tensor *x, int stride,
                      st_tensor *y) {
  (void)be;
  (void)x;
  (void)stride;
  (void)y;
  return st_error_set(ST_ENOTSUP, "st__cpu_subsample: not built yet");
}

int st__cpu_subsample_bwd(st_backend *be, const st_tensor *dy, int stride,
                          st_tensor *dx) {
  (void)be;
  (void)dy;
  (void)stride;
  (void)dx;
  return st_error_set(ST_ENOTSUP, "st__cpu_subsample_bwd: not built yet");
}

int st__cpu_resize_bilinear_fwd(st_backend *be, const st_tensor *x,
                                st_tensor *y) {
  (void)be;
  (void)x;
  (void)y;
  return st_error_set(ST_ENOTSUP, "st__cpu_resize_bilinear_fwd: not built yet");
}

int st__cpu_resize_bilinear_bwd(st_backend *be, const st_tensor *dy,
                                st_tensor *dx) {
  (void)be;
  (void)dy;
  (void)dx;
  return st_error_set(ST_ENOTSUP, "st__cpu_resize_bilinear_bwd: not built yet");
}

int st__cpu_weighted_ce(st_backend *be, const st_tensor *logits,
                        const st_tensor *label, const st_tensor *weight,
                        float *loss, st_tensor *dlogits) {
  (void)be;
  (void)logits;
  (void)label;
  (void)weight;
  (void)loss;
  (void)dlogits;
  return st_error_set(ST_ENOTSUP, "st__cpu_weighted_ce: not built yet");
}

int st__cpu_argmax_channels(st_backend *be, const st_tensor *logits,
                            st_tensor *labels) {
  (void)be;
  (void)logits;
  (void)labels;
  return st_error_set(ST_ENOTSUP, "st__cpu_argmax_channels: not built yet");
}

int st__cpu_confusion_counts(st_backend *be, const st_tensor *pred,
                             const st_tensor *label, int num_classes,
                             int64_t *counts) {
  (void)be;
  (void)pred;
  (void)label;
  (void)num_classes;
  (void)counts;
  return st_error_set(ST_ENOTSUP, "st__cpu_confusion_counts: not built yet");
}

int st__cpu_adam_step(st_backend *be, const st_adam_params *p, int64_t step,
                      st_tensor *param, const st_tensor *grad, st_tensor *m,
                      st_tensor *v) {
  (void)be;
  (void)p;
  (void)step;
  (void)param;
  (void)grad;
  (void)m;
  (void)v;
  return st_error_set(ST_ENOTSUP, "st__cpu_adam_step: not built yet");
}

int st__cpu_cast(st_backend *be, const st_tensor *src, st_tensor *dst) {
  (void)be;
  (void)src;
  (void)dst;
  return st_error_set(ST_ENOTSUP, "st__cpu_cast: not built yet");
}

int st__cpu_copy(st_backend *be, const st_tensor *src, st_tensor *dst) {
  (void)be;
  (void)src;
  (void)dst;
  return st_error_set(ST_ENOTSUP, "st__cpu_copy: not built yet");
}

int st__cpu_fill(st_backend *be, st_tensor *t, float value) {
  (void)be;
  (void)t;
  (void)value;
  return st_error_set(ST_ENOTSUP, "st__cpu_fill: not built yet");
}

int st__cpu_image_to_tensor(st_backend *be, const st_tensor *image,
                            const int channel_order[3], const float mean[3],
                            const float std_[3], st_tensor *y) {
  (void)be;
  (void)image;
  (void)channel_order;
  (void)mean;
  (void)std_;
  (void)y;
  return st_error_set(ST_ENOTSUP, "st__cpu_image_to_tensor: not built yet");
}
