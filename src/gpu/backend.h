/* Compute backends: one op table behind an opaque context.
 *
 * A backend context owns an execution resource (a thread team on the CPU, a
 * stream with its library handles on CUDA) and the memory its tensors live
 * in. Callers only use the st_* wrappers below: they check dtypes and shapes
 * once, for every backend, and then dispatch through the context's table
 * (backend_impl.h). Nothing above src/gpu/ sees oneDNN or CUDA headers.
 *
 * Conventions for every op:
 *  - activations are F32 NCHW, contiguous, in the backend's memory;
 *  - outputs are written, never accumulated, unless a `beta` says otherwise;
 *  - an output may alias an input only where the op says "in place allowed";
 *  - ops are asynchronous on backends with streams: st_backend_sync() waits;
 *  - a failure returns a negative ST_E* code and records a detail line.
 */
#ifndef ST_GPU_BACKEND_H
#define ST_GPU_BACKEND_H

#include <stdint.h>

#include "gpu/tensor.h"

typedef struct st_backend st_backend;

typedef enum st_backend_kind {
  ST_BACKEND_CPU = 0,
  ST_BACKEND_CUDA,
  ST_BACKEND_AUTO, /* CUDA when a device answers, otherwise the CPU */
} st_backend_kind;

typedef struct st_backend_options {
  st_backend_kind kind;
  int threads;       /* CPU worker threads; 0 = all online cores */
  int device;        /* CUDA device ordinal */
  int deterministic; /* 1: deterministic algorithms only */
  int conv_exhaustive; /* CUDA: time every cuDNN algorithm once per shape
                          instead of trusting the heuristic */
  int graphs_off;      /* 1: record no op sequences (st_graph_begin says
                          ST_ENOTSUP), every op is launched on its own */
  const char *cpu_isa; /* CPU: the instruction set of the hot loops,
                          "baseline", "avx2" or "avx512" (x86-64); NULL
                          for $ST_CPU_ISA if set, else the widest this CPU
                          runs. Every choice gives the same results. */
} st_backend_options;

/* Parses "cpu", "cuda" or "auto". */
int st_backend_kind_from_name(const char *name, st_backend_kind *out);

/* Creates a context. With ST_BACKEND_AUTO and no usable CUDA device it logs
 * one line and returns a CPU context. */
int st_backend_new(const st_backend_options *opts, st_backend **out);
/* Frees a context; every tensor allocated on it must be freed first.
 * Accepts NULL. */
void st_backend_free(st_backend *be);
/* "cpu" or "cuda". */
const char *st_backend_name(const st_backend *be);
/* A CPU context's instruction set for its hot loops ("baseline", "avx2",
 * "avx512"); NULL for other backends. */
const char *st_backend_cpu_isa(const st_backend *be);
st_backend_kind st_backend_get_kind(const st_backend *be);
/* 1 when tensors of this backend are directly addressable by host code. */
int st_backend_is_host(const st_backend *be);

/* Raw memory of the backend (used by st_tensor_alloc). */
int st_backend_alloc(st_backend *be, size_t bytes, void **out);
void st_backend_release(st_backend *be, void *ptr);
/* Copies between host memory and a tensor of this backend; sizes must
 * match the tensor's byte size. */
int st_tensor_upload(st_backend *be, st_tensor *dst, const void *host,
                     size_t bytes);
int st_tensor_download(st_backend *be, const st_tensor *src, void *host,
                       size_t bytes);
/* Waits for all work queued on the context. */
int st_backend_sync(st_backend *be);
/* Whether the context can still run work, without waiting for it: ST_OK,
 * or ST_ENODEV with the reason when its device is lost to this process
 * (CUDA: a kernel fault or another sticky error, after which every call
 * fails until the process restarts). Called after a failed job, it tells a
 * bad input or a full device, after which the next job may succeed, from a
 * dead device, after which none will. */
int st_backend_check(st_backend *be);
/* Makes the threads that run this context's ops on the calling thread's
 * behalf flush subnormal floats to zero (results and inputs), for work
 * whose numbers have no use for values below FLT_MIN (a teacher's
 * saturated gates) and would otherwise take a microcode assist on every
 * multiply-add touching one. Per thread and sticky. The CPU backend sets
 * x86 MXCSR FTZ/DAZ (ARM FPCR FZ) on the caller and its OpenMP team; GPU
 * backends have nothing to do. The student is never run this way: its
 * numbers follow PyTorch's, which keeps subnormals. */
void st_backend_flush_subnormals(st_backend *be);

/* Memory accounting of a context. alloc_calls counts the allocations the
 * backend took from the system (cudaMalloc by the CUDA pool, which serves
 * every tensor, workspace and scratch buffer; the heap for CPU tensors): it
 * stays constant once a workload has warmed up. algo_searches counts the
 * convolution algorithm searches the context timed (CUDA with
 * opts.conv_exhaustive: one per shape per process and device, since later
 * contexts take the stored ranking; 0 elsewhere). */
typedef struct st_backend_stats {
  int64_t alloc_calls;        /* system allocations made so far */
  int64_t bytes_reserved;     /* bytes the pool holds from the device */
  int64_t bytes_in_use;       /* bytes handed out and not yet released */
  int64_t algo_searches;      /* algorithm searches this context ran */
} st_backend_stats;
void st_backend_get_stats(const st_backend *be, st_backend_stats *out);

/* Ordering between contexts of one device (a session's teacher stream and
 * student stream): work queued on `waiter` after st_backend_wait_event runs
 * only after the work queued on the recording context before
 * st_event_record. On synchronous backends (the CPU) these are no-ops. */
typedef struct st_event st_event;
int st_event_new(st_backend *be, st_event **out);
int st_event_record(st_backend *be, st_event *ev);
int st_backend_wait_event(st_backend *waiter, st_event *ev);
/* Accepts NULL. The event must not be pending in a wait. */
void st_event_free(st_event *ev);

/* Recorded op sequences (CUDA graphs). Between st_graph_begin and
 * st_graph_end the ops called on a context are recorded instead of run;
 * st_graph_launch then runs the whole recording with one call, as often as
 * wanted, on the same tensors (their device addresses are part of it: the
 * caller keeps every tensor the recorded ops touched alive and in place).
 * While recording, nothing may wait for the device, hand a value to the
 * host (downloads, *_result, sync) or take new memory from the context; a
 * call that tries fails, and so does st_graph_end. Backends without
 * recording (the CPU) and contexts created with opts.graphs_off answer
 * st_graph_begin with ST_ENOTSUP; callers then run their ops directly. */
typedef struct st_graph st_graph;
int st_graph_begin(st_backend *be);
/* Ends the recording. *out is the graph, or NULL with an error when a call
 * failed while recording (then nothing ran: run the ops again, directly). */
int st_graph_end(st_backend *be, st_graph **out);
/* 1 while `g` may still be launched on `be`: the context's own buffers that
 * recorded ops use (scratch, convolution workspace) have not moved since. */
int st_graph_valid(st_backend *be, const st_graph *g);
int st_graph_launch(st_backend *be, st_graph *g);
/* Accepts NULL. */
void st_graph_free(st_backend *be, st_graph *g);

/* ---- ops ---------------------------------------------------------------- */

typedef enum st_activation {
  ST_ACT_NONE = 0,
  ST_ACT_RELU,
} st_activation;

typedef struct st_conv2d_params {
  int stride[2];   /* [h, w] */
  int pad[2];      /* [h, w], symmetric: top=bottom, left=right */
  int dilation[2]; /* [h, w], 1 = dense */
  int groups;      /* input and output channels split into this many groups */
} st_conv2d_params;

/* Output extent of a convolution along one axis. */
int64_t st_conv2d_out_size(int64_t in, int64_t kernel, int stride, int pad,
                           int dilation);

/* y = act(conv(x, w) + bias + beta * y).
 * x [N,Cin,H,W], w [Cout,Cin/groups,KH,KW], bias [Cout] or NULL,
 * y [N,Cout,OH,OW]. beta is 0 (overwrite) or 1 (fused residual add). */
int st_conv2d_fwd(st_backend *be, const st_conv2d_params *p,
                  const st_tensor *x, const st_tensor *w,
                  const st_tensor *bias, st_activation act, float beta,
                  st_tensor *y);
/* dx = conv_transpose(dy, w): the gradient of conv2d_fwd with respect to x
 * (no bias, no activation, beta 0). */
int st_conv2d_bwd_data(st_backend *be, const st_conv2d_params *p,
                       const st_tensor *dy, const st_tensor *w, st_tensor *dx);
/* dw = gradient w.r.t. w, db = sum of dy over N,H,W (db may be NULL). */
int st_conv2d_bwd_weights(st_backend *be, const st_conv2d_params *p,
                          const st_tensor *x, const st_tensor *dy,
                          st_tensor *dw, st_tensor *db);

/* Batch normalisation with the statistics of the current input (biased
 * variance over N,H,W, as PyTorch in training mode), affine, then act.
 * x,y [N,C,H,W]; gamma, beta_ [C]; saves mean [C] and invstd [C] =
 * 1/sqrt(var+eps) for the backward pass. In place allowed (y == x). */
int st_batchnorm_fwd(st_backend *be, const st_tensor *x, const st_tensor *gamma,
                     const st_tensor *beta_, double eps, st_activation act,
                     st_tensor *y, st_tensor *mean, st_tensor *invstd);
/* Backward of st_batchnorm_fwd. y is the forward output (its sign is the
 * ReLU mask when act is ST_ACT_RELU). dx may be NULL when the input needs no
 * gradient; dgamma/dbeta may be NULL when the affine parameters are frozen. */
int st_batchnorm_bwd(st_backend *be, const st_tensor *x, const st_tensor *y,
                     const st_tensor *dy, const st_tensor *gamma,
                     const st_tensor *mean, const st_tensor *invstd,
                     st_activation act, st_tensor *dx, st_tensor *dgamma,
                     st_tensor *dbeta);

/* y = max(x, 0); in place allowed. */
int st_relu_fwd(st_backend *be, const st_tensor *x, st_tensor *y);
/* dx = dy * (y > 0); in place allowed (dx == dy). */
int st_relu_bwd(st_backend *be, const st_tensor *y, const st_tensor *dy,
                st_tensor *dx);
/* y = a + b, same shapes; in place allowed (y == a or y == b). */
int st_add(st_backend *be, const st_tensor *a, const st_tensor *b,
           st_tensor *y);
/* y = cat([a, b], dim=1). */
int st_concat_channels(st_backend *be, const st_tensor *a, const st_tensor *b,
                       st_tensor *y);
/* Backward of concat: da = dy[:, :Ca], db = dy[:, Ca:]; either may be NULL. */
int st_split_channels(st_backend *be, const st_tensor *dy, st_tensor *da,
                      st_tensor *db);
/* y = x[:, :, ::stride, ::stride]; y's extents must be ceil(H/stride) etc. */
int st_subsample(st_backend *be, const st_tensor *x, int stride, st_tensor *y);
/* dx = zeros with dx[:, :, ::stride, ::stride] = dy. */
int st_subsample_bwd(st_backend *be, const st_tensor *dy, int stride,
                     st_tensor *dx);
/* Bilinear resize to y's H,W, align_corners=False (PyTorch F.interpolate
 * with size=). */
int st_resize_bilinear_fwd(st_backend *be, const st_tensor *x, st_tensor *y);
/* Gradient of st_resize_bilinear_fwd: dx from dy (dx's H,W are the input's). */
int st_resize_bilinear_bwd(st_backend *be, const st_tensor *dy, st_tensor *dx);

/* loss = mean over N,H,W of -weight * log_softmax(logits, dim=1)[label].
 * logits [N,C,H,W] F32, label [N,H,W] U8 (< C), weight [N,H,W] F32.
 * The loss is written to host memory (the call waits for it). dlogits
 * [N,C,H,W] receives the gradient of the loss when not NULL (fused
 * backward). */
int st_weighted_ce(st_backend *be, const st_tensor *logits,
                   const st_tensor *label, const st_tensor *weight,
                   float *loss, st_tensor *dlogits);
/* Elements of a cross-entropy result: the loss, the number of pixels whose
 * label is not below C, and the largest such label (both 0 when none). */
#define ST_CE_RESULT_LEN 3
/* st_weighted_ce without waiting: the loss stays in `result`, an F32
 * [ST_CE_RESULT_LEN] tensor of the backend, until st_weighted_ce_result
 * reads it, so that a training step hands nothing to the host in its
 * middle. */
int st_weighted_ce_into(st_backend *be, const st_tensor *logits,
                        const st_tensor *label, const st_tensor *weight,
                        st_tensor *result, st_tensor *dlogits);
/* st_weighted_ce_into on the logits resized bilinearly to the label's H,W
 * (st_resize_bilinear_fwd), and when dlogits is not NULL the gradient of
 * the small logits in it (st_resize_bilinear_bwd of the frame-sized one),
 * without the frame-sized logits or gradient in memory: logits and dlogits
 * F32 [N,C,h,w], label U8 [N,H,W], weight F32 [N,H,W]. Its sums are the
 * same terms as the three ops', rounded in another order. */
int st_weighted_ce_resized_into(st_backend *be, const st_tensor *logits,
                                const st_tensor *label, const st_tensor *weight,
                                st_tensor *result, st_tensor *dlogits);
/* Waits for `result` and gives its loss, or ST_ERANGE naming the largest
 * out-of-range label among `num_classes`. */
int st_weighted_ce_result(st_backend *be, const st_tensor *result,
                          int num_classes, float *loss);
/* labels[n,h,w] = argmax over c of logits[n,c,h,w] (first maximum wins);
 * logits F32 [N,C,H,W] with C <= 256, labels U8 [N,H,W]. */
int st_argmax_channels(st_backend *be, const st_tensor *logits,
                       st_tensor *labels);
/* labels = st_argmax_channels of st_resize_bilinear_fwd(logits) at the
 * labels' H,W, bit for bit, without the resized logits in memory: a class
 * map straight from low-resolution logits. logits F32 [N,C,h,w] with
 * C <= 256, labels U8 [N,H,W]. */
int st_argmax_resized(st_backend *be, const st_tensor *logits,
                      st_tensor *labels);
/* counts[label * num_classes + pred] += 1 for every pixel; pred and label
 * U8 of equal shape; counts is host memory of num_classes^2 entries, which
 * the op zeroes first. Values >= num_classes are an ST_ERANGE error. */
int st_confusion_counts(st_backend *be, const st_tensor *pred,
                        const st_tensor *label, int num_classes,
                        int64_t *counts);
/* Elements of a confusion result beyond the num_classes^2 counts: the
 * number of pixels with a value >= num_classes and the largest such
 * value (both 0 when none). */
#define ST_CONFUSION_EXTRA 2
/* st_confusion_counts without waiting: the counts stay in `counts`, an
 * I64 tensor of the backend with num_classes^2 + ST_CONFUSION_EXTRA
 * elements, until st_confusion_counts_result reads them. */
int st_confusion_counts_into(st_backend *be, const st_tensor *pred,
                             const st_tensor *label, int num_classes,
                             st_tensor *counts);
/* Waits for a confusion result and copies its num_classes^2 counts to host
 * memory, or returns ST_ERANGE naming the largest out-of-range value. */
int st_confusion_counts_result(st_backend *be, const st_tensor *counts,
                               int num_classes, int64_t *host_counts);
/* Mean IoU over classes whose union is non-empty (1.0 when none is): the
 * reference's miou() from a confusion matrix. Host only. */
double st_miou_from_counts(const int64_t *counts, int num_classes);

/* Hyper-parameters are doubles, as PyTorch keeps them (Python floats):
 * (double)0.999f differs from 0.999 enough to move 1 - beta2^t. */
typedef struct st_adam_params {
  double lr;    /* learning rate */
  double beta1; /* first moment decay, 0.9 */
  double beta2; /* second moment decay, 0.999 */
  double eps;   /* added to the bias-corrected sqrt(v), 1e-8 */
} st_adam_params;
/* One Adam step in PyTorch's single-tensor formulation (no weight decay,
 * no amsgrad). step is the 1-based step count after this update. param,
 * grad, m, v are F32 of equal shape. */
int st_adam_step(st_backend *be, const st_adam_params *p, int64_t step,
                 st_tensor *param, const st_tensor *grad, st_tensor *m,
                 st_tensor *v);
/* st_adam_step on `count` tensors with the same hyper-parameters and step
 * (an optimiser's whole parameter set): the same arithmetic for every
 * element, in one launch where the backend can (CUDA), one st_adam_step
 * per tensor elsewhere. params[i], grads[i], ms[i], vs[i] as there. */
int st_adam_steps(st_backend *be, const st_adam_params *p, int64_t step,
                  int count, st_tensor *const *params,
                  const st_tensor *const *grads, st_tensor *const *ms,
                  st_tensor *const *vs);

/* Element conversions between F32 and F16 tensors of equal shape. */
int st_cast(st_backend *be, const st_tensor *src, st_tensor *dst);
/* Copies src into dst (same dtype and element count). */
int st_copy(st_backend *be, const st_tensor *src, st_tensor *dst);
/* Sets every element of an F32 tensor. */
int st_fill(st_backend *be, st_tensor *t, float value);

/* Frame to network input: image U8 [H,W,3] RGB -> y F32 [1,3,H,W] with
 * y[c] = (pixel[channel_order[c]] - mean[c]) / std[c]. channel_order is
 * {2,1,0} for BGR input, {0,1,2} for RGB. */
int st_image_to_tensor(st_backend *be, const st_tensor *image,
                       const int channel_order[3], const float mean[3],
                       const float std_[3], st_tensor *y);

/* ---- ops of imported (ONNX) graphs -----------------------------------------
 * Used by the teacher executor; F32 tensors of any rank up to ST_MAX_DIMS
 * unless an op says NCHW. Semantics are ONNX's (opsets 11-18), which for
 * these ops are PyTorch's. */

typedef enum st_unary_kind {
  ST_UNARY_RELU = 0,    /* max(x, 0) */
  ST_UNARY_CLIP,        /* min(max(x, alpha), beta) */
  ST_UNARY_HARDSIGMOID, /* max(0, min(1, alpha * x + beta)) */
  ST_UNARY_HARDSWISH,   /* x * max(0, min(1, x / 6 + 1 / 2)) */
  ST_UNARY_SIGMOID,     /* 1 / (1 + exp(-x)) */
} st_unary_kind;
/* y = f(x) elementwise; same shapes; in place allowed. */
int st_unary(st_backend *be, st_unary_kind kind, float alpha, float beta,
             const st_tensor *x, st_tensor *y);

typedef enum st_binary_kind {
  ST_BINARY_ADD = 0,
  ST_BINARY_SUB,
  ST_BINARY_MUL,
  ST_BINARY_DIV,
} st_binary_kind;
/* y = a (op) b with multidirectional (numpy) broadcasting: ranks aligned on
 * the right, each extent equal or 1; y has the broadcast shape. In place
 * allowed when y is a (or b) and has its shape. */
int st_binary(st_backend *be, st_binary_kind kind, const st_tensor *a,
              const st_tensor *b, st_tensor *y);

typedef enum st_pool_kind { ST_POOL_MAX = 0, ST_POOL_AVG } st_pool_kind;
typedef struct st_pool2d_params {
  st_pool_kind kind;
  int kernel[2];         /* [h, w] */
  int stride[2];         /* [h, w] */
  int pad_begin[2];      /* top, left */
  int pad_end[2];        /* bottom, right */
  int dilation[2];       /* max pool only; 1 = dense */
  int count_include_pad; /* avg pool: divide by the padded window size */
} st_pool2d_params;
/* 2-D pooling over NCHW. The caller sizes y (ceil_mode is expressed by a
 * larger OH/OW); windows are clipped to the padded input, padding never
 * wins a max, and an average divides by the count of the clipped window
 * (including padding cells when count_include_pad, excluding them
 * otherwise), as ONNX and PyTorch do. */
int st_pool2d(st_backend *be, const st_pool2d_params *p, const st_tensor *x,
              st_tensor *y);
/* y[n,c,0,0] = mean of x[n,c,:,:]; x NCHW, y [N,C,1,1]. */
int st_global_avg_pool(st_backend *be, const st_tensor *x, st_tensor *y);

typedef enum st_resize_mode { ST_RESIZE_NEAREST = 0, ST_RESIZE_LINEAR } st_resize_mode;
typedef enum st_resize_coord {
  ST_COORD_HALF_PIXEL = 0,     /* (o + 0.5) / scale - 0.5 */
  ST_COORD_PYTORCH_HALF_PIXEL, /* as half_pixel, but 0 when the output is 1 */
  ST_COORD_ALIGN_CORNERS,      /* o * (in - 1) / (out - 1), 0 when out is 1 */
  ST_COORD_ASYMMETRIC,         /* o / scale */
} st_resize_coord;
typedef enum st_nearest_mode {
  ST_NEAREST_ROUND_PREFER_FLOOR = 0,
  ST_NEAREST_ROUND_PREFER_CEIL,
  ST_NEAREST_FLOOR,
  ST_NEAREST_CEIL,
} st_nearest_mode;
typedef struct st_resize_params {
  st_resize_mode mode;
  st_resize_coord coord;
  st_nearest_mode nearest;
  double scale[2]; /* [h, w] output/input as the model states it (from its
                      scales input, or out/in when it gave sizes) */
} st_resize_params;
/* ONNX Resize over the last two axes of NCHW (linear: bilinear, source
 * clamped to the input as ONNX's reference does; nearest per
 * nearest_mode). y's H,W are the output size. */
int st_resize(st_backend *be, const st_resize_params *p, const st_tensor *x,
              st_tensor *y);

/* y = softmax(x) along `axis` (non-negative, < rank); same shapes. */
int st_softmax(st_backend *be, int axis, const st_tensor *x, st_tensor *y);
/* y = x with axes permuted: y.shape[i] = x.shape[perm[i]]. */
int st_transpose(st_backend *be, const int *perm, const st_tensor *x,
                 st_tensor *y);
/* y = concatenation of `count` tensors along `axis`; all other extents
 * equal. */
int st_concat(st_backend *be, int axis, const st_tensor *const *inputs,
              int count, st_tensor *y);
/* y = x[starts[d] : starts[d] + y.shape[d] * steps[d] : steps[d]] for every
 * axis d (starts already clamped and made non-negative by the caller,
 * steps non-zero, negative steps walk backwards). */
int st_slice(st_backend *be, const int64_t *starts, const int64_t *steps,
             const st_tensor *x, st_tensor *y);
/* Index of the maximum along `axis` (first wins) as I64; y has x's shape
 * with that axis' extent 1 (keepdims) -- callers drop it by reshaping. */
int st_argmax_axis(st_backend *be, int axis, const st_tensor *x,
                   st_tensor *y);

#endif
