/* The CPU backend's hot loops (cpu_kernels.h), compiled once per
 * instruction set: CMake builds this file with -DST_CPU_ISA=<isa> and that
 * ISA's flags, and each copy exports its table as st__cpu_kernels_<isa>.
 * Nothing here may depend on the ISA but the width of the vectors the
 * compiler picks. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gpu/cpu/cpu_kernels.h"

#ifndef ST_CPU_ISA
#define ST_CPU_ISA baseline
#endif
#define ST_CPU_KERNELS_NAME(isa) ST_CPU_KERNELS_NAME_(isa)
#define ST_CPU_KERNELS_NAME_(isa) st__cpu_kernels_##isa
#define ST_CPU_ISA_STRING(isa) ST_CPU_ISA_STRING_(isa)
#define ST_CPU_ISA_STRING_(isa) #isa

/* ---- bilinear resize -------------------------------------------------------
 */

/* fma(a, wa, b * wb): how PyTorch's FMA build evaluates t0 * w0 + t1 * w1.
 * a * wa is exact in double, so rounding the double sum to float gives the
 * fused result (barring rare double-rounding ties). */
static inline float lerp2(float a, float wa, float b, float wb) {
  return (float)((double)a * (double)wa + (double)(b * wb));
}

/* One source row interpolated along W to the output width. */
static void resize_row_w(const float *restrict src,
                         const st_cpu_cols *restrict cols,
                         float *restrict out) {
  const st_cpu_tap *restrict tw = cols->tap;
  const int64_t ow = cols->ow;
  if (!cols->doubled) {
    for (int64_t j = 0; j < ow; j++)
      out[j] = lerp2(src[tw[j].i0], tw[j].l0, src[tw[j].i1], tw[j].l1);
    return;
  }
  /* Columns 2i+1 and 2i+2 both read source columns i and i+1. */
  const float o0 = tw[1].l0, o1 = tw[1].l1, e0 = tw[2].l0, e1 = tw[2].l1;
  out[0] = lerp2(src[tw[0].i0], tw[0].l0, src[tw[0].i1], tw[0].l1);
  for (int64_t i = 0; i < cols->iw - 1; i++) {
    out[2 * i + 1] = lerp2(src[i], o0, src[i + 1], o1);
    out[2 * i + 2] = lerp2(src[i], e0, src[i + 1], e1);
  }
  out[ow - 1] = lerp2(src[tw[ow - 1].i0], tw[ow - 1].l0, src[tw[ow - 1].i1],
                      tw[ow - 1].l1);
}

/* The W-interpolated source row `want`, computed into the buffer that does
 * not hold `keep` (the other row the caller needs) when not cached. */
static const float *resize_cached_row(st_cpu_row_cache *cache,
                                      const float *plane,
                                      const st_cpu_cols *cols, int64_t want,
                                      int64_t keep) {
  for (int k = 0; k < 2; k++)
    if (cache->tag[k] == want)
      return cache->row[k];
  int slot = cache->tag[0] == keep ? 1 : 0;
  resize_row_w(plane + want * cols->iw, cols, cache->row[slot]);
  cache->tag[slot] = want;
  return cache->row[slot];
}

/* Output row t of a plane's resize into out: its two source rows along W
 * (through the cache), then along H. */
static void resize_row(st_cpu_row_cache *cache, const float *plane,
                       const st_cpu_cols *cols, st_cpu_tap t,
                       float *restrict out) {
  const float *restrict a = resize_cached_row(cache, plane, cols, t.i0, t.i1);
  const float *restrict b = resize_cached_row(cache, plane, cols, t.i1, t.i0);
  for (int64_t j = 0; j < cols->ow; j++)
    out[j] = lerp2(a[j], t.l0, b[j], t.l1);
}

/* acc (ow floats) scattered along W into dst (iw floats): for each output
 * column in order, its two weighted values added to its source columns.
 * A doubling's interior columns are gathered per source column instead,
 * adding the same products in the same order (for source column i: columns
 * 2i-1 and 2i, where it is the second source, then 2i+1 and 2i+2, where it
 * is the first), after the first column's and before the last's. */
static void resize_scatter_w(const float *restrict acc,
                             const st_cpu_cols *restrict cols,
                             float *restrict dst) {
  const st_cpu_tap *restrict tw = cols->tap;
  const int64_t iw = cols->iw, ow = cols->ow;
  memset(dst, 0, (size_t)iw * sizeof(float));
  if (!cols->doubled) {
    for (int64_t j = 0; j < ow; j++) {
      dst[tw[j].i0] += tw[j].l0 * acc[j];
      dst[tw[j].i1] += tw[j].l1 * acc[j];
    }
    return;
  }
  const float o0 = tw[1].l0, o1 = tw[1].l1, e0 = tw[2].l0, e1 = tw[2].l1;
  dst[tw[0].i0] += tw[0].l0 * acc[0];
  dst[tw[0].i1] += tw[0].l1 * acc[0];
  dst[0] += o0 * acc[1];
  dst[0] += e0 * acc[2];
  for (int64_t i = 1; i < iw - 1; i++) {
    float d = dst[i];
    d += o1 * acc[2 * i - 1];
    d += e1 * acc[2 * i];
    d += o0 * acc[2 * i + 1];
    d += e0 * acc[2 * i + 2];
    dst[i] = d;
  }
  dst[iw - 1] += o1 * acc[ow - 3];
  dst[iw - 1] += e1 * acc[ow - 2];
  dst[tw[ow - 1].i0] += tw[ow - 1].l0 * acc[ow - 1];
  dst[tw[ow - 1].i1] += tw[ow - 1].l1 * acc[ow - 1];
}

/* Input row r of a resize's gradient into dst (iw floats): the gradient
 * rows of the output rows that read it (output row o at rows + (o - first)
 * * ow) summed along H with their weights into acc (vectorised), then
 * scattered along W. */
static void resize_row_bwd(const float *rows, int64_t first, int64_t r,
                           const int64_t *range, const st_cpu_tap *th,
                           const st_cpu_cols *cols, float *restrict acc,
                           float *restrict dst) {
  const int64_t ow = cols->ow;
  memset(acc, 0, (size_t)ow * sizeof(float));
  for (int64_t o = range[2 * r]; o < range[2 * r + 1]; o++) {
    const float w =
        (th[o].i0 == r ? th[o].l0 : 0.0f) + (th[o].i1 == r ? th[o].l1 : 0.0f);
    if (w == 0.0f)
      continue;
    const float *restrict src = rows + (o - first) * ow;
    for (int64_t j = 0; j < ow; j++)
      acc[j] += w * src[j];
  }
  resize_scatter_w(acc, cols, dst);
}

/* ---- cross-entropy -------------------------------------------------------
 */

/* exp(x) for x <= 0 (a logit minus its channel maximum), written so the
 * compiler vectorises it, which glibc's expf is not: Cody-Waite reduction
 * x = n ln2 + r with |r| <= ln2/2, Cephes' degree-6 polynomial for e^r, and
 * 2^n built in the exponent bits. Checked against exp() in double on every
 * float in (ST_EXP_MIN_ARG, 0]: under 1 ulp. Below ST_EXP_MIN_ARG (where
 * e^x is subnormal) it returns 0; NaN comes back as NaN, so a diverged
 * network still shows a NaN loss. */
#define ST_EXP_MIN_ARG -87.33654475f /* ln(FLT_MIN) */
#define ST_LOG2E 1.44269504088896341f
#define ST_LN2_HI 0.693359375f /* ln 2 split so n * hi is exact */
#define ST_LN2_LO -2.12194440e-4f
#define ST_ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: float round-to-nearest */
#define ST_FLT_EXP_BIAS 127
#define ST_FLT_MANT_BITS 23

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline float exp_nonpos(float x) {
  /* Selects are bit masks: GCC will not if-convert a float select whose
   * arm multiplies (it could trap), and would leave the loop scalar. */
  const uint32_t in_range = -(uint32_t)(x >= ST_EXP_MIN_ARG); /* not NaN */
  const uint32_t is_nan = -(uint32_t)(x != x);
  /* Clamped (NaN too) so that the integer conversion below is defined. */
  const float xc = f32_from_bits((f32_bits(x) & in_range) |
                                 (f32_bits(ST_EXP_MIN_ARG) & ~in_range));
  const float n = (xc * ST_LOG2E + ST_ROUND_MAGIC) - ST_ROUND_MAGIC;
  const float r = (xc - n * ST_LN2_HI) - n * ST_LN2_LO;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * (r * r) + r + 1.0f;
  /* n is an integer in [-126, 0], so 2^n is a normal float. */
  const float scale = f32_from_bits((uint32_t)((int32_t)n + ST_FLT_EXP_BIAS)
                                    << ST_FLT_MANT_BITS);
  return f32_from_bits((f32_bits(e * scale) & in_range) |
                       (f32_bits(x) & is_nan));
}

/* The loss of `len` pixels whose C class scores lie `xs` floats apart (class
 * k of pixel t at x[k * xs + t]), added to *sums, and when d is not NULL
 * the gradient w * (softmax - [k == label]) * inv_count into d (class k at
 * d[k * ds + t]). log_softmax as PyTorch computes it: shift by the class
 * maximum so exp never overflows, then logp = x - max - log(sum exp). */
static void ce_tile(const float *x, int64_t xs, int64_t len, int64_t c,
                    const uint8_t *lab, const float *w, float inv_count,
                    float *d, int64_t ds, st_cpu_ce_sums *sums) {
  float mx[ST_CPU_PIXEL_TILE], sum[ST_CPU_PIXEL_TILE];
  memcpy(mx, x, (size_t)len * sizeof(float));
  for (int64_t k = 1; k < c; k++) {
    const float *restrict xk = x + k * xs;
    for (int64_t t = 0; t < len; t++)
      mx[t] = xk[t] > mx[t] ? xk[t] : mx[t];
  }
  memset(sum, 0, (size_t)len * sizeof(float));
  for (int64_t k = 0; k < c; k++) {
    const float *restrict xk = x + k * xs;
    if (d) { /* keep exp(x - max) for the gradient pass */
      float *restrict dk = d + k * ds;
#pragma omp simd
      for (int64_t t = 0; t < len; t++) {
        dk[t] = exp_nonpos(xk[t] - mx[t]);
        sum[t] += dk[t];
      }
    } else {
#pragma omp simd
      for (int64_t t = 0; t < len; t++)
        sum[t] += exp_nonpos(xk[t] - mx[t]);
    }
  }
  for (int64_t t = 0; t < len; t++) {
    const int l = lab[t];
    if (l >= c) {
      sums->bad_pixels++;
      sums->bad_label = l > sums->bad_label ? l : sums->bad_label;
      continue;
    }
    const float logp = x[l * xs + t] - mx[t] - logf(sum[t]);
    sums->total -= (double)w[t] * (double)logp;
  }
  if (!d)
    return;
  /* dL/dx_k = w * (softmax_k - [k == label]) / count. */
  for (int64_t t = 0; t < len; t++)
    sum[t] = w[t] * inv_count / sum[t]; /* now the softmax scale */
  for (int64_t k = 0; k < c; k++) {
    float *restrict dk = d + k * ds;
    for (int64_t t = 0; t < len; t++)
      dk[t] *= sum[t];
  }
  for (int64_t t = 0; t < len; t++)
    if (lab[t] < c)
      d[lab[t] * ds + t] -= w[t] * inv_count;
}

/* ---- argmax over channels ------------------------------------------------
 */

/* Whether v replaces b as the best of a pixel's classes, scanned in order:
 * strictly greater, so the first maximum wins; a NaN beats every number and
 * the first NaN wins, as in torch.argmax. An int32 so that the selects it
 * drives vectorise in float lanes. */
static inline int32_t argmax_takes(float v, float b) {
  return (v > b) | ((v != v) & (b == b));
}

/* Class k's values of n pixels compared with their best so far (argmax_takes),
 * replacing best and class where they win. */
static void argmax_row(const float *restrict val, int32_t k, int64_t n,
                       float *restrict best, int32_t *restrict cls) {
  for (int64_t j = 0; j < n; j++) {
    const float v = val[j], b = best[j];
    const int32_t take = argmax_takes(v, b);
    best[j] = take ? v : b;
    cls[j] = take ? k : cls[j];
  }
}

const st_cpu_kernels ST_CPU_KERNELS_NAME(ST_CPU_ISA) = {
    .isa = ST_CPU_ISA_STRING(ST_CPU_ISA),
    .resize_row = resize_row,
    .resize_row_bwd = resize_row_bwd,
    .ce_tile = ce_tile,
    .argmax_row = argmax_row,
};
