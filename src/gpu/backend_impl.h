/* The op table every backend fills in (see backend.h for the semantics of
 * each op). The public wrappers in backend.c have already checked dtypes,
 * ranks and shapes, so a slot only does the work. A NULL slot means the
 * backend does not implement that op and the wrapper reports ST_ENOTSUP. */
#ifndef ST_GPU_BACKEND_IMPL_H
#define ST_GPU_BACKEND_IMPL_H

#include "gpu/backend.h"

typedef struct st_backend_ops {
  const char *name;
  st_backend_kind kind;
  int host_memory; /* 1: tensor data is host-addressable */

  /* lifecycle and memory */
  void (*free)(st_backend *be);
  int (*alloc)(st_backend *be, size_t bytes, void **out);
  void (*release)(st_backend *be, void *ptr);
  int (*upload)(st_backend *be, void *dst, const void *host, size_t bytes);
  int (*download)(st_backend *be, void *host, const void *src, size_t bytes);
  int (*sync)(st_backend *be);
  /* optional: make the calling thread address this context's device; the
   * wrappers call it before every other slot, so a context can be driven
   * from any thread on a machine with several GPUs */
  int (*bind)(st_backend *be);
  /* optional: ST_OK while the context can still run work, else ST_ENODEV
   * with the reason (st_backend_check; absent: always ST_OK) */
  int (*check)(st_backend *be);
  /* optional: flush subnormal floats to zero on the threads that run this
   * context's ops (st_backend_flush_subnormals; absent: nothing to do) */
  void (*flush_subnormals)(st_backend *be);
  /* optional: memory accounting (zeros when absent) */
  void (*stats)(const st_backend *be, st_backend_stats *out);
  /* optional: events (absent on synchronous backends) */
  int (*event_new)(st_backend *be, st_event **out);
  int (*event_record)(st_backend *be, st_event *ev);
  int (*event_wait)(st_backend *be, st_event *ev);
  void (*event_free)(st_event *ev);
  /* optional: recorded op sequences (absent: st_graph_begin is ST_ENOTSUP) */
  int (*graph_begin)(st_backend *be);
  int (*graph_end)(st_backend *be, st_graph **out);
  int (*graph_valid)(st_backend *be, const st_graph *g);
  int (*graph_launch)(st_backend *be, st_graph *g);
  void (*graph_free)(st_backend *be, st_graph *g);

  /* convolutions */
  int (*conv2d_fwd)(st_backend *be, const st_conv2d_params *p,
                    const st_tensor *x, const st_tensor *w,
                    const st_tensor *bias, st_activation act, float beta,
                    st_tensor *y);
  int (*conv2d_bwd_data)(st_backend *be, const st_conv2d_params *p,
                         const st_tensor *dy, const st_tensor *w,
                         st_tensor *dx);
  int (*conv2d_bwd_weights)(st_backend *be, const st_conv2d_params *p,
                            const st_tensor *x, const st_tensor *dy,
                            st_tensor *dw, st_tensor *db);
  /* normalisation and elementwise */
  int (*batchnorm_fwd)(st_backend *be, const st_tensor *x,
                       const st_tensor *gamma, const st_tensor *beta_,
                       double eps, st_activation act, st_tensor *y,
                       st_tensor *mean, st_tensor *invstd);
  int (*batchnorm_bwd)(st_backend *be, const st_tensor *x, const st_tensor *y,
                       const st_tensor *dy, const st_tensor *gamma,
                       const st_tensor *mean, const st_tensor *invstd,
                       st_activation act, st_tensor *dx, st_tensor *dgamma,
                       st_tensor *dbeta);
  int (*relu_fwd)(st_backend *be, const st_tensor *x, st_tensor *y);
  int (*relu_bwd)(st_backend *be, const st_tensor *y, const st_tensor *dy,
                  st_tensor *dx);
  int (*add)(st_backend *be, const st_tensor *a, const st_tensor *b,
             st_tensor *y);
  /* layout */
  int (*concat_channels)(st_backend *be, const st_tensor *a,
                         const st_tensor *b, st_tensor *y);
  int (*split_channels)(st_backend *be, const st_tensor *dy, st_tensor *da,
                        st_tensor *db);
  int (*subsample)(st_backend *be, const st_tensor *x, int stride,
                   st_tensor *y);
  int (*subsample_bwd)(st_backend *be, const st_tensor *dy, int stride,
                       st_tensor *dx);
  int (*resize_bilinear_fwd)(st_backend *be, const st_tensor *x, st_tensor *y);
  int (*resize_bilinear_bwd)(st_backend *be, const st_tensor *dy,
                             st_tensor *dx);
  /* loss, metrics, optimiser */
  /* into result, F32 [ST_CE_RESULT_LEN]: no waiting */
  int (*weighted_ce)(st_backend *be, const st_tensor *logits,
                     const st_tensor *label, const st_tensor *weight,
                     st_tensor *result, st_tensor *dlogits);
  /* weighted_ce of the logits resized to the label's H,W, dlogits small */
  int (*weighted_ce_resized)(st_backend *be, const st_tensor *logits,
                             const st_tensor *label, const st_tensor *weight,
                             st_tensor *result, st_tensor *dlogits);
  int (*argmax_channels)(st_backend *be, const st_tensor *logits,
                         st_tensor *labels);
  /* argmax_channels of resize_bilinear_fwd to the labels' H,W, fused */
  int (*argmax_resized)(st_backend *be, const st_tensor *logits,
                        st_tensor *labels);
  /* into counts, I64 [k * k + ST_CONFUSION_EXTRA]: no waiting */
  int (*confusion_counts)(st_backend *be, const st_tensor *pred,
                          const st_tensor *label, int num_classes,
                          st_tensor *counts);
  int (*adam_step)(st_backend *be, const st_adam_params *p, int64_t step,
                   st_tensor *param, const st_tensor *grad, st_tensor *m,
                   st_tensor *v);
  /* optional: adam_step over count tensors at once (absent: the wrapper
   * calls adam_step per tensor) */
  int (*adam_steps)(st_backend *be, const st_adam_params *p, int64_t step,
                    int count, st_tensor *const *params,
                    const st_tensor *const *grads, st_tensor *const *ms,
                    st_tensor *const *vs);
  /* conversions */
  int (*cast)(st_backend *be, const st_tensor *src, st_tensor *dst);
  int (*copy)(st_backend *be, const st_tensor *src, st_tensor *dst);
  int (*fill)(st_backend *be, st_tensor *t, float value);
  int (*image_to_tensor)(st_backend *be, const st_tensor *image,
                         const int channel_order[3], const float mean[3],
                         const float std_[3], st_tensor *y);
  /* optional: ops of imported (ONNX) graphs, used by the teacher executor */
  /* y = f(x) elementwise (relu, clip, hard sigmoid/swish, sigmoid) */
  int (*unary)(st_backend *be, st_unary_kind kind, float alpha, float beta,
               const st_tensor *x, st_tensor *y);
  /* y = a (op) b with numpy broadcasting */
  int (*binary)(st_backend *be, st_binary_kind kind, const st_tensor *a,
                const st_tensor *b, st_tensor *y);
  /* max or average pooling over NCHW, y sized by the caller */
  int (*pool2d)(st_backend *be, const st_pool2d_params *p, const st_tensor *x,
                st_tensor *y);
  /* per-plane mean of NCHW into [N,C,1,1] */
  int (*global_avg_pool)(st_backend *be, const st_tensor *x, st_tensor *y);
  /* ONNX Resize (nearest or bilinear) over the last two axes of NCHW */
  int (*resize)(st_backend *be, const st_resize_params *p, const st_tensor *x,
                st_tensor *y);
  /* softmax along one axis */
  int (*softmax)(st_backend *be, int axis, const st_tensor *x, st_tensor *y);
  /* axis permutation, y.shape[i] = x.shape[perm[i]] */
  int (*transpose)(st_backend *be, const int *perm, const st_tensor *x,
                   st_tensor *y);
  /* concatenation of count tensors along axis */
  int (*concat)(st_backend *be, int axis, const st_tensor *const *inputs,
                int count, st_tensor *y);
  /* strided slice, every index already inside x */
  int (*slice)(st_backend *be, const int64_t *starts, const int64_t *steps,
               const st_tensor *x, st_tensor *y);
  /* I64 index of the first maximum along axis, keepdims */
  int (*argmax_axis)(st_backend *be, int axis, const st_tensor *x,
                     st_tensor *y);
} st_backend_ops;

/* Every backend context starts with this header. */
struct st_backend {
  const st_backend_ops *ops; /* the backend's op table */
  st_backend_options opts;   /* options it was created with */
};

/* Every backend's event starts with this header; a synchronous backend's
 * event is the bare header with ops NULL (nothing to wait for). */
struct st_event {
  const st_backend_ops *ops; /* backend that made it; NULL: synchronous */
};

/* Every backend's recorded graph starts with this header. */
struct st_graph {
  st_backend *owner; /* the context that recorded it; launches only there */
};

/* Constructors of the built-in backends. */
int st__backend_cpu_new(const st_backend_options *opts, st_backend **out);
/* Defined by the CUDA target when it is built (ST_HAVE_CUDA). */
int st__backend_cuda_new(const st_backend_options *opts, st_backend **out);

#endif
