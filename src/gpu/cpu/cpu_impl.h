/* The CPU backend's context and the op functions its table points at.
 * cpu_backend.c owns the context and the table; cpu_conv.c implements the
 * convolutions with oneDNN (and owns the primitive cache); cpu_ops.c
 * implements every other op in plain C with OpenMP, and cpu_graph_ops.c the
 * ops of imported (ONNX) graphs. */
#ifndef ST_GPU_CPU_IMPL_H
#define ST_GPU_CPU_IMPL_H

#include "gpu/backend_impl.h"
#include "gpu/cpu/cpu_kernels.h"

struct st_cpu_conv_cache; /* cpu_conv.c: oneDNN engine, stream, primitives */

typedef struct st_cpu_backend {
  st_backend base;                /* must be first */
  int threads;                    /* OpenMP team size for every op */
  _Atomic long long alloc_calls;  /* tensor allocations from the heap */
  struct st_cpu_conv_cache *conv; /* lazily created by cpu_conv.c */
  const st_cpu_kernels *kernels;  /* the hot loops, for the ISA picked */
} st_cpu_backend;

static inline st_cpu_backend *st__cpu(st_backend *be) {
  return (st_cpu_backend *)be;
}

/* cpu_conv.c */
void st__cpu_conv_cache_free(st_cpu_backend *cpu);
int st__cpu_conv2d_fwd(st_backend *be, const st_conv2d_params *p,
                       const st_tensor *x, const st_tensor *w,
                       const st_tensor *bias, st_activation act, float beta,
                       st_tensor *y);
int st__cpu_conv2d_bwd_data(st_backend *be, const st_conv2d_params *p,
                            const st_tensor *dy, const st_tensor *w,
                            st_tensor *dx);
int st__cpu_conv2d_bwd_weights(st_backend *be, const st_conv2d_params *p,
                               const st_tensor *x, const st_tensor *dy,
                               st_tensor *dw, st_tensor *db);

/* cpu_ops.c */
int st__cpu_batchnorm_fwd(st_backend *be, const st_tensor *x,
                          const st_tensor *gamma, const st_tensor *beta_,
                          double eps, st_activation act, st_tensor *y,
                          st_tensor *mean, st_tensor *invstd);
int st__cpu_batchnorm_bwd(st_backend *be, const st_tensor *x,
                          const st_tensor *y, const st_tensor *dy,
                          const st_tensor *gamma, const st_tensor *mean,
                          const st_tensor *invstd, st_activation act,
                          st_tensor *dx, st_tensor *dgamma, st_tensor *dbeta);
int st__cpu_relu_fwd(st_backend *be, const st_tensor *x, st_tensor *y);
int st__cpu_relu_bwd(st_backend *be, const st_tensor *y, const st_tensor *dy,
                     st_tensor *dx);
int st__cpu_add(st_backend *be, const st_tensor *a, const st_tensor *b,
                st_tensor *y);
int st__cpu_concat_channels(st_backend *be, const st_tensor *a,
                            const st_tensor *b, st_tensor *y);
int st__cpu_split_channels(st_backend *be, const st_tensor *dy, st_tensor *da,
                           st_tensor *db);
int st__cpu_subsample(st_backend *be, const st_tensor *x, int stride,
                      st_tensor *y);
int st__cpu_subsample_bwd(st_backend *be, const st_tensor *dy, int stride,
                          st_tensor *dx);
int st__cpu_resize_bilinear_fwd(st_backend *be, const st_tensor *x,
                                st_tensor *y);
int st__cpu_resize_bilinear_bwd(st_backend *be, const st_tensor *dy,
                                st_tensor *dx);
int st__cpu_weighted_ce(st_backend *be, const st_tensor *logits,
                        const st_tensor *label, const st_tensor *weight,
                        st_tensor *result, st_tensor *dlogits);
int st__cpu_weighted_ce_resized(st_backend *be, const st_tensor *logits,
                                const st_tensor *label, const st_tensor *weight,
                                st_tensor *result, st_tensor *dlogits);
int st__cpu_argmax_channels(st_backend *be, const st_tensor *logits,
                            st_tensor *labels);
int st__cpu_argmax_resized(st_backend *be, const st_tensor *logits,
                           st_tensor *labels);
int st__cpu_confusion_counts(st_backend *be, const st_tensor *pred,
                             const st_tensor *label, int num_classes,
                             st_tensor *counts);
int st__cpu_adam_step(st_backend *be, const st_adam_params *p, int64_t step,
                      st_tensor *param, const st_tensor *grad, st_tensor *m,
                      st_tensor *v);
int st__cpu_cast(st_backend *be, const st_tensor *src, st_tensor *dst);
int st__cpu_copy(st_backend *be, const st_tensor *src, st_tensor *dst);
int st__cpu_fill(st_backend *be, st_tensor *t, float value);
int st__cpu_image_to_tensor(st_backend *be, const st_tensor *image,
                            const int channel_order[3], const float mean[3],
                            const float std_[3], st_tensor *y);

/* Test hook: with 0, every bilinear resize of cpu_ops.c (forward, backward,
 * the fused class map and loss) takes its general column path, also where
 * a doubled width has a faster one with the same results. */
void st__cpu_resize_allow_doubled(int allowed);

/* Test hook: with 0, every convolution a CPU context builds from then on
 * is direct (cpu_conv.c conv_alg), so tests can compare the algorithms. */
void st__cpu_conv_allow_winograd(int allowed);

/* cpu_graph_ops.c: ops of imported (ONNX) graphs */
int st__cpu_unary(st_backend *be, st_unary_kind kind, float alpha, float beta,
                  const st_tensor *x, st_tensor *y);
int st__cpu_binary(st_backend *be, st_binary_kind kind, const st_tensor *a,
                   const st_tensor *b, st_tensor *y);
int st__cpu_pool2d(st_backend *be, const st_pool2d_params *p,
                   const st_tensor *x, st_tensor *y);
int st__cpu_global_avg_pool(st_backend *be, const st_tensor *x, st_tensor *y);
int st__cpu_resize(st_backend *be, const st_resize_params *p,
                   const st_tensor *x, st_tensor *y);
int st__cpu_softmax(st_backend *be, int axis, const st_tensor *x, st_tensor *y);
int st__cpu_transpose(st_backend *be, const int *perm, const st_tensor *x,
                      st_tensor *y);
int st__cpu_concat(st_backend *be, int axis, const st_tensor *const *inputs,
                   int count, st_tensor *y);
int st__cpu_slice(st_backend *be, const int64_t *starts, const int64_t *steps,
                  const st_tensor *x, st_tensor *y);
int st__cpu_argmax_axis(st_backend *be, int axis, const st_tensor *x,
                        st_tensor *y);

#endif
