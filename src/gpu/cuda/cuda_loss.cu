// Loss and metrics of the CUDA backend: the weighted cross-entropy with its
// fused gradient, the per-pixel argmax over channels and the confusion
// counts behind mIoU.
//
// The loss is a deterministic two-level reduction in double: each block
// sums its pixels' losses in a fixed tree into one partial, then a single
// block sums the partials in a fixed order. The grid depends only on the
// pixel count, so the same input gives the same bits on every call. The
// per-pixel math follows cpu_ops.c (max-shifted exponentials summed in
// float, logp = x - max - log(sum)) with CUDA's expf/logf in place of the
// CPU's vectorised exponential (both within an ulp or two of exact).
//
// Nothing here waits for the device: the loss and the counts go to the
// caller's result tensors (backend.h: st_weighted_ce_into,
// st_confusion_counts_into), out-of-range labels or classes are counted
// there too, and backend.c turns them into the value or the error (naming
// the largest offending value and the number of pixels, as on the CPU)
// when the host reads the result. Temporary device memory is the context's
// scratch buffer: a warmed-up context allocates nothing here.
#include <stdint.h>
#include <string.h>

#include "gpu/cuda/cuda_impl.h"

// Blocks of the reducing kernels: enough to fill the largest GPUs we run on
// (132 SMs x 8 resident blocks of 256 threads) while keeping the partial
// sums and the histogram merges few; grid-stride loops cover the rest.
#define ST_CUDA_REDUCE_MAX_BLOCKS 1024
// Up to this many classes the confusion counts accumulate in a per-block
// shared-memory histogram (32 x 32 x 8 bytes = 8 KiB); beyond it every
// pixel adds to the global counts directly.
#define ST_CUDA_CONFUSION_SHARED_CLASSES 32

#define ST_GRID_START ((int64_t)blockIdx.x * blockDim.x + threadIdx.x)
#define ST_GRID_STEP ((int64_t)gridDim.x * blockDim.x)

static unsigned reduce_grid(int64_t n) {
  const unsigned g = st__cuda_grid(n);
  return g < ST_CUDA_REDUCE_MAX_BLOCKS ? g : ST_CUDA_REDUCE_MAX_BLOCKS;
}

// Sum of one double per thread over a block of ST_CUDA_BLOCK threads, in a
// fixed tree order; the result is valid in thread 0. Every thread of the
// block must call it.
__device__ static double block_sum(double v) {
  __shared__ double part[ST_CUDA_BLOCK];
  part[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = ST_CUDA_BLOCK / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s)
      part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  return part[0];
}

// ---- weighted cross-entropy ---------------------------------------------

// The cross-entropy's running totals, at the start of scratch; the
// per-block partial sums follow it.
typedef struct ce_result {
  double total;                  // sum over pixels of -w * logp
  unsigned long long bad_pixels; // pixels whose label is >= C
  int bad_label;                 // the largest such label (0 when none)
  int unused;                    // keeps the struct a multiple of 8 bytes
} ce_result;

// One thread per pixel (grid-stride): the channel maximum, the sum of the
// shifted exponentials, the pixel's loss, and when d is not NULL its
// gradient w * (softmax - onehot) / count over every channel. Channel k of
// the pixel is k * hw floats after channel 0, so neighbouring threads read
// neighbouring addresses.
static __global__ void weighted_ce_kernel(const float *logits,
                                          const uint8_t *label,
                                          const float *weight, float *d, int c,
                                          int64_t hw, int64_t count,
                                          float inv_count, double *partials,
                                          ce_result *res) {
  double acc = 0.0;
  for (int64_t i = ST_GRID_START; i < count; i += ST_GRID_STEP) {
    const int64_t img = i / hw, t = i - img * hw;
    const float *x = logits + img * (int64_t)c * hw + t;
    // Strictly greater, as the CPU: a NaN in channel 0 stays the maximum, a
    // later NaN is skipped here but still poisons the sum below.
    float mx = x[0];
    for (int k = 1; k < c; k++) {
      const float xk = x[(int64_t)k * hw];
      mx = xk > mx ? xk : mx;
    }
    float sum = 0.0f;
    for (int k = 0; k < c; k++)
      sum = __fadd_rn(sum, expf(__fsub_rn(x[(int64_t)k * hw], mx)));
    const int l = label[i];
    const float w = weight[i];
    if (l >= c) {
      atomicAdd(&res->bad_pixels, 1ull);
      atomicMax(&res->bad_label, l);
    } else {
      const float logp =
          __fsub_rn(__fsub_rn(x[(int64_t)l * hw], mx), logf(sum));
      acc -= (double)w * (double)logp;
    }
    if (!d)
      continue;
    // The CPU's roundings: scale = (w / count) / sum, then e * scale, then
    // minus w / count on the label channel.
    const float w_count = __fmul_rn(w, inv_count);
    const float scale = __fdiv_rn(w_count, sum);
    float *dp = d + img * (int64_t)c * hw + t;
    for (int k = 0; k < c; k++) {
      const float e = expf(__fsub_rn(x[(int64_t)k * hw], mx));
      float g = __fmul_rn(e, scale);
      if (k == l)
        g = __fsub_rn(g, w_count);
      dp[(int64_t)k * hw] = g;
    }
  }
  const double block_total = block_sum(acc);
  if (threadIdx.x == 0)
    partials[blockIdx.x] = block_total;
}

// One block: the partial sums added in a fixed order, and the caller's
// result written: [loss, bad pixels, largest bad label] (backend.h).
static __global__ void sum_partials_kernel(const double *partials, int count,
                                           const ce_result *res,
                                           double pixels, float *result) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x)
    acc += partials[i];
  const double total = block_sum(acc);
  if (threadIdx.x == 0) {
    result[0] = (float)(total / pixels);
    result[1] = (float)res->bad_pixels;
    result[2] = (float)res->bad_label;
  }
}

extern "C" int st__cuda_weighted_ce(st_backend *be, const st_tensor *logits,
                                    const st_tensor *label,
                                    const st_tensor *weight,
                                    st_tensor *result, st_tensor *dlogits) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = logits->shape[0], c = logits->shape[1];
  const int64_t hw = logits->shape[2] * logits->shape[3], count = n * hw;
  if (count == 0) { // the mean over no pixels: nothing to learn
    ST_CUDA_TRY(cudaMemsetAsync(result->data, 0, st_tensor_nbytes(result),
                                cu->stream));
    return ST_OK;
  }
  const float inv_count = (float)(1.0 / (double)count);
  const unsigned blocks = reduce_grid(count);
  void *scratch = NULL;
  int rc = st__cuda_scratch(cu, sizeof(ce_result) + blocks * sizeof(double),
                            &scratch);
  if (rc)
    return rc;
  ce_result *res = (ce_result *)scratch;
  double *partials = (double *)(res + 1);
  ST_CUDA_TRY(cudaMemsetAsync(res, 0, sizeof *res, cu->stream));
  weighted_ce_kernel<<<blocks, ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)logits->data, (const uint8_t *)label->data,
      (const float *)weight->data, dlogits ? (float *)dlogits->data : NULL,
      (int)c, hw, count, inv_count, partials, res);
  ST_CUDA_LAUNCHED();
  sum_partials_kernel<<<1, ST_CUDA_BLOCK, 0, cu->stream>>>(
      partials, (int)blocks, res, (double)count, (float *)result->data);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// ---- cross-entropy of resized logits -------------------------------------

// For now the resize, the loss and the resize backward in turn, on
// frame-sized logits and gradient the context keeps (grown from the pool
// on first use, so the steady state allocates nothing; a recording that
// would grow them is refused like any allocation): the CPU backend's
// memory saving is not had here yet, only its interface.
extern "C" int
st__cuda_weighted_ce_resized(st_backend *be, const st_tensor *logits,
                             const st_tensor *label, const st_tensor *weight,
                             st_tensor *result, st_tensor *dlogits) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = logits->shape[0], c = logits->shape[1];
  const int64_t oh = label->shape[1], ow = label->shape[2];
  const size_t frame_bytes =
      (size_t)n * (size_t)c * (size_t)oh * (size_t)ow * sizeof(float);
  ST_TRY(st__cuda_reserve(cu, &cu->loss_buffer, &cu->loss_buffer_bytes,
                          frame_bytes * (dlogits ? 2 : 1)));
  st_tensor up = st_tensor_view4(cu->loss_buffer, ST_F32, n, c, oh, ow);
  st_tensor dup = st_tensor_view4((char *)cu->loss_buffer + frame_bytes, ST_F32,
                                  n, c, oh, ow);
  int rc = st__cuda_resize_bilinear_fwd(be, logits, &up);
  if (!rc)
    rc = st__cuda_weighted_ce(be, &up, label, weight, result,
                              dlogits ? &dup : NULL);
  if (!rc && dlogits)
    rc = st__cuda_resize_bilinear_bwd(be, &dup, dlogits);
  return rc;
}

// ---- argmax over channels -----------------------------------------------

// One thread per pixel; strictly greater so the first maximum wins, and a
// NaN beats every number with the first NaN winning, as in torch.argmax.
static __global__ void argmax_kernel(const float *logits, uint8_t *labels,
                                     int c, int64_t hw, int64_t count) {
  for (int64_t i = ST_GRID_START; i < count; i += ST_GRID_STEP) {
    const int64_t img = i / hw, t = i - img * hw;
    const float *x = logits + img * (int64_t)c * hw + t;
    float best = x[0];
    int idx = 0;
    for (int k = 1; k < c; k++) {
      const float v = x[(int64_t)k * hw];
      if (st__cuda_argmax_takes(v, best)) {
        best = v;
        idx = k;
      }
    }
    labels[i] = (uint8_t)idx;
  }
}

extern "C" int st__cuda_argmax_channels(st_backend *be, const st_tensor *logits,
                                        st_tensor *labels) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = logits->shape[0], c = logits->shape[1];
  const int64_t hw = logits->shape[2] * logits->shape[3], count = n * hw;
  if (count == 0)
    return ST_OK;
  argmax_kernel<<<st__cuda_grid(count), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)logits->data, (uint8_t *)labels->data, (int)c, hw, count);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// ---- confusion counts ---------------------------------------------------

// Out-of-range report of the confusion counts: the two words after the
// k * k counts of the caller's tensor (ST_CONFUSION_EXTRA).
typedef struct confusion_flags {
  unsigned long long bad_pixels; // pixels with a value >= num_classes
  unsigned long long bad_value;  // the largest such value (0 when none)
} confusion_flags;

// Records a thread's out-of-range pixels, if any, with two atomics.
__device__ static void report_bad(confusion_flags *flags,
                                  unsigned long long bad, int worst) {
  if (bad) {
    atomicAdd(&flags->bad_pixels, bad);
    atomicMax(&flags->bad_value, (unsigned long long)worst);
  }
}

// k <= ST_CUDA_CONFUSION_SHARED_CLASSES: each block counts into a shared
// histogram, then adds its non-zero bins to the global counts.
static __global__ void confusion_shared_kernel(const uint8_t *pred,
                                               const uint8_t *label, int64_t n,
                                               int k,
                                               unsigned long long *counts,
                                               confusion_flags *flags) {
  __shared__ unsigned long long
      hist[ST_CUDA_CONFUSION_SHARED_CLASSES * ST_CUDA_CONFUSION_SHARED_CLASSES];
  const int bins = k * k;
  for (int j = threadIdx.x; j < bins; j += blockDim.x)
    hist[j] = 0;
  __syncthreads();
  unsigned long long bad = 0;
  int worst = 0;
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP) {
    const int l = label[i], p = pred[i];
    if (l >= k || p >= k) {
      bad++;
      worst = max(worst, max(l, p));
      continue;
    }
    atomicAdd(&hist[l * k + p], 1ull);
  }
  __syncthreads();
  for (int j = threadIdx.x; j < bins; j += blockDim.x)
    if (hist[j])
      atomicAdd(&counts[j], hist[j]);
  report_bad(flags, bad, worst);
}

// Any k: every pixel adds to the global counts.
static __global__ void confusion_global_kernel(const uint8_t *pred,
                                               const uint8_t *label, int64_t n,
                                               int k,
                                               unsigned long long *counts,
                                               confusion_flags *flags) {
  unsigned long long bad = 0;
  int worst = 0;
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP) {
    const int l = label[i], p = pred[i];
    if (l >= k || p >= k) {
      bad++;
      worst = max(worst, max(l, p));
      continue;
    }
    atomicAdd(&counts[l * k + p], 1ull);
  }
  report_bad(flags, bad, worst);
}

extern "C" int st__cuda_confusion_counts(st_backend *be, const st_tensor *pred,
                                         const st_tensor *label,
                                         int num_classes, st_tensor *counts) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = st_tensor_numel(pred);
  const int k = num_classes;
  // The counts are non-negative, so the unsigned device words are the
  // int64 values bit for bit; the flags follow them.
  unsigned long long *dev_counts = (unsigned long long *)counts->data;
  confusion_flags *flags = (confusion_flags *)(dev_counts + (size_t)k * k);
  ST_CUDA_TRY(cudaMemsetAsync(counts->data, 0, st_tensor_nbytes(counts),
                              cu->stream));
  if (n == 0)
    return ST_OK;
  const unsigned blocks = reduce_grid(n);
  if (k <= ST_CUDA_CONFUSION_SHARED_CLASSES)
    confusion_shared_kernel<<<blocks, ST_CUDA_BLOCK, 0, cu->stream>>>(
        (const uint8_t *)pred->data, (const uint8_t *)label->data, n, k,
        dev_counts, flags);
  else
    confusion_global_kernel<<<blocks, ST_CUDA_BLOCK, 0, cu->stream>>>(
        (const uint8_t *)pred->data, (const uint8_t *)label->data, n, k,
        dev_counts, flags);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}
