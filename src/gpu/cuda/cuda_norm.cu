// Batch normalisation on the CUDA backend (training mode: the statistics of
// the current batch), matching the CPU backend's numerics in cpu_ops.c.
//
// Per-channel reductions run in two stages so that they are deterministic
// and need no atomics: a grid of (chunk, channel) blocks writes one double
// partial sum per block into the context's scratch buffer, then one thread
// per channel adds its chunks' partials in a fixed order. The forward pass
// takes the mean first and then the sum of squared deviations from it (two
// passes, as on the CPU, accurate also when the mean is large against the
// spread), folds invstd, gamma and beta into one scale and shift per
// channel, and normalises elementwise. The backward pass sums the (ReLU
// masked) gradient and its product with x - mean in one pass, then writes
// dgamma, dbeta and, when asked, dx elementwise.
//
// Every kernel runs on the context's stream, so each stage sees the
// previous one's results, and the forward pass may run in place (y == x):
// x is read in full by the statistics kernels before the normalising kernel
// starts. Scratch layout (forward): partial sums [C * chunks] (double),
// mean [C] (double), scale [C] and shift [C] (float); (backward): partial
// sums of g and of g * (x - mean) [C * chunks] each (double), then the
// per-channel coefficients mean_g, k and scale [C] each (float).
#include <stdint.h>

#include "gpu/cuda/cuda_impl.h"

// Elements each thread of a reduction block adds per image before the
// plane is split over another block (chunk): enough work per block to hide
// the block-level reduction, enough blocks to fill the device.
#define ST_CUDA_NORM_ITEMS_PER_THREAD 8
// Upper bound on the chunks one plane is split into; bounds the scratch
// partials to C * this many doubles.
#define ST_CUDA_NORM_MAX_CHUNKS 1024
// Largest grid extent along y (channels or planes; loops cover the rest).
#define ST_CUDA_NORM_MAX_GRID_Y 65535
// Threads in a warp, for the shuffle reduction.
#define ST_CUDA_NORM_WARP 32

// Blocks per plane in the reduction kernels.
static int64_t bn_chunks(int64_t hw) {
  const int64_t per_block = (int64_t)ST_CUDA_BLOCK * ST_CUDA_NORM_ITEMS_PER_THREAD;
  int64_t chunks = (hw + per_block - 1) / per_block;
  if (chunks < 1)
    chunks = 1;
  if (chunks > ST_CUDA_NORM_MAX_CHUNKS)
    chunks = ST_CUDA_NORM_MAX_CHUNKS;
  return chunks;
}

// Grid extent along y for n items (at least 1, at most the hardware limit).
static unsigned bn_grid_y(int64_t n) {
  if (n < 1)
    return 1;
  return (unsigned)(n > ST_CUDA_NORM_MAX_GRID_Y ? ST_CUDA_NORM_MAX_GRID_Y : n);
}

__device__ static double warp_sum(double v) {
  for (int offset = ST_CUDA_NORM_WARP / 2; offset > 0; offset /= 2)
    v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block, valid in thread 0. Every thread of the block
// must call it (it synchronises); blockDim.x is a multiple of the warp
// size. `shared` holds one slot per warp and may be reused by the next call.
__device__ static double block_sum(double v, double *shared) {
  const int lane = threadIdx.x % ST_CUDA_NORM_WARP;
  const int warp = threadIdx.x / ST_CUDA_NORM_WARP;
  const int warps = blockDim.x / ST_CUDA_NORM_WARP;
  v = warp_sum(v);
  // The previous call's readers must be done with `shared`.
  __syncthreads();
  if (lane == 0)
    shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : 0.0;
    v = warp_sum(v);
  }
  return v;
}

// Which per-channel sum bn_stats_partial takes.
enum bn_stat { BN_STAT_SUM, BN_STAT_SQ_DEV };

// partial[ch * gridDim.x + blockIdx.x] = this block's share of the sum over
// the channel's N planes of x (BN_STAT_SUM) or of (x - mu[ch])^2
// (BN_STAT_SQ_DEV). Blocks split each plane's hw elements with a
// grid-stride loop along x; channels go along y.
template <bn_stat Stat>
__global__ static void bn_stats_partial(const float *x, int64_t n, int64_t c,
                                        int64_t hw, const double *mu,
                                        double *partial) {
  __shared__ double shared[ST_CUDA_BLOCK / ST_CUDA_NORM_WARP];
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t ch = blockIdx.y; ch < c; ch += gridDim.y) {
    const double m = Stat == BN_STAT_SQ_DEV ? mu[ch] : 0.0;
    double s = 0.0;
    for (int64_t b = 0; b < n; b++) {
      const float *plane = x + (b * c + ch) * hw;
      for (int64_t i = first; i < hw; i += step) {
        if (Stat == BN_STAT_SUM) {
          s += (double)plane[i];
        } else {
          const double d = (double)plane[i] - m;
          s += d * d;
        }
      }
    }
    s = block_sum(s, shared);
    if (threadIdx.x == 0)
      partial[ch * gridDim.x + blockIdx.x] = s;
  }
}

// mean_d[ch] = sum / count in double (the CPU's mu), mean_f its float.
__global__ static void bn_mean_finalize(const double *partial, int64_t chunks,
                                        int64_t c, int64_t count,
                                        double *mean_d, float *mean_f) {
  for (int64_t ch = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; ch < c;
       ch += (int64_t)gridDim.x * blockDim.x) {
    double sum = 0.0;
    for (int64_t k = 0; k < chunks; k++)
      sum += partial[ch * chunks + k];
    const double mu = count ? __ddiv_rn(sum, (double)count) : 0.0;
    mean_d[ch] = mu;
    mean_f[ch] = (float)mu;
  }
}

// invstd, and the affine folded into y = fma(x, scale, shift), rounded
// where PyTorch (and the CPU backend) round: the variance is a float
// quotient, invstd is taken in double, scale = invstd * gamma in float and
// shift = beta - mean * scale in double rounded to float.
__global__ static void bn_var_finalize(const double *partial, int64_t chunks,
                                       int64_t c, int64_t count, double eps,
                                       const float *gamma, const float *beta,
                                       const float *mean_f, float *invstd,
                                       float *scale, float *shift) {
  for (int64_t ch = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; ch < c;
       ch += (int64_t)gridDim.x * blockDim.x) {
    double sq = 0.0;
    for (int64_t k = 0; k < chunks; k++)
      sq += partial[ch * chunks + k];
    const float var_f = count ? __fdiv_rn((float)sq, (float)count) : 0.0f;
    const float inv =
        (float)__ddiv_rn(1.0, __dsqrt_rn(__dadd_rn((double)var_f, eps)));
    const float a = __fmul_rn(inv, gamma[ch]);
    invstd[ch] = inv;
    scale[ch] = a;
    shift[ch] = (float)__dsub_rn((double)beta[ch],
                                 __dmul_rn((double)mean_f[ch], (double)a));
  }
}

// y = act(fma(x, scale[ch], shift[ch])) over planes (b, ch) along y and
// their elements along x. y may be x.
__global__ static void bn_normalise(const float *x, float *y, int64_t planes,
                                    int64_t c, int64_t hw, const float *scale,
                                    const float *shift, int relu) {
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t p = blockIdx.y; p < planes; p += gridDim.y) {
    const int64_t ch = p % c;
    const float a = scale[ch], s = shift[ch];
    const float *src = x + p * hw;
    float *dst = y + p * hw;
    for (int64_t i = first; i < hw; i += step) {
      const float v = fmaf(src[i], a, s);
      dst[i] = relu ? (v > 0.0f ? v : 0.0f) : v;
    }
  }
}

extern "C" int st__cuda_batchnorm_fwd(st_backend *be, const st_tensor *x,
                                      const st_tensor *gamma,
                                      const st_tensor *beta_, double eps,
                                      st_activation act, st_tensor *y,
                                      st_tensor *mean, st_tensor *invstd) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = x->shape[0], c = x->shape[1];
  const int64_t hw = x->shape[2] * x->shape[3], count = n * hw;
  if (c == 0)
    return ST_OK;
  const int64_t chunks = bn_chunks(hw);
  const size_t partial_bytes = (size_t)(c * chunks) * sizeof(double);
  const size_t mean_bytes = (size_t)c * sizeof(double);
  const size_t coef_bytes = (size_t)c * sizeof(float);
  void *scratch = NULL;
  int rc = st__cuda_scratch(cu, partial_bytes + mean_bytes + 2 * coef_bytes,
                            &scratch);
  if (rc)
    return rc;
  double *partial = (double *)scratch;
  double *mean_d = partial + c * chunks;
  float *scale = (float *)(mean_d + c);
  float *shift = scale + c;

  const float *xd = (const float *)x->data;
  float *mean_f = (float *)mean->data, *invstd_f = (float *)invstd->data;
  const dim3 stats_grid((unsigned)chunks, bn_grid_y(c));
  const unsigned chan_grid = st__cuda_grid(c);

  bn_stats_partial<BN_STAT_SUM><<<stats_grid, ST_CUDA_BLOCK, 0, cu->stream>>>(
      xd, n, c, hw, NULL, partial);
  ST_CUDA_LAUNCHED();
  bn_mean_finalize<<<chan_grid, ST_CUDA_BLOCK, 0, cu->stream>>>(
      partial, chunks, c, count, mean_d, mean_f);
  ST_CUDA_LAUNCHED();
  bn_stats_partial<BN_STAT_SQ_DEV>
      <<<stats_grid, ST_CUDA_BLOCK, 0, cu->stream>>>(xd, n, c, hw, mean_d,
                                                     partial);
  ST_CUDA_LAUNCHED();
  bn_var_finalize<<<chan_grid, ST_CUDA_BLOCK, 0, cu->stream>>>(
      partial, chunks, c, count, eps, (const float *)gamma->data,
      (const float *)beta_->data, mean_f, invstd_f, scale, shift);
  ST_CUDA_LAUNCHED();
  const dim3 plane_grid(st__cuda_grid(hw), bn_grid_y(n * c));
  bn_normalise<<<plane_grid, ST_CUDA_BLOCK, 0, cu->stream>>>(
      xd, (float *)y->data, n * c, c, hw, scale, shift, act == ST_ACT_RELU);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// The upstream gradient behind the fused ReLU: dy where y > 0, else 0.
__device__ static inline float bn_masked(float y, float dy, int relu) {
  return relu ? (y > 0.0f ? dy : 0.0f) : dy;
}

// Per block: the shares of sum(g) and sum(g * (x - mean)) of a channel,
// g the masked upstream gradient; laid out as in bn_stats_partial.
__global__ static void bn_grad_partial(const float *x, const float *y,
                                       const float *dy, const float *mean_f,
                                       int64_t n, int64_t c, int64_t hw,
                                       int relu, double *partial_g,
                                       double *partial_gx) {
  __shared__ double shared[ST_CUDA_BLOCK / ST_CUDA_NORM_WARP];
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t ch = blockIdx.y; ch < c; ch += gridDim.y) {
    const double mu = (double)mean_f[ch];
    double sg = 0.0, sgx = 0.0;
    for (int64_t b = 0; b < n; b++) {
      const int64_t off = (b * c + ch) * hw;
      for (int64_t i = first; i < hw; i += step) {
        const float g = bn_masked(y[off + i], dy[off + i], relu);
        sg += (double)g;
        sgx += (double)g * ((double)x[off + i] - mu);
      }
    }
    sg = block_sum(sg, shared);
    sgx = block_sum(sgx, shared);
    if (threadIdx.x == 0) {
      partial_g[ch * gridDim.x + blockIdx.x] = sg;
      partial_gx[ch * gridDim.x + blockIdx.x] = sgx;
    }
  }
}

// dgamma, dbeta (either may be NULL) and the coefficients of dx, as the
// CPU backend rounds them: mean_g = sum_g / count, k = sum_gx * invstd^2 /
// count (both in double, then float), scale = invstd * gamma (float).
__global__ static void bn_grad_finalize(const double *partial_g,
                                        const double *partial_gx,
                                        int64_t chunks, int64_t c,
                                        int64_t count, const float *gamma,
                                        const float *invstd, float *dgamma,
                                        float *dbeta, float *mean_g, float *k,
                                        float *scale) {
  for (int64_t ch = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; ch < c;
       ch += (int64_t)gridDim.x * blockDim.x) {
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t j = 0; j < chunks; j++) {
      sum_g += partial_g[ch * chunks + j];
      sum_gx += partial_gx[ch * chunks + j];
    }
    const float inv = invstd[ch];
    const double sum_gx_inv = __dmul_rn(sum_gx, (double)inv);
    if (dgamma)
      dgamma[ch] = (float)sum_gx_inv;
    if (dbeta)
      dbeta[ch] = (float)sum_g;
    const double cnt = (double)count;
    mean_g[ch] = count ? (float)__ddiv_rn(sum_g, cnt) : 0.0f;
    k[ch] = count ? (float)__ddiv_rn(__dmul_rn(sum_gx_inv, (double)inv), cnt)
                  : 0.0f;
    scale[ch] = __fmul_rn(inv, gamma[ch]);
  }
}

// dx = (g - mean_g - (x - mean) * k) * scale, per plane along y. The
// explicit roundings keep the CPU backend's order (no contraction into
// fused multiply-adds). dx may be dy.
__global__ static void bn_grad_input(const float *x, const float *y,
                                     const float *dy, float *dx,
                                     int64_t planes, int64_t c, int64_t hw,
                                     const float *mean_f, const float *mean_g,
                                     const float *k, const float *scale,
                                     int relu) {
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t p = blockIdx.y; p < planes; p += gridDim.y) {
    const int64_t ch = p % c;
    const float mu = mean_f[ch], mg = mean_g[ch], kk = k[ch], sc = scale[ch];
    const int64_t off = p * hw;
    for (int64_t i = first; i < hw; i += step) {
      const float g = bn_masked(y[off + i], dy[off + i], relu);
      const float centred = __fsub_rn(g, mg);
      const float proj = __fmul_rn(__fsub_rn(x[off + i], mu), kk);
      dx[off + i] = __fmul_rn(__fsub_rn(centred, proj), sc);
    }
  }
}

extern "C" int st__cuda_batchnorm_bwd(st_backend *be, const st_tensor *x,
                                      const st_tensor *y, const st_tensor *dy,
                                      const st_tensor *gamma,
                                      const st_tensor *mean,
                                      const st_tensor *invstd,
                                      st_activation act, st_tensor *dx,
                                      st_tensor *dgamma, st_tensor *dbeta) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = x->shape[0], c = x->shape[1];
  const int64_t hw = x->shape[2] * x->shape[3], count = n * hw;
  if (c == 0 || (!dx && !dgamma && !dbeta))
    return ST_OK;
  const int relu = act == ST_ACT_RELU;
  const int64_t chunks = bn_chunks(hw);
  const size_t partial_bytes = (size_t)(c * chunks) * sizeof(double);
  const size_t coef_bytes = (size_t)c * sizeof(float);
  void *scratch = NULL;
  int rc = st__cuda_scratch(cu, 2 * partial_bytes + 3 * coef_bytes, &scratch);
  if (rc)
    return rc;
  double *partial_g = (double *)scratch;
  double *partial_gx = partial_g + c * chunks;
  float *mean_g = (float *)(partial_gx + c * chunks);
  float *k = mean_g + c;
  float *scale = k + c;

  const float *xd = (const float *)x->data, *yd = (const float *)y->data;
  const float *dyd = (const float *)dy->data;
  const float *mean_f = (const float *)mean->data;
  const dim3 stats_grid((unsigned)chunks, bn_grid_y(c));
  bn_grad_partial<<<stats_grid, ST_CUDA_BLOCK, 0, cu->stream>>>(
      xd, yd, dyd, mean_f, n, c, hw, relu, partial_g, partial_gx);
  ST_CUDA_LAUNCHED();
  bn_grad_finalize<<<st__cuda_grid(c), ST_CUDA_BLOCK, 0, cu->stream>>>(
      partial_g, partial_gx, chunks, c, count, (const float *)gamma->data,
      (const float *)invstd->data, dgamma ? (float *)dgamma->data : NULL,
      dbeta ? (float *)dbeta->data : NULL, mean_g, k, scale);
  ST_CUDA_LAUNCHED();
  if (!dx || count == 0)
    return ST_OK;
  const dim3 plane_grid(st__cuda_grid(hw), bn_grid_y(n * c));
  bn_grad_input<<<plane_grid, ST_CUDA_BLOCK, 0, cu->stream>>>(
      xd, yd, dyd, (float *)dx->data, n * c, c, hw, mean_f, mean_g, k, scale,
      relu);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}
