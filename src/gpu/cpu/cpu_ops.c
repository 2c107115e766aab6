/* The CPU backend's ops other than convolutions: plain C loops the compiler
 * vectorises, spread over the context's OpenMP team.
 *
 * The ops run on 720p frames, so each touches memory once or twice: batch
 * norm works channel by channel so its passes over a channel hit cache,
 * bilinear resizing is separable with taps computed once per call, the
 * cross-entropy keeps a pixel tile's exponentials in the gradient buffer
 * between its passes, and the backward of resizing owns whole input rows per
 * task so it needs no atomics. Statistics and losses accumulate in double.
 * The wrappers in backend.c have checked dtypes and shapes already; these
 * functions only do the work (semantics: backend.h).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "gpu/cpu/cpu_impl.h"

/* Below this many elements an op runs on the calling thread alone: waking
 * the team costs more than the work. */
#define ST_CPU_PARALLEL_MIN_ELEMS 32768
/* Rows per task in bilinear resizing (output rows forward, input rows
 * backward), so that a handful of planes still splits evenly over a team. */
#define ST_CPU_RESIZE_ROWS_PER_TASK 32
/* Up to this many classes the confusion counts use one stack histogram per
 * thread (32 x 32 int64 = 8 KiB); beyond it they are counted serially. */
#define ST_CPU_CONFUSION_LOCAL_CLASSES 32
/* Bytes per task when copying large buffers with the team. */
#define ST_CPU_COPY_CHUNK_BYTES (1u << 20)

/* Team size for an op over `work` elements. */
static int team(st_backend *be, int64_t work) {
  return work >= ST_CPU_PARALLEL_MIN_ELEMS ? st__cpu(be)->threads : 1;
}

static int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

/* d where the ReLU output y is positive, else +0. A bit mask instead of a
 * select keeps the gradient loops vectorised (GCC will not if-convert the
 * select when it is mixed with double accumulators). */
static inline float relu_mask(float y, float d) {
  uint32_t bits;
  memcpy(&bits, &d, sizeof bits);
  bits &= -(uint32_t)(y > 0.0f);
  float g;
  memcpy(&g, &bits, sizeof g);
  return g;
}

/* ---- batch normalisation --------------------------------------------------
 */

static double sum_f32(const float *restrict p, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++)
    s += p[i];
  return s;
}

static double sum_sq_dev_f32(const float *restrict p, int64_t n, double mu) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) {
    double d = (double)p[i] - mu;
    s += d * d;
  }
  return s;
}

/* y = fma(x, a, b), then ReLU when asked; x and y may be the same buffer.
 * a and b hold float values, so x * a is exact in double and the double sum
 * rounded to float is the fused multiply-add PyTorch's vectorised kernels
 * compute (barring rare double-rounding ties), without a libm fmaf call
 * per element on CPUs built without FMA. */
static void affine_f32(const float *x, float *y, int64_t n, double a, double b,
                       int relu) {
  if (relu) {
    for (int64_t i = 0; i < n; i++) {
      float v = (float)((double)x[i] * a + b);
      y[i] = v > 0.0f ? v : 0.0f;
    }
  } else {
    for (int64_t i = 0; i < n; i++)
      y[i] = (float)((double)x[i] * a + b);
  }
}

int st__cpu_batchnorm_fwd(st_backend *be, const st_tensor *x,
                          const st_tensor *gamma, const st_tensor *beta_,
                          double eps, st_activation act, st_tensor *y,
                          st_tensor *mean, st_tensor *invstd) {
  const int64_t n = x->shape[0], c = x->shape[1];
  const int64_t hw = x->shape[2] * x->shape[3], count = n * hw;
  const float *xd = x->data, *gd = gamma->data, *bd = beta_->data;
  float *yd = y->data, *md = mean->data, *sd = invstd->data;
  const int relu = act == ST_ACT_RELU;
  const double eps_d = eps;

  /* One channel per iteration: its N planes are read three times (mean,
   * variance, normalise), mostly from cache. The mean is PyTorch's (a
   * double sum); the variance is a second pass in double, accurate also
   * when the mean is large against the spread. */
#pragma omp parallel for num_threads(team(be, n *c *hw)) schedule(static)
  for (int64_t ch = 0; ch < c; ch++) {
    double sum = 0.0;
    for (int64_t b = 0; b < n; b++)
      sum += sum_f32(xd + (b * c + ch) * hw, hw);
    const double mu = count ? sum / (double)count : 0.0;
    double sq = 0.0;
    for (int64_t b = 0; b < n; b++)
      sq += sum_sq_dev_f32(xd + (b * c + ch) * hw, hw, mu);
    /* PyTorch stores the sum of squares as a float and divides in float
     * before 1/sqrt(var + eps) in double; rounding where it rounds gives
     * the same invstd bits. */
    const float var_f = count ? (float)sq / (float)count : 0.0f;
    const float mean_f = (float)mu;
    const float invstd_f = (float)(1.0 / sqrt((double)var_f + eps_d));
    md[ch] = mean_f;
    sd[ch] = invstd_f;
    /* PyTorch folds the affine into y = fma(x, alpha, shift) with float
     * alpha = invstd * gamma and shift = fma(-mean, alpha, beta); the same
     * roundings give the same bits. */
    const float alpha = invstd_f * gd[ch];
    const float shift = (float)((double)bd[ch] - (double)mean_f * alpha);
    for (int64_t b = 0; b < n; b++)
      affine_f32(xd + (b * c + ch) * hw, yd + (b * c + ch) * hw, hw, alpha,
                 shift, relu);
  }
  return ST_OK;
}

/* Sums of the (ReLU-masked) upstream gradient g and of g * (x - mu). */
static void bn_grad_sums(const float *restrict x, const float *restrict y,
                         const float *restrict dy, int64_t n, double mu,
                         int relu, double *sum_g, double *sum_gx) {
  double sg = 0.0, sgx = 0.0;
  if (relu) {
#pragma omp simd reduction(+ : sg, sgx)
    for (int64_t i = 0; i < n; i++) {
      const float g = relu_mask(y[i], dy[i]);
      sg += g;
      sgx += (double)g * ((double)x[i] - mu);
    }
  } else {
#pragma omp simd reduction(+ : sg, sgx)
    for (int64_t i = 0; i < n; i++) {
      sg += dy[i];
      sgx += (double)dy[i] * ((double)x[i] - mu);
    }
  }
  *sum_g += sg;
  *sum_gx += sgx;
}

/* dx = (g - mean_g - (x - mean) * k) * scale; dx may alias dy. */
static void bn_grad_input(const float *x, const float *y, const float *dy,
                          float *dx, int64_t n, float mean, float mean_g,
                          float k, float scale, int relu) {
  if (relu) {
    for (int64_t i = 0; i < n; i++) {
      const float g = relu_mask(y[i], dy[i]);
      dx[i] = (g - mean_g - (x[i] - mean) * k) * scale;
    }
  } else {
    for (int64_t i = 0; i < n; i++)
      dx[i] = (dy[i] - mean_g - (x[i] - mean) * k) * scale;
  }
}

int st__cpu_batchnorm_bwd(st_backend *be, const st_tensor *x,
                          const st_tensor *y, const st_tensor *dy,
                          const st_tensor *gamma, const st_tensor *mean,
                          const st_tensor *invstd, st_activation act,
                          st_tensor *dx, st_tensor *dgamma, st_tensor *dbeta) {
  const int64_t n = x->shape[0], c = x->shape[1];
  const int64_t hw = x->shape[2] * x->shape[3], count = n * hw;
  const float *xd = x->data, *yd = y->data, *dyd = dy->data;
  const float *gd = gamma->data, *md = mean->data, *sd = invstd->data;
  float *dxd = dx ? dx->data : NULL;
  float *dgd = dgamma ? dgamma->data : NULL;
  float *dbd = dbeta ? dbeta->data : NULL;
  const int relu = act == ST_ACT_RELU;

#pragma omp parallel for num_threads(team(be, n *c *hw)) schedule(static)
  for (int64_t ch = 0; ch < c; ch++) {
    const float mean_f = md[ch], inv = sd[ch];
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t b = 0; b < n; b++) {
      const int64_t off = (b * c + ch) * hw;
      bn_grad_sums(xd + off, yd + off, dyd + off, hw, (double)mean_f, relu,
                   &sum_g, &sum_gx);
    }
    if (dgd)
      dgd[ch] = (float)(sum_gx * inv);
    if (dbd)
      dbd[ch] = (float)sum_g;
    if (!dxd || count == 0)
      continue;
    /* Training-mode batch norm: the mean and the variance depend on x, which
     * adds the two projection terms to the plain scale by invstd * gamma. */
    const float mean_g = (float)(sum_g / (double)count);
    const float k = (float)(sum_gx * inv * inv / (double)count);
    const float scale = inv * gd[ch];
    for (int64_t b = 0; b < n; b++) {
      const int64_t off = (b * c + ch) * hw;
      bn_grad_input(xd + off, yd + off, dyd + off, dxd + off, hw, mean_f,
                    mean_g, k, scale, relu);
    }
  }
  return ST_OK;
}

/* ---- elementwise ----------------------------------------------------------
 */

int st__cpu_relu_fwd(st_backend *be, const st_tensor *x, st_tensor *y) {
  const int64_t n = st_tensor_numel(x);
  const float *xd = x->data;
  float *yd = y->data;
#pragma omp parallel for simd num_threads(team(be, n)) schedule(simd : static)
  for (int64_t i = 0; i < n; i++)
    yd[i] = xd[i] > 0.0f ? xd[i] : 0.0f;
  return ST_OK;
}

int st__cpu_relu_bwd(st_backend *be, const st_tensor *y, const st_tensor *dy,
                     st_tensor *dx) {
  const int64_t n = st_tensor_numel(y);
  const float *yd = y->data, *dyd = dy->data;
  float *dxd = dx->data;
#pragma omp parallel for simd num_threads(team(be, n)) schedule(simd : static)
  for (int64_t i = 0; i < n; i++)
    dxd[i] = relu_mask(yd[i], dyd[i]);
  return ST_OK;
}

int st__cpu_add(st_backend *be, const st_tensor *a, const st_tensor *b,
                st_tensor *y) {
  const int64_t n = st_tensor_numel(a);
  const float *ad = a->data, *bd = b->data;
  float *yd = y->data;
#pragma omp parallel for simd num_threads(team(be, n)) schedule(simd : static)
  for (int64_t i = 0; i < n; i++)
    yd[i] = ad[i] + bd[i];
  return ST_OK;
}

/* ---- layout ---------------------------------------------------------------
 */

int st__cpu_concat_channels(st_backend *be, const st_tensor *a,
                            const st_tensor *b, st_tensor *y) {
  const int64_t n = a->shape[0], ca = a->shape[1], cb = b->shape[1];
  const int64_t hw = a->shape[2] * a->shape[3], cy = ca + cb;
  const float *ad = a->data, *bd = b->data;
  float *yd = y->data;
#pragma omp parallel for num_threads(team(be, n *cy *hw)) schedule(static)
  for (int64_t plane = 0; plane < n * cy; plane++) {
    const int64_t img = plane / cy, ch = plane % cy;
    const float *src =
        ch < ca ? ad + (img * ca + ch) * hw : bd + (img * cb + ch - ca) * hw;
    memcpy(yd + plane * hw, src, (size_t)hw * sizeof(float));
  }
  return ST_OK;
}

int st__cpu_split_channels(st_backend *be, const st_tensor *dy, st_tensor *da,
                           st_tensor *db) {
  const int64_t n = dy->shape[0], cy = dy->shape[1];
  const int64_t hw = dy->shape[2] * dy->shape[3];
  const int64_t ca = da ? da->shape[1] : cy - db->shape[1], cb = cy - ca;
  const float *dyd = dy->data;
  float *dad = da ? da->data : NULL, *dbd = db ? db->data : NULL;
#pragma omp parallel for num_threads(team(be, n *cy *hw)) schedule(static)
  for (int64_t plane = 0; plane < n * cy; plane++) {
    const int64_t img = plane / cy, ch = plane % cy;
    float *dst = ch < ca ? (dad ? dad + (img * ca + ch) * hw : NULL)
                         : (dbd ? dbd + (img * cb + ch - ca) * hw : NULL);
    if (dst)
      memcpy(dst, dyd + plane * hw, (size_t)hw * sizeof(float));
  }
  return ST_OK;
}

int st__cpu_subsample(st_backend *be, const st_tensor *x, int stride,
                      st_tensor *y) {
  const int64_t planes = x->shape[0] * x->shape[1];
  const int64_t ih = x->shape[2], iw = x->shape[3];
  const int64_t oh = y->shape[2], ow = y->shape[3];
  const float *xd = x->data;
  float *yd = y->data;
#pragma omp parallel for collapse(2) num_threads(team(be, planes *ih *iw))     \
    schedule(static)
  for (int64_t p = 0; p < planes; p++) {
    for (int64_t r = 0; r < oh; r++) {
      const float *restrict src = xd + (p * ih + r * stride) * iw;
      float *restrict dst = yd + (p * oh + r) * ow;
      for (int64_t j = 0; j < ow; j++)
        dst[j] = src[j * stride];
    }
  }
  return ST_OK;
}

int st__cpu_subsample_bwd(st_backend *be, const st_tensor *dy, int stride,
                          st_tensor *dx) {
  const int64_t planes = dx->shape[0] * dx->shape[1];
  const int64_t ih = dx->shape[2], iw = dx->shape[3];
  const int64_t oh = dy->shape[2], ow = dy->shape[3];
  const float *dyd = dy->data;
  float *dxd = dx->data;
  /* Each dx row is written exactly once: zeros, then the kept columns. */
#pragma omp parallel for collapse(2) num_threads(team(be, planes *ih *iw))     \
    schedule(static)
  for (int64_t p = 0; p < planes; p++) {
    for (int64_t r = 0; r < ih; r++) {
      float *restrict dst = dxd + (p * ih + r) * iw;
      memset(dst, 0, (size_t)iw * sizeof(float));
      if (r % stride)
        continue;
      const float *restrict src = dyd + (p * oh + r / stride) * ow;
      for (int64_t j = 0; j < ow; j++)
        dst[j * stride] = src[j];
    }
  }
  return ST_OK;
}

/* ---- bilinear resize (align_corners=False) --------------------------------
 */

/* PyTorch's compute_source_index_and_lambda (1.13, CPU): the scale is the
 * float in / out, the source position (dst + 0.5) * scale - 0.5, clamped at
 * 0, is evaluated in its accumulate type (double), and only the weight
 * src - i0 is rounded to float; so indices and weights are bit for bit the
 * ones F.interpolate(size=..., align_corners=False) uses. */
static void resize_taps(int64_t in, int64_t out, st_cpu_tap *taps) {
  const float scale = (float)in / (float)out;
  for (int64_t o = 0; o < out; o++) {
    st_cpu_tap *t = &taps[o];
    if (in == out) {
      *t = (st_cpu_tap){o, o, 1.0f, 0.0f};
      continue;
    }
    double src = (double)scale * ((double)o + 0.5) - 0.5;
    if (src < 0.0)
      src = 0.0;
    t->i0 = min_i64((int64_t)src, in - 1);
    t->i1 = t->i0 + (t->i0 < in - 1 ? 1 : 0);
    const double l1 = src - (double)t->i0;
    t->l1 = (float)(l1 < 0.0 ? 0.0 : (l1 > 1.0 ? 1.0 : l1));
    t->l0 = 1.0f - t->l1;
  }
}

/* One allocation for a resize: the taps of both axes, filled, then
 * extra_bytes for the caller at *extra (8-byte aligned). Returns the block
 * to free, NULL when out of memory. */
static void *resize_scratch(int64_t ih, int64_t iw, int64_t oh, int64_t ow,
                            size_t extra_bytes, st_cpu_tap **th,
                            st_cpu_tap **tw, void **extra) {
  const size_t tap_bytes = (size_t)(oh + ow) * sizeof(st_cpu_tap);
  char *block = malloc(tap_bytes + extra_bytes);
  if (!block)
    return NULL;
  *th = (st_cpu_tap *)block;
  *tw = *th + oh;
  *extra = block + tap_bytes;
  resize_taps(ih, oh, *th);
  resize_taps(iw, ow, *tw);
  return block;
}

/* Test hook (cpu_impl.h): 0 sends every resize down the general column
 * path, so tests can compare the two. */
static _Atomic int resize_doubled_allowed = 1;

void st__cpu_resize_allow_doubled(int allowed) {
  resize_doubled_allowed = allowed;
}

static st_cpu_cols resize_cols_of(const st_cpu_tap *tw, int64_t iw,
                                  int64_t ow) {
  st_cpu_cols cols = {tw, iw, ow, 0};
  if (ow != 2 * iw || iw < 2 || !resize_doubled_allowed)
    return cols;
  for (int64_t j = 1; j < ow - 1; j++) {
    const st_cpu_tap *like = &tw[j & 1 ? 1 : 2];
    const int64_t i0 = (j - 1) / 2;
    if (tw[j].i0 != i0 || tw[j].i1 != i0 + 1 || tw[j].l0 != like->l0 ||
        tw[j].l1 != like->l1)
      return cols;
  }
  cols.doubled = 1;
  return cols;
}

int st__cpu_resize_bilinear_fwd(st_backend *be, const st_tensor *x,
                                st_tensor *y) {
  const st_cpu_kernels *kern = st__cpu(be)->kernels;
  const int64_t planes = x->shape[0] * x->shape[1];
  const int64_t ih = x->shape[2], iw = x->shape[3];
  const int64_t oh = y->shape[2], ow = y->shape[3];
  const int threads = team(be, planes * (ih * iw + oh * ow));
  /* The taps, then two row buffers per thread. */
  st_cpu_tap *th, *tw;
  void *rows_v;
  void *scratch = resize_scratch(
      ih, iw, oh, ow, (size_t)threads * 2 * (size_t)ow * sizeof(float), &th,
      &tw, &rows_v);
  if (!scratch)
    return st_error_set(ST_ENOMEM, "resize_bilinear_fwd: no scratch memory");
  float *rows = rows_v;
  const st_cpu_cols cols = resize_cols_of(tw, iw, ow);

  const float *xd = x->data;
  float *yd = y->data;
  const int64_t blocks =
      (oh + ST_CPU_RESIZE_ROWS_PER_TASK - 1) / ST_CPU_RESIZE_ROWS_PER_TASK;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t task = 0; task < planes * blocks; task++) {
    const int64_t p = task / blocks;
    const int64_t r0 = (task % blocks) * ST_CPU_RESIZE_ROWS_PER_TASK;
    const int64_t r1 = min_i64(r0 + ST_CPU_RESIZE_ROWS_PER_TASK, oh);
    float *mine = rows + (size_t)omp_get_thread_num() * 2 * (size_t)ow;
    st_cpu_row_cache cache = {{mine, mine + ow}, {-1, -1}};
    const float *plane = xd + p * ih * iw;
    for (int64_t r = r0; r < r1; r++)
      kern->resize_row(&cache, plane, &cols, th[r], yd + (p * oh + r) * ow);
  }
  free(scratch);
  return ST_OK;
}

/* For each of `in` source rows, the output rows that read it,
 * [span[2r], span[2r+1]): their i0 is r-1 or r, and since i0 and i1 grow
 * with the output row they are contiguous, from the first with i1 >= r to
 * the last with i0 <= r. */
static void resize_spans(const st_cpu_tap *t, int64_t in, int64_t out,
                         int64_t *span) {
  for (int64_t r = 0, lo = 0, hi = 0; r < in; r++) {
    while (lo < out && t[lo].i1 < r)
      lo++;
    while (hi < out && t[hi].i0 <= r)
      hi++;
    span[2 * r] = lo;
    span[2 * r + 1] = hi;
  }
}

int st__cpu_resize_bilinear_bwd(st_backend *be, const st_tensor *dy,
                                st_tensor *dx) {
  const st_cpu_kernels *kern = st__cpu(be)->kernels;
  const int64_t planes = dx->shape[0] * dx->shape[1];
  const int64_t ih = dx->shape[2], iw = dx->shape[3];
  const int64_t oh = dy->shape[2], ow = dy->shape[3];
  const int threads = team(be, planes * (ih * iw + oh * ow));
  /* The taps, the output-row range feeding each input row, and one
   * accumulator row per thread. */
  const size_t range_bytes = (size_t)ih * 2 * sizeof(int64_t);
  st_cpu_tap *th, *tw;
  void *extra;
  void *scratch =
      resize_scratch(ih, iw, oh, ow,
                     range_bytes + (size_t)threads * (size_t)ow * sizeof(float),
                     &th, &tw, &extra);
  if (!scratch)
    return st_error_set(ST_ENOMEM, "resize_bilinear_bwd: no scratch memory");
  int64_t *range = extra;
  float *accs = (float *)((char *)extra + range_bytes);
  resize_spans(th, ih, oh, range);
  const st_cpu_cols cols = resize_cols_of(tw, iw, ow);

  const float *dyd = dy->data;
  float *dxd = dx->data;
  const int64_t blocks =
      (ih + ST_CPU_RESIZE_ROWS_PER_TASK - 1) / ST_CPU_RESIZE_ROWS_PER_TASK;
  /* Each task owns whole dx rows, so no two threads add to one element:
   * gather dy rows along H into an accumulator (vectorised), then scatter
   * it along W into the dx row. */
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t task = 0; task < planes * blocks; task++) {
    const int64_t p = task / blocks;
    const int64_t r0 = (task % blocks) * ST_CPU_RESIZE_ROWS_PER_TASK;
    const int64_t r1 = min_i64(r0 + ST_CPU_RESIZE_ROWS_PER_TASK, ih);
    float *restrict acc = accs + (size_t)omp_get_thread_num() * (size_t)ow;
    const float *plane = dyd + p * oh * ow;
    for (int64_t r = r0; r < r1; r++)
      kern->resize_row_bwd(plane, 0, r, range, th, &cols, acc,
                           dxd + (p * ih + r) * iw);
  }
  free(scratch);
  return ST_OK;
}

/* ---- loss and metrics -----------------------------------------------------
 */

/* The result tensor of a cross-entropy call from its sums. */
static void ce_result_write(const st_cpu_ce_sums *s, int64_t count,
                            float *res) {
  res[0] = (float)(s->total / (double)count);
  if (s->bad_pixels) {
    res[1] = (float)s->bad_pixels;
    res[2] = (float)s->bad_label;
  }
}

/* A call's sums from its tasks' sums, added in task order: the same bits
 * whatever the team size and whichever thread finishes first (an OpenMP
 * reduction adds the threads' sums in the order they arrive). */
static st_cpu_ce_sums ce_sums_combine(const st_cpu_ce_sums *part,
                                      int64_t tasks) {
  st_cpu_ce_sums all = {0.0, 0, -1};
  for (int64_t t = 0; t < tasks; t++) {
    all.total += part[t].total;
    all.bad_pixels += part[t].bad_pixels;
    if (part[t].bad_label > all.bad_label)
      all.bad_label = part[t].bad_label;
  }
  return all;
}

int st__cpu_weighted_ce(st_backend *be, const st_tensor *logits,
                        const st_tensor *label, const st_tensor *weight,
                        st_tensor *result, st_tensor *dlogits) {
  const st_cpu_kernels *kern = st__cpu(be)->kernels;
  const int64_t n = logits->shape[0], c = logits->shape[1];
  const int64_t hw = logits->shape[2] * logits->shape[3], count = n * hw;
  const float *xd = logits->data, *wd = weight->data;
  const uint8_t *ld = label->data;
  float *dd = dlogits ? dlogits->data : NULL;
  float *res = result->data;
  memset(res, 0, ST_CE_RESULT_LEN * sizeof *res);
  if (count == 0) /* the mean over no pixels: nothing to learn */
    return ST_OK;
  const float inv_count = (float)(1.0 / (double)count);
  const int64_t tiles = (hw + ST_CPU_PIXEL_TILE - 1) / ST_CPU_PIXEL_TILE;
  st_cpu_ce_sums *part = malloc((size_t)(n * tiles) * sizeof *part);
  if (!part)
    return st_error_set(ST_ENOMEM, "weighted_ce: no scratch memory");

#pragma omp parallel for num_threads(team(be, count *c)) schedule(static)
  for (int64_t task = 0; task < n * tiles; task++) {
    const int64_t img = task / tiles, p0 = (task % tiles) * ST_CPU_PIXEL_TILE;
    const int64_t len = min_i64(ST_CPU_PIXEL_TILE, hw - p0);
    part[task] = (st_cpu_ce_sums){0.0, 0, -1};
    kern->ce_tile(xd + img * c * hw + p0, hw, len, c, ld + img * hw + p0,
                  wd + img * hw + p0, inv_count,
                  dd ? dd + img * c * hw + p0 : NULL, hw, &part[task]);
  }
  const st_cpu_ce_sums all = ce_sums_combine(part, n * tiles);
  ce_result_write(&all, count, res);
  free(part);
  return ST_OK;
}

/* Input rows of the small gradient per task of the resized cross-entropy
 * (each thread holds the class scores and gradient of the output rows they
 * read: C x (about 2 x this + 2) x W floats each at a 2x upsample). */
#define ST_CPU_CE_RESIZED_ROWS 8

/* The output rows [*lo, *hi) the task holding input rows [i0, i1) works
 * on: those its rows read when it takes a gradient, else those it owns
 * (whose first source row is one of its rows). */
static void ce_resized_rows(const int64_t *range, const int64_t *own,
                            int64_t i0, int64_t i1, int grad, int64_t *lo,
                            int64_t *hi) {
  *lo = grad ? range[2 * i0] : own[i0];
  *hi = grad ? range[2 * (i1 - 1) + 1] : own[i1];
}

/* The loss of st__cpu_weighted_ce on the logits resized to the label's
 * H,W, and the gradient of the small logits (st__cpu_resize_bilinear_bwd of
 * its dlogits), without the frame-sized logits or gradient in memory. Each
 * task owns a block of input rows: it interpolates the output rows those
 * read, class by class, as st__cpu_resize_bilinear_fwd does, takes their
 * loss and gradient (ce_tile), and gathers the gradient into its rows as
 * the resize backward does (along H, then W), so the gradient equals the
 * three ops' bit for bit. An output row read by two blocks is computed by
 * both and counted in the loss by the one holding its first source row. */
int st__cpu_weighted_ce_resized(st_backend *be, const st_tensor *logits,
                                const st_tensor *label, const st_tensor *weight,
                                st_tensor *result, st_tensor *dlogits) {
  const st_cpu_kernels *kern = st__cpu(be)->kernels;
  const int64_t n = logits->shape[0], c = logits->shape[1];
  const int64_t ih = logits->shape[2], iw = logits->shape[3];
  const int64_t oh = label->shape[1], ow = label->shape[2];
  const int64_t count = n * oh * ow, rows = ST_CPU_CE_RESIZED_ROWS;
  const int64_t blocks = (ih + rows - 1) / rows;
  float *res = result->data;
  memset(res, 0, ST_CE_RESULT_LEN * sizeof *res);
  const float inv_count = (float)(1.0 / (double)count);
  const int threads = team(be, n * c * (ih * iw + oh * ow));
  /* The taps, then per input row the output rows that read it [lo, hi)
   * (as in the resize backward) and the first output row whose first
   * source row it is (own[ih] = oh). */
  const size_t index_bytes = ((size_t)ih * 3 + 1) * sizeof(int64_t);
  st_cpu_tap *th, *tw;
  void *extra;
  void *index = resize_scratch(ih, iw, oh, ow, index_bytes, &th, &tw, &extra);
  if (!index)
    return st_error_set(ST_ENOMEM, "weighted_ce_resized: no scratch memory");
  int64_t *range = extra, *own = range + 2 * ih;
  resize_spans(th, ih, oh, range);
  const st_cpu_cols cols = resize_cols_of(tw, iw, ow);
  for (int64_t r = 0, first = 0; r < ih; r++) {
    while (first < oh && th[first].i0 < r)
      first++;
    own[r] = first;
  }
  own[ih] = oh;
  /* The most output rows any task works on sizes the per-thread buffers. */
  int64_t span = 1;
  for (int64_t t = 0; t < blocks; t++) {
    int64_t lo, hi;
    ce_resized_rows(range, own, t * rows, min_i64(t * rows + rows, ih),
                    dlogits != NULL, &lo, &hi);
    span = hi - lo > span ? hi - lo : span;
  }
  const size_t plane = (size_t)span * (size_t)ow; /* one class's rows */
  const size_t per_thread =
      3 * (size_t)ow + (dlogits ? 2 : 1) * (size_t)c * plane;
  float *bufs = malloc((size_t)threads * per_thread * sizeof(float));
  st_cpu_ce_sums *part = malloc((size_t)(n * blocks) * sizeof *part);
  if (!bufs || !part) {
    free(part);
    free(bufs);
    free(index);
    return st_error_set(ST_ENOMEM, "weighted_ce_resized: no scratch memory");
  }

  const float *xd = logits->data, *wd = weight->data;
  const uint8_t *ld = label->data;
  float *dd = dlogits ? dlogits->data : NULL;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t task = 0; task < n * blocks; task++) {
    const int64_t img = task / blocks, i0 = (task % blocks) * rows;
    const int64_t i1 = min_i64(i0 + rows, ih);
    int64_t lo, hi;
    ce_resized_rows(range, own, i0, i1, dd != NULL, &lo, &hi);
    float *mine = bufs + (size_t)omp_get_thread_num() * per_thread;
    float *acc = mine + 2 * ow;
    /* Scores, then (with a gradient) the gradient: class k at k*plane. */
    float *v = acc + ow, *d = dd ? v + (size_t)c * plane : NULL;
    for (int64_t k = 0; k < c; k++) {
      st_cpu_row_cache cache = {{mine, mine + ow}, {-1, -1}};
      const float *src = xd + (img * c + k) * ih * iw;
      for (int64_t o = lo; o < hi; o++)
        kern->resize_row(&cache, src, &cols, th[o],
                         v + k * plane + (o - lo) * ow);
    }
    st_cpu_ce_sums *sums = &part[task], elsewhere = {0.0, 0, -1};
    *sums = (st_cpu_ce_sums){0.0, 0, -1};
    for (int64_t o = lo; o < hi; o++) {
      st_cpu_ce_sums *into = o >= own[i0] && o < own[i1] ? sums : &elsewhere;
      for (int64_t j0 = 0; j0 < ow; j0 += ST_CPU_PIXEL_TILE) {
        const int64_t at = (o - lo) * ow + j0, px = (img * oh + o) * ow + j0;
        kern->ce_tile(v + at, (int64_t)plane,
                      min_i64(ST_CPU_PIXEL_TILE, ow - j0), c, ld + px, wd + px,
                      inv_count, dd ? d + at : NULL, (int64_t)plane, into);
      }
    }
    if (!dd)
      continue;
    for (int64_t k = 0; k < c; k++)
      for (int64_t r = i0; r < i1; r++)
        kern->resize_row_bwd(d + k * plane, lo, r, range, th, &cols, acc,
                             dd + ((img * c + k) * ih + r) * iw);
  }
  const st_cpu_ce_sums all = ce_sums_combine(part, n * blocks);
  ce_result_write(&all, count, res);
  free(part);
  free(bufs);
  free(index);
  return ST_OK;
}

int st__cpu_argmax_channels(st_backend *be, const st_tensor *logits,
                            st_tensor *labels) {
  const st_cpu_kernels *kern = st__cpu(be)->kernels;
  const int64_t n = logits->shape[0], c = logits->shape[1];
  const int64_t hw = logits->shape[2] * logits->shape[3];
  const float *xd = logits->data;
  uint8_t *od = labels->data;
  const int64_t tiles = (hw + ST_CPU_PIXEL_TILE - 1) / ST_CPU_PIXEL_TILE;
#pragma omp parallel for num_threads(team(be, n *c *hw)) schedule(static)
  for (int64_t task = 0; task < n * tiles; task++) {
    const int64_t img = task / tiles, p0 = (task % tiles) * ST_CPU_PIXEL_TILE;
    const int64_t len = min_i64(ST_CPU_PIXEL_TILE, hw - p0);
    const float *x = xd + img * c * hw + p0;
    float best[ST_CPU_PIXEL_TILE];
    int32_t idx[ST_CPU_PIXEL_TILE];
    memcpy(best, x, (size_t)len * sizeof(float));
    memset(idx, 0, (size_t)len * sizeof(int32_t));
    for (int64_t k = 1; k < c; k++)
      kern->argmax_row(x + k * hw, (int32_t)k, len, best, idx);
    uint8_t *out = od + img * hw + p0;
    for (int64_t t = 0; t < len; t++)
      out[t] = (uint8_t)idx[t];
  }
  return ST_OK;
}

/* One block of output rows of one image per task: channel by channel, the
 * block's rows are interpolated as st__cpu_resize_bilinear_fwd does (along W
 * through the row cache, then along H) and compared with the block's best
 * so far by st__cpu_argmax_channels' rule. Only the block's best values are
 * kept, never the resized logits. */
int st__cpu_argmax_resized(st_backend *be, const st_tensor *logits,
                           st_tensor *labels) {
  const st_cpu_kernels *kern = st__cpu(be)->kernels;
  const int64_t n = logits->shape[0], c = logits->shape[1];
  const int64_t ih = logits->shape[2], iw = logits->shape[3];
  const int64_t oh = labels->shape[1], ow = labels->shape[2];
  const int64_t rows = ST_CPU_RESIZE_ROWS_PER_TASK;
  const int threads = team(be, n * c * (ih * iw + oh * ow));
  /* The taps, then per thread two cached rows, one resized row, and a
   * block's best values and their classes (int32, so the comparison
   * vectorises in float lanes). */
  const size_t per_thread = (size_t)(3 + 2 * rows) * (size_t)ow;
  st_cpu_tap *th, *tw;
  void *bufs_v;
  void *scratch = resize_scratch(ih, iw, oh, ow,
                                 (size_t)threads * per_thread * sizeof(float),
                                 &th, &tw, &bufs_v);
  if (!scratch)
    return st_error_set(ST_ENOMEM, "argmax_resized: no scratch memory");
  float *bufs = bufs_v;
  const st_cpu_cols cols = resize_cols_of(tw, iw, ow);

  const float *xd = logits->data;
  uint8_t *ld = labels->data;
  const int64_t blocks = (oh + rows - 1) / rows;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t task = 0; task < n * blocks; task++) {
    const int64_t img = task / blocks, r0 = (task % blocks) * rows;
    const int64_t r1 = min_i64(r0 + rows, oh);
    float *mine = bufs + (size_t)omp_get_thread_num() * per_thread;
    float *vals = mine + 2 * ow, *best = vals + ow;
    int32_t *cls = (int32_t *)(best + rows * ow);
    for (int64_t k = 0; k < c; k++) {
      st_cpu_row_cache cache = {{mine, mine + ow}, {-1, -1}};
      const float *plane = xd + (img * c + k) * ih * iw;
      for (int64_t r = r0; r < r1; r++) {
        float *restrict bst = best + (r - r0) * ow;
        int32_t *restrict idx = cls + (r - r0) * ow;
        if (k == 0) {
          kern->resize_row(&cache, plane, &cols, th[r], bst);
          memset(idx, 0, (size_t)ow * sizeof *idx);
          continue;
        }
        kern->resize_row(&cache, plane, &cols, th[r], vals);
        kern->argmax_row(vals, (int32_t)k, ow, bst, idx);
      }
    }
    uint8_t *out = ld + (img * oh + r0) * ow;
    for (int64_t i = 0; i < (r1 - r0) * ow; i++)
      out[i] = (uint8_t)cls[i];
  }
  free(scratch);
  return ST_OK;
}

int st__cpu_confusion_counts(st_backend *be, const st_tensor *pred,
                             const st_tensor *label, int num_classes,
                             st_tensor *counts_t) {
  const int64_t n = st_tensor_numel(pred);
  const uint8_t *pd = pred->data, *ld = label->data;
  const int k = num_classes;
  int64_t *counts = counts_t->data;
  memset(counts, 0,
         ((size_t)k * (size_t)k + ST_CONFUSION_EXTRA) * sizeof(int64_t));
  int64_t bad_pixels = 0;
  int bad_value = -1;
  if (k <= ST_CPU_CONFUSION_LOCAL_CLASSES) {
#pragma omp parallel num_threads(team(be, n)) \
    reduction(+ : bad_pixels) reduction(max : bad_value)
    {
      int64_t local[ST_CPU_CONFUSION_LOCAL_CLASSES *
                    ST_CPU_CONFUSION_LOCAL_CLASSES];
      memset(local, 0, (size_t)k * (size_t)k * sizeof(int64_t));
#pragma omp for schedule(static) nowait
      for (int64_t i = 0; i < n; i++) {
        const int l = ld[i], p = pd[i];
        if (l >= k || p >= k) {
          const int worst = l > p ? l : p;
          bad_pixels++;
          bad_value = worst > bad_value ? worst : bad_value;
          continue;
        }
        local[l * k + p]++;
      }
#pragma omp critical(st_cpu_confusion_merge)
      for (int j = 0; j < k * k; j++)
        counts[j] += local[j];
    }
  } else {
    for (int64_t i = 0; i < n; i++) {
      const int l = ld[i], p = pd[i];
      if (l >= k || p >= k) {
        const int worst = l > p ? l : p;
        bad_pixels++;
        bad_value = worst > bad_value ? worst : bad_value;
        continue;
      }
      counts[(size_t)l * (size_t)k + (size_t)p]++;
    }
  }
  if (bad_pixels) {
    counts[(size_t)k * (size_t)k] = bad_pixels;
    counts[(size_t)k * (size_t)k + 1] = bad_value;
  }
  return ST_OK;
}

/* ---- optimiser ------------------------------------------------------------
 */

int st__cpu_adam_step(st_backend *be, const st_adam_params *p, int64_t step,
                      st_tensor *param, const st_tensor *grad, st_tensor *m,
                      st_tensor *v) {
  const int64_t n = st_tensor_numel(param);
  const double lr = p->lr, beta1 = p->beta1, beta2 = p->beta2, eps = p->eps;
  /* _single_tensor_adam (PyTorch 1.13): the scalars are doubles and enter
   * each float tensor op rounded to float, in the order the ops run. */
  const double bias_correction1 = 1.0 - pow(beta1, (double)step);
  const double bias_correction2 = 1.0 - pow(beta2, (double)step);
  const float neg_step_size = (float)-(lr / bias_correction1);
  const float bias_correction2_sqrt = (float)sqrt(bias_correction2);
  const float b1 = (float)beta1, one_minus_b1 = (float)(1.0 - beta1);
  const float b2 = (float)beta2, one_minus_b2 = (float)(1.0 - beta2);
  const float eps_f = (float)eps;
  float *restrict pd = param->data, *restrict md = m->data,
                  *restrict vd = v->data;
  const float *restrict gd = grad->data;
#pragma omp parallel for num_threads(team(be, n)) schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float g = gd[i];
    /* mul_ rounds, then add_ and addcmul_ fuse their last multiply with
     * the add (fmadd in PyTorch's vectorised kernels): the products are
     * exact in double and the sum is rounded to float once more. */
    const float mi = (float)((double)g * one_minus_b1 + (double)(md[i] * b1));
    const float vi =
        (float)((double)(one_minus_b2 * g) * g + (double)(vd[i] * b2));
    const float denom = sqrtf(vi) / bias_correction2_sqrt + eps_f;
    pd[i] = pd[i] + neg_step_size * mi / denom; /* addcdiv_ */
    md[i] = mi;
    vd[i] = vi;
  }
  return ST_OK;
}

/* ---- conversions ----------------------------------------------------------
 */

int st__cpu_cast(st_backend *be, const st_tensor *src, st_tensor *dst) {
  const int64_t n = st_tensor_numel(src);
  if (src->dtype == ST_F32) {
    const float *s = src->data;
    uint16_t *d = dst->data;
#pragma omp parallel for num_threads(team(be, n)) schedule(static)
    for (int64_t i = 0; i < n; i++)
      d[i] = st_f32_to_f16(s[i]);
  } else {
    const uint16_t *s = src->data;
    float *d = dst->data;
#pragma omp parallel for num_threads(team(be, n)) schedule(static)
    for (int64_t i = 0; i < n; i++)
      d[i] = st_f16_to_f32(s[i]);
  }
  return ST_OK;
}

int st__cpu_copy(st_backend *be, const st_tensor *src, st_tensor *dst) {
  const size_t bytes = st_tensor_nbytes(src);
  if (src->data == dst->data || bytes == 0)
    return ST_OK;
  const char *s = src->data;
  char *d = dst->data;
  const int64_t chunks = (int64_t)((bytes + ST_CPU_COPY_CHUNK_BYTES - 1) /
                                   ST_CPU_COPY_CHUNK_BYTES);
#pragma omp parallel for num_threads(                                          \
    team(be, (int64_t)(bytes / sizeof(float)))) schedule(static)
  for (int64_t i = 0; i < chunks; i++) {
    const size_t off = (size_t)i * ST_CPU_COPY_CHUNK_BYTES;
    const size_t len = bytes - off < ST_CPU_COPY_CHUNK_BYTES
                           ? bytes - off
                           : ST_CPU_COPY_CHUNK_BYTES;
    memcpy(d + off, s + off, len);
  }
  return ST_OK;
}

int st__cpu_fill(st_backend *be, st_tensor *t, float value) {
  const int64_t n = st_tensor_numel(t);
  float *d = t->data;
#pragma omp parallel for simd num_threads(team(be, n)) schedule(simd : static)
  for (int64_t i = 0; i < n; i++)
    d[i] = value;
  return ST_OK;
}

int st__cpu_image_to_tensor(st_backend *be, const st_tensor *image,
                            const int channel_order[3], const float mean[3],
                            const float std_[3], st_tensor *y) {
  const int64_t h = image->shape[0], w = image->shape[1];
  const uint8_t *img = image->data;
  float *yd = y->data;
  /* Subtract then divide in float, exactly as the reference's numpy: once
   * per channel and byte value, then every pixel looks its value up. */
  float table[3][256];
  for (int c = 0; c < 3; c++)
    for (int v = 0; v < 256; v++)
      table[c][v] = ((float)v - mean[c]) / std_[c];
#pragma omp parallel for num_threads(team(be, h *w * 3)) schedule(static)
  for (int64_t r = 0; r < h; r++) {
    const uint8_t *restrict src = img + r * w * 3;
    for (int c = 0; c < 3; c++) {
      const uint8_t *restrict from = src + channel_order[c];
      const float *restrict lut = table[c];
      float *restrict dst = yd + (c * h + r) * w;
      for (int64_t j = 0; j < w; j++)
        dst[j] = lut[from[j * 3]];
    }
  }
  return ST_OK;
}
