/* The CUDA backend's context and the op functions its table points at.
 *
 * A context is one CUDA stream with its own cuDNN handle, a
 * device memory pool (cudaMalloc only when the pool has no fitting block,
 * so a warmed-up workload allocates nothing), pinned host staging buffers,
 * and the cuDNN algorithm cache of cuda_conv.cu. Contexts share nothing
 * mutable, so two of them can be driven from two threads at once; a
 * session's teacher and student contexts are ordered with st_event_*.
 *
 * Every op enqueues work on the context's stream and returns without
 * waiting (the loss and the confusion counts stay in device result
 * tensors); only downloads, which hand values to the host, synchronise the
 * stream. The build uses the per-thread default stream and no op touches
 * the legacy default stream or synchronises the device.
 *
 * Graphs: between graph_begin and graph_end the stream is captured
 * (cudaStreamCaptureModeThreadLocal, so other threads' contexts are not
 * disturbed); the context then refuses what cannot be replayed: pool
 * allocations, uploads, downloads and waits.
 *
 * File map: cuda_backend.cu (context, pool, copies, events, graphs, op table),
 * cuda_conv.cu (cuDNN convolutions), cuda_norm.cu (batch norm),
 * cuda_resize.cu (bilinear resize), cuda_eltwise.cu (relu, add, concat,
 * split, subsample, fill, copy, cast, image_to_tensor), cuda_loss.cu
 * (weighted cross-entropy, argmax, confusion counts), cuda_adam.cu,
 * cuda_graph_ops.cu (the ops of imported ONNX graphs).
 */
#ifndef ST_GPU_CUDA_IMPL_H
#define ST_GPU_CUDA_IMPL_H

#include <cuda_runtime.h>
#include <cudnn.h>

extern "C" {
#include "base/error.h"
#include "gpu/backend_impl.h"
}

/* Threads per block of the elementwise kernels. */
#define ST_CUDA_BLOCK 256

/* Every CUDA and cuDNN call is checked; a failure names the call,
 * file and line and fails the op (and so the job), never the process. The
 * thread's last-error slot is cleared, so that a later launch check does
 * not blame its kernel for this call (a sticky fault survives clearing and
 * is still what st_backend_check finds). */
#define ST_CUDA_TRY(call)                                                      \
  do {                                                                         \
    cudaError_t st__e = (call);                                                \
    if (st__e != cudaSuccess) {                                                \
      (void)cudaGetLastError();                                                \
      return st_error_set(ST_EBACKEND, "%s failed: %s (%s:%d)", #call,         \
                          cudaGetErrorString(st__e), __FILE__, __LINE__);      \
    }                                                                          \
  } while (0)

#define ST_CUDNN_TRY(call)                                                     \
  do {                                                                         \
    cudnnStatus_t st__s = (call);                                              \
    if (st__s != CUDNN_STATUS_SUCCESS)                                         \
      return st_error_set(ST_EBACKEND, "%s failed: %s (%s:%d)", #call,         \
                          cudnnGetErrorString(st__s), __FILE__, __LINE__);     \
  } while (0)

/* After a kernel launch: launch errors (bad configuration) surface here. */
#define ST_CUDA_LAUNCHED() ST_CUDA_TRY(cudaGetLastError())

/* Grid size for n elements with ST_CUDA_BLOCK threads, capped so that
 * grid-stride loops cover the rest. */
static inline unsigned st__cuda_grid(int64_t n) {
  int64_t blocks = (n + ST_CUDA_BLOCK - 1) / ST_CUDA_BLOCK;
  const int64_t max_blocks = 65535;
  return (unsigned)(blocks < 1 ? 1 : blocks > max_blocks ? max_blocks : blocks);
}

struct st_cuda_pool;       /* cuda_backend.cu */
struct st_cuda_conv_cache; /* cuda_conv.cu */

typedef struct st_cuda_backend {
  st_backend base;                 /* must be first */
  int device;                      /* CUDA device ordinal */
  cudaStream_t stream;             /* every op of the context runs here */
  cudnnHandle_t cudnn;             /* bound to stream */
  struct st_cuda_pool *pool;       /* device memory pool */
  void *pinned;                    /* host staging buffer (page-locked) */
  size_t pinned_bytes;             /* its size */
  cudaEvent_t pinned_free;         /* recorded after the last upload from it */
  void *scratch;                   /* small device scratch (reductions) */
  size_t scratch_bytes;            /* its size */
  void *loss_buffer;               /* weighted_ce_resized's frame-sized */
  size_t loss_buffer_bytes;        /* logits and gradient; their size */
  struct st_cuda_conv_cache *conv; /* cuDNN descriptors and algorithms */
  int recording;                   /* 1 between graph_begin and graph_end */
  int recording_refused;           /* a call was refused while recording */
  /* Bumped whenever scratch or the convolution workspace moves: a graph
   * recorded before uses the old block and must not be launched. */
  int64_t buffers_epoch;
  /* cuDNN algorithm searches this context ran (exhaustive mode, shapes the
   * process had not ranked yet). */
  int64_t algo_searches;
} st_cuda_backend;

static inline st_cuda_backend *st__cuda(st_backend *be) {
  return (st_cuda_backend *)be;
}

/* Fails (and marks the recording refused) while a graph is recorded:
 * `what` names the call that may not be recorded. */
int st__cuda_refuse_while_recording(st_cuda_backend *cu, const char *what);

/* Device memory from the context's pool (cuda_backend.cu). */
int st__cuda_pool_alloc(st_cuda_backend *cu, size_t bytes, void **out);
void st__cuda_pool_release(st_cuda_backend *cu, void *ptr);
/* Makes the context-held *block (*bytes long) at least `need` bytes: a
 * fresh pool block replaces it and buffers_epoch is bumped, so recordings
 * that used the old one go stale. */
int st__cuda_reserve(st_cuda_backend *cu, void **block, size_t *bytes,
                     size_t need);
/* A device scratch buffer of at least `bytes`, valid until the next call
 * on this context (grown from the pool when needed). */
int st__cuda_scratch(st_cuda_backend *cu, size_t bytes, void **out);
/* Copies `bytes` from device memory to host memory through the pinned
 * staging buffer and waits for the stream: for ops that return values to
 * the host. */
int st__cuda_read_back(st_cuda_backend *cu, void *host, const void *dev,
                       size_t bytes);

/* cuda_conv.cu */
void st__cuda_conv_cache_free(st_cuda_backend *cu);
extern "C" int st__cuda_conv2d_fwd(st_backend *be, const st_conv2d_params *p,
    const st_tensor *x, const st_tensor *w, const st_tensor *bias,
    st_activation act, float beta, st_tensor *y);
extern "C" int st__cuda_conv2d_bwd_data(st_backend *be, const st_conv2d_params
    *p, const st_tensor *dy, const st_tensor *w, st_tensor *dx);
extern "C" int st__cuda_conv2d_bwd_weights(st_backend *be, const
    st_conv2d_params *p, const st_tensor *x, const st_tensor *dy, st_tensor
    *dw, st_tensor *db);
extern "C" int st__cuda_batchnorm_fwd(st_backend *be, const st_tensor *x, const
    st_tensor *gamma, const st_tensor *beta_, double eps, st_activation act,
    st_tensor *y, st_tensor *mean, st_tensor *invstd);
extern "C" int st__cuda_batchnorm_bwd(st_backend *be, const st_tensor *x, const
    st_tensor *y, const st_tensor *dy, const st_tensor *gamma, const st_tensor
    *mean, const st_tensor *invstd, st_activation act, st_tensor *dx, st_tensor
    *dgamma, st_tensor *dbeta);
extern "C" int st__cuda_relu_fwd(st_backend *be, const st_tensor *x, st_tensor
    *y);
extern "C" int st__cuda_relu_bwd(st_backend *be, const st_tensor *y, const
    st_tensor *dy, st_tensor *dx);
extern "C" int st__cuda_add(st_backend *be, const st_tensor *a, const st_tensor
    *b, st_tensor *y);
extern "C" int st__cuda_concat_channels(st_backend *be, const st_tensor *a,
    const st_tensor *b, st_tensor *y);
extern "C" int st__cuda_split_channels(st_backend *be, const st_tensor *dy,
    st_tensor *da, st_tensor *db);
extern "C" int st__cuda_subsample(st_backend *be, const st_tensor *x, int
    stride, st_tensor *y);
extern "C" int st__cuda_subsample_bwd(st_backend *be, const st_tensor *dy, int
    stride, st_tensor *dx);
extern "C" int st__cuda_resize_bilinear_fwd(st_backend *be, const st_tensor *x,
    st_tensor *y);
extern "C" int st__cuda_resize_bilinear_bwd(st_backend *be, const st_tensor
    *dy, st_tensor *dx);
extern "C" int st__cuda_weighted_ce(st_backend *be, const st_tensor *logits,
    const st_tensor *label, const st_tensor *weight, st_tensor *result,
    st_tensor *dlogits);
extern "C" int
st__cuda_weighted_ce_resized(st_backend *be, const st_tensor *logits,
                             const st_tensor *label, const st_tensor *weight,
                             st_tensor *result, st_tensor *dlogits);
extern "C" int st__cuda_argmax_channels(st_backend *be, const st_tensor
    *logits, st_tensor *labels);
extern "C" int st__cuda_argmax_resized(st_backend *be, const st_tensor *logits,
                                       st_tensor *labels);
extern "C" int st__cuda_confusion_counts(st_backend *be, const st_tensor *pred,
    const st_tensor *label, int num_classes, st_tensor *counts);
extern "C" int st__cuda_adam_step(st_backend *be, const st_adam_params *p,
    int64_t step, st_tensor *param, const st_tensor *grad, st_tensor *m,
    st_tensor *v);
extern "C" int st__cuda_adam_steps(st_backend *be, const st_adam_params *p,
    int64_t step, int count, st_tensor *const *params, const st_tensor *const
    *grads, st_tensor *const *ms, st_tensor *const *vs);
extern "C" int st__cuda_cast(st_backend *be, const st_tensor *src, st_tensor
    *dst);
extern "C" int st__cuda_copy(st_backend *be, const st_tensor *src, st_tensor
    *dst);
extern "C" int st__cuda_fill(st_backend *be, st_tensor *t, float value);
extern "C" int st__cuda_image_to_tensor(st_backend *be, const st_tensor *image,
    const int channel_order[3], const float mean[3], const float std_[3],
    st_tensor *y);

/* cuda_graph_ops.cu: ops of imported (ONNX) graphs */
extern "C" int st__cuda_unary(st_backend *be, st_unary_kind kind, float alpha,
    float beta, const st_tensor *x, st_tensor *y);
extern "C" int st__cuda_binary(st_backend *be, st_binary_kind kind, const
    st_tensor *a, const st_tensor *b, st_tensor *y);
extern "C" int st__cuda_pool2d(st_backend *be, const st_pool2d_params *p,
    const st_tensor *x, st_tensor *y);
extern "C" int st__cuda_global_avg_pool(st_backend *be, const st_tensor *x,
    st_tensor *y);
extern "C" int st__cuda_resize(st_backend *be, const st_resize_params *p,
    const st_tensor *x, st_tensor *y);
extern "C" int st__cuda_softmax(st_backend *be, int axis, const st_tensor *x,
    st_tensor *y);
extern "C" int st__cuda_transpose(st_backend *be, const int *perm, const
    st_tensor *x, st_tensor *y);
extern "C" int st__cuda_concat(st_backend *be, int axis, const st_tensor
    *const *inputs, int count, st_tensor *y);
extern "C" int st__cuda_slice(st_backend *be, const int64_t *starts, const
    int64_t *steps, const st_tensor *x, st_tensor *y);
extern "C" int st__cuda_argmax_axis(st_backend *be, int axis, const st_tensor
    *x, st_tensor *y);

// Whether v replaces best in an argmax scanned in order: strictly greater,
// so the first maximum wins; a NaN beats every number and the first NaN
// wins, as in torch.argmax (and the CPU backend).
__device__ static inline bool st__cuda_argmax_takes(float v, float best) {
  return v > best || (isnan(v) && !isnan(best));
}

#endif
