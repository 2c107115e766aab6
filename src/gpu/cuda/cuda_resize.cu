// Bilinear resizing (align_corners=False) on the CUDA backend, matching the
// CPU backend's numerics in cpu_ops.c bit for bit in the forward pass and in
// the order of its sums in the backward pass.
//
// A setup kernel computes PyTorch's source taps once per call into the
// context's scratch buffer: for each output row and column its two source
// indices and weights, and for the backward pass, for each input row and
// column, the contiguous range of output rows or columns that read it
// (taps grow with the output index, so a binary search finds the range).
// The forward pass gathers four inputs per output element. The backward pass
// is a gather too, one thread per input element summing the contributions
// of the outputs in its row and column ranges, so it needs no atomics and
// its results are the same on every run. The fused class map
// (argmax_resized) interpolates every channel of one output pixel in a
// thread, as the forward pass does, and keeps only the best. Scratch layout:
// row taps [OH], column taps [OW], then (backward) row spans [IH] and column
// spans [IW].
#include <limits.h>
#include <stdint.h>

#include "gpu/cuda/cuda_impl.h"

// One output position's two source positions and their weights.
typedef struct resize_tap {
  int i0, i1;   // source indices, i0 <= i1, both nondecreasing in the output
  float l0, l1; // weights of i0 and i1
} resize_tap;

// The output positions [lo, hi) whose taps read one input position.
typedef struct resize_span {
  int lo, hi;
} resize_span;

// PyTorch's compute_source_index_and_lambda (1.13), as resize_taps in
// cpu_ops.c: the source position (dst + 0.5) * scale - 0.5, clamped at 0,
// in double with no fused multiply-add, and only the weight rounded to
// float. `scale` is the float in / out, computed on the host.
__device__ static resize_tap resize_make_tap(int o, int in, int out,
                                             float scale) {
  resize_tap t;
  if (in == out) {
    t.i0 = o;
    t.i1 = o;
    t.l0 = 1.0f;
    t.l1 = 0.0f;
    return t;
  }
  double src = __dsub_rn(__dmul_rn((double)scale, (double)o + 0.5), 0.5);
  if (src < 0.0)
    src = 0.0;
  const int trunc = (int)src;
  t.i0 = trunc < in - 1 ? trunc : in - 1;
  t.i1 = t.i0 + (t.i0 < in - 1 ? 1 : 0);
  const double l1 = __dsub_rn(src, (double)t.i0);
  t.l1 = (float)(l1 < 0.0 ? 0.0 : (l1 > 1.0 ? 1.0 : l1));
  t.l0 = __fsub_rn(1.0f, t.l1);
  return t;
}

// The output positions that read input position r: from the first whose
// i1 >= r to the first whose i0 > r (both lower bounds over monotone taps),
// the range the CPU backend walks.
__device__ static resize_span resize_make_span(int r, int in, int out,
                                               float scale) {
  resize_span s;
  int lo = 0, hi = out;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (resize_make_tap(mid, in, out, scale).i1 >= r)
      hi = mid;
    else
      lo = mid + 1;
  }
  s.lo = lo;
  hi = out;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (resize_make_tap(mid, in, out, scale).i0 > r)
      hi = mid;
    else
      lo = mid + 1;
  }
  s.hi = lo;
  return s;
}

// Fills the row and column taps and, when span_h is not NULL, the row and
// column spans: one item per thread over oh + ow (+ ih + iw) items.
__global__ static void resize_setup(int ih, int iw, int oh, int ow,
                                    float scale_h, float scale_w,
                                    resize_tap *tap_h, resize_tap *tap_w,
                                    resize_span *span_h, resize_span *span_w) {
  const int64_t taps = (int64_t)oh + ow;
  const int64_t items = taps + (span_h ? (int64_t)ih + iw : 0);
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < items;
       t += (int64_t)gridDim.x * blockDim.x) {
    if (t < oh)
      tap_h[t] = resize_make_tap((int)t, ih, oh, scale_h);
    else if (t < taps)
      tap_w[t - oh] = resize_make_tap((int)(t - oh), iw, ow, scale_w);
    else if (t < taps + ih)
      span_h[t - taps] = resize_make_span((int)(t - taps), ih, oh, scale_h);
    else
      span_w[t - taps - ih] =
          resize_make_span((int)(t - taps - ih), iw, ow, scale_w);
  }
}

// fma(a, wa, b * wb): how PyTorch's FMA build (and lerp2 on the CPU)
// evaluates a * wa + b * wb.
__device__ static inline float resize_lerp(float a, float wa, float b,
                                           float wb) {
  return fmaf(a, wa, __fmul_rn(b, wb));
}

// One output element of a plane's resize: its two source rows interpolated
// along W, then the results along H, as the CPU backend does.
__device__ static inline float resize_sample(const float *plane, int iw,
                                             resize_tap th, resize_tap tw) {
  const float *src0 = plane + (int64_t)th.i0 * iw;
  const float *src1 = plane + (int64_t)th.i1 * iw;
  const float a = resize_lerp(src0[tw.i0], tw.l0, src0[tw.i1], tw.l1);
  const float b = resize_lerp(src1[tw.i0], tw.l0, src1[tw.i1], tw.l1);
  return resize_lerp(a, th.l0, b, th.l1);
}

// One thread per output element.
__global__ static void resize_fwd(const float *x, float *y, int64_t planes,
                                  int ih, int iw, int oh, int ow,
                                  const resize_tap *tap_h,
                                  const resize_tap *tap_w) {
  const int64_t total = planes * oh * ow;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
       idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = idx / ow;
    const int col = (int)(idx - row * ow);
    const int64_t p = row / oh;
    const int r = (int)(row - p * oh);
    y[idx] = resize_sample(x + p * ih * iw, iw, tap_h[r], tap_w[col]);
  }
}

// One thread per input element (r, col): for each output column j in the
// column's span, the H-weighted sum of dy[o][j] over the output rows o of
// the row's span (the CPU's accumulator row), then its W weights into dx.
// Sums and products are rounded one by one in the CPU backend's order.
__global__ static void resize_bwd(const float *dy, float *dx, int64_t planes,
                                  int ih, int iw, int oh, int ow,
                                  const resize_tap *tap_h,
                                  const resize_tap *tap_w,
                                  const resize_span *span_h,
                                  const resize_span *span_w) {
  const int64_t total = planes * ih * iw;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
       idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = idx / iw;
    const int col = (int)(idx - row * iw);
    const int64_t p = row / ih;
    const int r = (int)(row - p * ih);
    const resize_span sh = span_h[r], sw = span_w[col];
    const float *plane = dy + p * oh * ow;
    float sum = 0.0f;
    for (int j = sw.lo; j < sw.hi; j++) {
      float acc = 0.0f;
      for (int o = sh.lo; o < sh.hi; o++) {
        const resize_tap th = tap_h[o];
        const float w = __fadd_rn(th.i0 == r ? th.l0 : 0.0f,
                                  th.i1 == r ? th.l1 : 0.0f);
        if (w == 0.0f)
          continue;
        acc = __fadd_rn(acc, __fmul_rn(w, plane[(int64_t)o * ow + j]));
      }
      const resize_tap tw = tap_w[j];
      if (tw.i0 == col)
        sum = __fadd_rn(sum, __fmul_rn(tw.l0, acc));
      if (tw.i1 == col)
        sum = __fadd_rn(sum, __fmul_rn(tw.l1, acc));
    }
    dx[idx] = sum;
  }
}

// Checks that the extents fit the kernels' int indices (spans hold `out`
// itself, hence the strict bound).
static int resize_check_extents(const char *op, int64_t ih, int64_t iw,
                                int64_t oh, int64_t ow) {
  if (ih >= INT_MAX || iw >= INT_MAX || oh >= INT_MAX || ow >= INT_MAX)
    return st_error_set(ST_ERANGE, "%s: spatial extent too large for CUDA",
                        op);
  return ST_OK;
}

// Scratch for the taps (and spans when `spans`), computed on the stream,
// once the extents are known to fit the kernels' int indices.
static int resize_prepare(st_cuda_backend *cu, const char *op, int64_t ih,
                          int64_t iw, int64_t oh, int64_t ow, int spans,
                          resize_tap **tap_h, resize_tap **tap_w,
                          resize_span **span_h, resize_span **span_w) {
  ST_TRY(resize_check_extents(op, ih, iw, oh, ow));
  const size_t tap_bytes = ((size_t)oh + (size_t)ow) * sizeof(resize_tap);
  const size_t span_bytes =
      spans ? ((size_t)ih + (size_t)iw) * sizeof(resize_span) : 0;
  void *scratch = NULL;
  int rc = st__cuda_scratch(cu, tap_bytes + span_bytes, &scratch);
  if (rc)
    return rc;
  *tap_h = (resize_tap *)scratch;
  *tap_w = *tap_h + oh;
  *span_h = spans ? (resize_span *)(*tap_w + ow) : NULL;
  *span_w = spans ? *span_h + ih : NULL;
  // The scales are PyTorch's float in / out, divided here on the host so no
  // device division mode can change them.
  const float scale_h = (float)ih / (float)oh;
  const float scale_w = (float)iw / (float)ow;
  const int64_t items = (int64_t)oh + ow + (spans ? (int64_t)ih + iw : 0);
  resize_setup<<<st__cuda_grid(items), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (int)ih, (int)iw, (int)oh, (int)ow, scale_h, scale_w, *tap_h, *tap_w,
      *span_h, *span_w);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

extern "C" int st__cuda_resize_bilinear_fwd(st_backend *be, const st_tensor *x,
                                            st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t planes = x->shape[0] * x->shape[1];
  const int64_t ih = x->shape[2], iw = x->shape[3];
  const int64_t oh = y->shape[2], ow = y->shape[3];
  resize_tap *tap_h = NULL, *tap_w = NULL;
  resize_span *span_h = NULL, *span_w = NULL;
  ST_TRY(resize_prepare(cu, "resize_bilinear_fwd", ih, iw, oh, ow, 0, &tap_h,
                        &tap_w, &span_h, &span_w));
  const int64_t total = planes * oh * ow;
  resize_fwd<<<st__cuda_grid(total), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)x->data, (float *)y->data, planes, (int)ih, (int)iw,
      (int)oh, (int)ow, tap_h, tap_w);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

extern "C" int st__cuda_resize_bilinear_bwd(st_backend *be,
                                            const st_tensor *dy,
                                            st_tensor *dx) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t planes = dx->shape[0] * dx->shape[1];
  const int64_t ih = dx->shape[2], iw = dx->shape[3];
  const int64_t oh = dy->shape[2], ow = dy->shape[3];
  resize_tap *tap_h = NULL, *tap_w = NULL;
  resize_span *span_h = NULL, *span_w = NULL;
  ST_TRY(resize_prepare(cu, "resize_bilinear_bwd", ih, iw, oh, ow, 1, &tap_h,
                        &tap_w, &span_h, &span_w));
  const int64_t total = planes * ih * iw;
  resize_bwd<<<st__cuda_grid(total), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)dy->data, (float *)dx->data, planes, (int)ih, (int)iw,
      (int)oh, (int)ow, tap_h, tap_w, span_h, span_w);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// One thread per output pixel: each channel's value interpolated as
// resize_fwd computes it, then compared with the best so far by
// argmax_kernel's rule (strictly greater; a NaN beats a number, the first
// NaN wins), so the class map equals the two ops' without the resized
// logits in memory.
__global__ static void resize_argmax(const float *x, uint8_t *labels, int64_t n,
                                     int c, int ih, int iw, int oh, int ow,
                                     const resize_tap *tap_h,
                                     const resize_tap *tap_w) {
  const int64_t total = n * oh * ow;
  const int64_t plane_len = (int64_t)ih * iw;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
       idx < total; idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = idx / ow;
    const int col = (int)(idx - row * ow);
    const int64_t img = row / oh;
    const int r = (int)(row - img * oh);
    const resize_tap th = tap_h[r], tw = tap_w[col];
    const float *plane = x + img * c * plane_len;
    float best = 0.0f;
    int id = 0;
    for (int k = 0; k < c; k++, plane += plane_len) {
      const float v = resize_sample(plane, iw, th, tw);
      if (k == 0 || st__cuda_argmax_takes(v, best)) {
        best = v;
        id = k;
      }
    }
    labels[idx] = (uint8_t)id;
  }
}

extern "C" int st__cuda_argmax_resized(st_backend *be, const st_tensor *logits,
                                       st_tensor *labels) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = logits->shape[0], c = logits->shape[1];
  const int64_t ih = logits->shape[2], iw = logits->shape[3];
  const int64_t oh = labels->shape[1], ow = labels->shape[2];
  resize_tap *tap_h = NULL, *tap_w = NULL;
  resize_span *span_h = NULL, *span_w = NULL;
  ST_TRY(resize_prepare(cu, "argmax_resized", ih, iw, oh, ow, 0, &tap_h, &tap_w,
                        &span_h, &span_w));
  const int64_t total = n * oh * ow;
  resize_argmax<<<st__cuda_grid(total), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)logits->data, (uint8_t *)labels->data, n, (int)c, (int)ih,
      (int)iw, (int)oh, (int)ow, tap_h, tap_w);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}
