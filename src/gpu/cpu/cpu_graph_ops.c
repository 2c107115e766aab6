/* The CPU backend's ops of imported (ONNX) graphs: elementwise maps,
 * broadcasting arithmetic, pooling, ONNX Resize, softmax and the layout ops
 * (transpose, concat, slice, argmax) the teacher executor needs.
 *
 * Every op reduces its tensors to as few dimensions as it can (dropping
 * extent-1 axes and merging axes that stay contiguous), then runs a tight
 * loop over the innermost run with the outer rows spread over the context's
 * OpenMP team. Broadcasting has dedicated loops for the shapes real graphs
 * produce: equal shapes, a scalar operand, and a per-channel operand
 * ([1,C,1,1] against NCHW, which collapses to an inner run with a constant
 * operand). The wrappers in backend.c have checked dtypes, shapes and
 * indices; these functions only do the work (semantics: backend.h).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "gpu/cpu/cpu_impl.h"
#include "gpu/layout.h"

/* Below this many elements an op runs on the calling thread alone: waking
 * the team costs more than the work. */
#define ST_CPU_GRAPH_PARALLEL_MIN_ELEMS 32768
/* Columns per task when softmax or argmax run along a non-innermost axis:
 * the tile's running maxima and sums (6 KiB on the stack) stay in L1 while
 * the axis is walked. */
#define ST_CPU_GRAPH_COLUMN_TILE 512
/* Output rows per task in bilinear resizing: long enough runs of rows for
 * the cached source rows to be reused, short enough that a few planes
 * still split evenly over a team. */
#define ST_CPU_GRAPH_RESIZE_ROWS_PER_TASK 32

/* Team size for an op over `work` elements. */
static int team(st_backend *be, int64_t work) {
  return work >= ST_CPU_GRAPH_PARALLEL_MIN_ELEMS ? st__cpu(be)->threads : 1;
}

/* Row-major strides of a shape. */
/* Product of shape[lo..hi). */
static int64_t extent_product(const int64_t *shape, int lo, int hi) {
  int64_t p = 1;
  for (int d = lo; d < hi; d++)
    p *= shape[d];
  return p;
}

/* ---- unary ---------------------------------------------------------------- */

int st__cpu_unary(st_backend *be, st_unary_kind kind, float alpha, float beta,
                  const st_tensor *x, st_tensor *y) {
  const float *xs = x->data;
  float *ys = y->data;
  int64_t n = st_tensor_numel(x);
  int nt = team(be, n);
  /* Comparisons are written so that NaN propagates, as in PyTorch. */
  switch (kind) {
  case ST_UNARY_RELU:
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++)
      ys[i] = xs[i] < 0.0f ? 0.0f : xs[i];
    break;
  case ST_UNARY_CLIP:
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++) {
      float v = xs[i] < alpha ? alpha : xs[i];
      ys[i] = v > beta ? beta : v;
    }
    break;
  case ST_UNARY_HARDSIGMOID:
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++) {
      float v = alpha * xs[i] + beta;
      v = v < 0.0f ? 0.0f : v;
      ys[i] = v > 1.0f ? 1.0f : v;
    }
    break;
  case ST_UNARY_HARDSWISH:
    /* x * relu6(x + 3) / 6, PyTorch's form: x + 3 is exact where the
     * spec's x / 6 + 1 / 2 would cancel near x = -3. */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++) {
      float v = xs[i] + 3.0f;
      v = v < 0.0f ? 0.0f : v;
      v = v > 6.0f ? 6.0f : v;
      ys[i] = xs[i] * v / 6.0f;
    }
    break;
  case ST_UNARY_SIGMOID:
    /* exp of a non-positive argument only: 1 / (1 + exp(-x)) overflows
     * for very negative x, e / (1 + e) for very positive x. */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++) {
      float v = xs[i];
      float e = expf(-fabsf(v));
      ys[i] = v >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    }
    break;
  default:
    return st_error_set(ST_EINVAL, "cpu unary: unknown kind %d", (int)kind);
  }
  return ST_OK;
}

/* ---- binary with broadcasting --------------------------------------------- */

/* One inner run y[i] = a[i*sa] (op) b[i*sb] with sa, sb each 0 or 1; the
 * op and both strides are fixed per loop so each loop vectorises. */
#define ST__BINARY_RUN(OP)                                                     \
  do {                                                                         \
    if (sa && sb)                                                              \
      for (int64_t i = 0; i < len; i++)                                        \
        y[i] = a[i] OP b[i];                                                   \
    else if (sa) {                                                             \
      float bv = b[0];                                                         \
      for (int64_t i = 0; i < len; i++)                                        \
        y[i] = a[i] OP bv;                                                     \
    } else if (sb) {                                                           \
      float av = a[0];                                                         \
      for (int64_t i = 0; i < len; i++)                                        \
        y[i] = av OP b[i];                                                     \
    } else {                                                                   \
      float v = a[0] OP b[0];                                                  \
      for (int64_t i = 0; i < len; i++)                                        \
        y[i] = v;                                                              \
    }                                                                          \
  } while (0)

static void binary_run(st_binary_kind kind, const float *a, int64_t sa,
                       const float *b, int64_t sb, float *y, int64_t len) {
  switch (kind) {
  case ST_BINARY_ADD:
    ST__BINARY_RUN(+);
    break;
  case ST_BINARY_SUB:
    ST__BINARY_RUN(-);
    break;
  case ST_BINARY_MUL:
    ST__BINARY_RUN(*);
    break;
  case ST_BINARY_DIV:
    ST__BINARY_RUN(/);
    break;
  }
}
#undef ST__BINARY_RUN


int st__cpu_binary(st_backend *be, st_binary_kind kind, const st_tensor *a,
                   const st_tensor *b, st_tensor *y) {
  const float *as = a->data, *bs = b->data;
  float *ys = y->data;
  int64_t n = st_tensor_numel(y);
  if (n == 0)
    return ST_OK;
  int nt = team(be, n);
  int64_t na = st_tensor_numel(a), nb = st_tensor_numel(b);
  /* Equal shapes and scalar operands: one flat run, split into chunks. */
  if ((na == n || na == 1) && (nb == n || nb == 1)) {
    int64_t sa = na == n, sb = nb == n;
    int chunks = nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int c = 0; c < chunks; c++) {
      int64_t lo = n * c / chunks, hi = n * (c + 1) / chunks;
      binary_run(kind, as + lo * sa, sa, bs + lo * sb, sb, ys + lo, hi - lo);
    }
    return ST_OK;
  }
  st__bcast_geom g;
  st__bcast_build(a, b, y, &g);
  int inner = g.ndim - 1;
  int64_t len = g.shape[inner];
  int64_t rows = n / len;
  /* An inner stride other than 0 or 1 cannot happen: the innermost kept
   * axis of a contiguous operand has stride 1 unless it is broadcast. */
  int64_t isa = g.sa[inner], isb = g.sb[inner];
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    int64_t rem = r, oa = 0, ob = 0;
    for (int d = inner - 1; d >= 0; d--) {
      int64_t i = rem % g.shape[d];
      rem /= g.shape[d];
      oa += i * g.sa[d];
      ob += i * g.sb[d];
    }
    binary_run(kind, as + oa, isa, bs + ob, isb, ys + r * len, len);
  }
  return ST_OK;
}

/* ---- pooling -------------------------------------------------------------- */

/* Geometry of one pooling call, shared by the row kernels below. */
typedef struct pool_geom {
  int64_t H, W, OH, OW;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t h_padded_end, w_padded_end; /* ceil_mode windows are clipped here */
  int is_max, include_pad;
} pool_geom;

/* One output of pooling with every tap bounds-checked (the border). */
static float pool_one(const pool_geom *g, const float *xp, int64_t h0,
                      int64_t w0) {
  if (g->is_max) {
    float best = -INFINITY; /* padding never wins: only real cells are read */
    for (int i = 0; i < g->kh; i++) {
      int64_t h = h0 + (int64_t)i * g->dh;
      if (h < 0 || h >= g->H)
        continue;
      const float *xr = xp + h * g->W;
      for (int j = 0; j < g->kw; j++) {
        int64_t w = w0 + (int64_t)j * g->dw;
        if (w < 0 || w >= g->W)
          continue;
        float v = xr[w];
        if (v > best || isnan(v))
          best = v;
      }
    }
    return best;
  }
  int64_t hs = h0, he = h0 + g->kh < g->h_padded_end ? h0 + g->kh
                                                      : g->h_padded_end;
  int64_t ws = w0, we = w0 + g->kw < g->w_padded_end ? w0 + g->kw
                                                      : g->w_padded_end;
  int64_t padded_count = (he - hs) * (we - ws);
  hs = hs < 0 ? 0 : hs;
  ws = ws < 0 ? 0 : ws;
  he = he > g->H ? g->H : he;
  we = we > g->W ? g->W : we;
  float sum = 0.0f;
  for (int64_t h = hs; h < he; h++)
    for (int64_t w = ws; w < we; w++)
      sum += xp[h * g->W + w];
  int64_t count = g->include_pad ? padded_count : (he - hs) * (we - ws);
  return sum / (float)count;
}

/* One output row. Columns whose windows lie inside the input along W are
 * computed tap by tap across the whole run (a branch-free loop per tap,
 * visiting taps in the same row-major order as pool_one, so results are
 * identical); the few border columns go through pool_one. */
static void pool_row(const pool_geom *g, const float *xp, int64_t oh,
                     float *yr) {
  int64_t h0 = oh * g->sh - g->ph;
  int64_t span_w = (int64_t)(g->kw - 1) * g->dw;
  int64_t lo = (g->pw + g->sw - 1) / g->sw;
  int64_t hi = g->W - 1 - span_w + g->pw < 0
                   ? 0
                   : (g->W - 1 - span_w + g->pw) / g->sw + 1;
  hi = hi > g->OW ? g->OW : hi;
  lo = lo > hi ? hi : lo;
  for (int64_t ow = 0; ow < lo; ow++)
    yr[ow] = pool_one(g, xp, h0, ow * g->sw - g->pw);
  for (int64_t ow = hi; ow < g->OW; ow++)
    yr[ow] = pool_one(g, xp, h0, ow * g->sw - g->pw);
  if (lo == hi)
    return;
  const int64_t sw = g->sw;
  float *yi = yr + lo;
  const int64_t n = hi - lo;
  const int64_t col0 = lo * sw - g->pw; /* first tap column of yi[0] */
  if (g->is_max) {
    for (int64_t k = 0; k < n; k++)
      yi[k] = -INFINITY;
    for (int i = 0; i < g->kh; i++) {
      int64_t h = h0 + (int64_t)i * g->dh;
      if (h < 0 || h >= g->H)
        continue;
      for (int j = 0; j < g->kw; j++) {
        const float *xr = xp + h * g->W + col0 + (int64_t)j * g->dw;
        for (int64_t k = 0; k < n; k++) {
          float v = xr[k * sw];
          yi[k] = v > yi[k] || v != v ? v : yi[k]; /* v != v: NaN wins */
        }
      }
    }
    return;
  }
  int64_t hs = h0, he = h0 + g->kh < g->h_padded_end ? h0 + g->kh
                                                      : g->h_padded_end;
  int64_t rows_padded = he - hs;
  hs = hs < 0 ? 0 : hs;
  he = he > g->H ? g->H : he;
  int64_t count = (g->include_pad ? rows_padded : he - hs) * g->kw;
  for (int64_t k = 0; k < n; k++)
    yi[k] = 0.0f;
  for (int64_t h = hs; h < he; h++)
    for (int j = 0; j < g->kw; j++) {
      const float *xr = xp + h * g->W + col0 + j;
      for (int64_t k = 0; k < n; k++)
        yi[k] += xr[k * sw];
    }
  for (int64_t k = 0; k < n; k++)
    yi[k] /= (float)count;
}

int st__cpu_pool2d(st_backend *be, const st_pool2d_params *p,
                   const st_tensor *x, st_tensor *y) {
  const int is_max = p->kind == ST_POOL_MAX;
  const pool_geom g = {
      .H = x->shape[2], .W = x->shape[3],
      .OH = y->shape[2], .OW = y->shape[3],
      .kh = p->kernel[0], .kw = p->kernel[1],
      .sh = p->stride[0], .sw = p->stride[1],
      .ph = p->pad_begin[0], .pw = p->pad_begin[1],
      /* Average pooling has no dilation (the wrapper allows 0 or 1). */
      .dh = is_max ? p->dilation[0] : 1, .dw = is_max ? p->dilation[1] : 1,
      .h_padded_end = x->shape[2] + p->pad_end[0],
      .w_padded_end = x->shape[3] + p->pad_end[1],
      .is_max = is_max, .include_pad = p->count_include_pad};
  const int64_t planes = x->shape[0] * x->shape[1];
  const float *xs = x->data;
  float *ys = y->data;
  int nt = team(be, planes * g.OH * g.OW * g.kh * g.kw);
#pragma omp parallel for collapse(2) num_threads(nt) schedule(static)
  for (int64_t pl = 0; pl < planes; pl++)
    for (int64_t oh = 0; oh < g.OH; oh++)
      pool_row(&g, xs + pl * g.H * g.W, oh, ys + (pl * g.OH + oh) * g.OW);
  return ST_OK;
}

int st__cpu_global_avg_pool(st_backend *be, const st_tensor *x,
                            st_tensor *y) {
  const int64_t planes = x->shape[0] * x->shape[1];
  const int64_t hw = x->shape[2] * x->shape[3];
  const float *xs = x->data;
  float *ys = y->data;
  int nt = team(be, planes * hw);
  /* The sum is taken in double: a plane of a large frame holds ~1e6
   * values, and a float running sum would lose several digits. */
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t pl = 0; pl < planes; pl++) {
    const float *xp = xs + pl * hw;
    double sum = 0.0;
    for (int64_t i = 0; i < hw; i++)
      sum += xp[i];
    ys[pl] = (float)(sum / (double)hw);
  }
  return ST_OK;
}

/* ---- resize --------------------------------------------------------------- */

/* Source coordinate of output index o along an axis, per the ONNX
 * coordinate_transformation_mode. */
static double resize_source(st_resize_coord coord, int64_t o, int64_t in,
                            int64_t out, double scale) {
  switch (coord) {
  case ST_COORD_HALF_PIXEL:
    return ((double)o + 0.5) / scale - 0.5;
  case ST_COORD_PYTORCH_HALF_PIXEL:
    return out > 1 ? ((double)o + 0.5) / scale - 0.5 : 0.0;
  case ST_COORD_ALIGN_CORNERS:
    return out > 1 ? (double)o * (double)(in - 1) / (double)(out - 1) : 0.0;
  case ST_COORD_ASYMMETRIC:
    return (double)o / scale;
  }
  return 0.0;
}

/* Nearest input index for a source coordinate, clamped to the input. */
static int64_t resize_nearest(st_nearest_mode mode, double src, int64_t in) {
  double f = floor(src);
  int64_t i;
  switch (mode) {
  case ST_NEAREST_ROUND_PREFER_FLOOR:
    i = (int64_t)(src - f == 0.5 ? f : round(src));
    break;
  case ST_NEAREST_ROUND_PREFER_CEIL:
    i = (int64_t)(src - f == 0.5 ? f + 1.0 : round(src));
    break;
  case ST_NEAREST_FLOOR:
    i = (int64_t)f;
    break;
  default:
    i = (int64_t)ceil(src);
    break;
  }
  return i < 0 ? 0 : i >= in ? in - 1 : i;
}

/* The two input taps of each output index along an axis and the weight of
 * the second; nearest mode uses i0 only. Computed once per call. */
typedef struct resize_tap {
  int64_t i0, i1;
  float l1; /* weight of i1; i0 gets 1 - l1 */
} resize_tap;

static void resize_taps(const st_resize_params *p, int axis, int64_t in,
                        int64_t out, resize_tap *taps) {
  for (int64_t o = 0; o < out; o++) {
    double src = resize_source(p->coord, o, in, out, p->scale[axis]);
    resize_tap t;
    if (p->mode == ST_RESIZE_NEAREST) {
      t.i0 = t.i1 = resize_nearest(p->nearest, src, in);
      t.l1 = 0.0f;
    } else {
      /* Clamping the coordinate is the ONNX reference's edge padding. */
      src = src < 0.0 ? 0.0 : src > (double)(in - 1) ? (double)(in - 1) : src;
      t.i0 = (int64_t)src;
      t.i1 = t.i0 + 1 < in ? t.i0 + 1 : in - 1;
      t.l1 = (float)(src - (double)t.i0);
    }
    taps[o] = t;
  }
}

/* Source row `row` of a plane blended along W into one of the two cached
 * rows of a task, evicting the slot that does not hold `keep`. */
static const float *resize_hrow(const float *plane, int64_t W,
                                const resize_tap *tw, int64_t OW, int64_t row,
                                int64_t keep, float *slot[2],
                                int64_t cached[2]) {
  for (int k = 0; k < 2; k++)
    if (cached[k] == row)
      return slot[k];
  int k = cached[0] == keep ? 1 : 0;
  const float *r = plane + row * W;
  float *out = slot[k];
  for (int64_t ow = 0; ow < OW; ow++) {
    float w1 = tw[ow].l1, w0 = 1.0f - w1;
    out[ow] = w0 * r[tw[ow].i0] + w1 * r[tw[ow].i1];
  }
  cached[k] = row;
  return out;
}

int st__cpu_resize(st_backend *be, const st_resize_params *p,
                   const st_tensor *x, st_tensor *y) {
  const int64_t H = x->shape[2], W = x->shape[3];
  const int64_t OH = y->shape[2], OW = y->shape[3];
  const int64_t planes = x->shape[0] * x->shape[1];
  resize_tap *taps = malloc((size_t)(OH + OW) * sizeof *taps);
  if (!taps)
    return st_error_set(ST_ENOMEM, "cpu resize: out of memory");
  resize_tap *th = taps, *tw = taps + OH;
  resize_taps(p, 0, H, OH, th);
  resize_taps(p, 1, W, OW, tw);
  const float *xs = x->data;
  float *ys = y->data;
  int nt = team(be, planes * OH * OW);
  if (p->mode == ST_RESIZE_NEAREST) {
#pragma omp parallel for collapse(2) num_threads(nt) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++)
      for (int64_t oh = 0; oh < OH; oh++) {
        const float *r0 = xs + (pl * H + th[oh].i0) * W;
        float *yr = ys + (pl * OH + oh) * OW;
        for (int64_t ow = 0; ow < OW; ow++)
          yr[ow] = r0[tw[ow].i0];
      }
    free(taps);
    return ST_OK;
  }
  /* Bilinear in PyTorch's order of operations: each source row blended
   * along W, then the two rows blended along H. A task owns a block of
   * consecutive output rows of one plane and keeps the last two W-blended
   * source rows, which neighbouring output rows share when upsampling. */
  const int64_t blocks = (OH + ST_CPU_GRAPH_RESIZE_ROWS_PER_TASK - 1) /
                         ST_CPU_GRAPH_RESIZE_ROWS_PER_TASK;
  int failed = 0;
#pragma omp parallel num_threads(nt)
  {
    float *buf = malloc((size_t)(2 * OW) * sizeof *buf);
    if (!buf) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t task = 0; task < planes * blocks; task++) {
      if (!buf)
        continue;
      int64_t pl = task / blocks, b = task % blocks;
      int64_t oh_end = (b + 1) * ST_CPU_GRAPH_RESIZE_ROWS_PER_TASK;
      oh_end = oh_end < OH ? oh_end : OH;
      const float *plane = xs + pl * H * W;
      float *slot[2] = {buf, buf + OW};
      int64_t cached[2] = {-1, -1};
      for (int64_t oh = b * ST_CPU_GRAPH_RESIZE_ROWS_PER_TASK; oh < oh_end;
           oh++) {
        int64_t i0 = th[oh].i0, i1 = th[oh].i1;
        const float *r0 =
            resize_hrow(plane, W, tw, OW, i0, i1, slot, cached);
        const float *r1 =
            resize_hrow(plane, W, tw, OW, i1, i0, slot, cached);
        float h1 = th[oh].l1, h0 = 1.0f - h1;
        float *yr = ys + (pl * OH + oh) * OW;
        for (int64_t ow = 0; ow < OW; ow++)
          yr[ow] = h0 * r0[ow] + h1 * r1[ow];
      }
    }
    free(buf);
  }
  free(taps);
  if (failed)
    return st_error_set(ST_ENOMEM, "cpu resize: out of memory");
  return ST_OK;
}

/* ---- softmax and argmax along an axis ------------------------------------- */

int st__cpu_softmax(st_backend *be, int axis, const st_tensor *x,
                    st_tensor *y) {
  const int64_t outer = extent_product(x->shape, 0, axis);
  const int64_t len = x->shape[axis];
  const int64_t inner = extent_product(x->shape, axis + 1, x->ndim);
  const float *xs = x->data;
  float *ys = y->data;
  if (outer * len * inner == 0)
    return ST_OK;
  int nt = team(be, outer * len * inner);
  if (inner == 1) {
    /* Innermost axis: each row is contiguous. */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t o = 0; o < outer; o++) {
      const float *xr = xs + o * len;
      float *yr = ys + o * len;
      float mx = xr[0];
      for (int64_t i = 1; i < len; i++)
        mx = xr[i] > mx ? xr[i] : mx;
      double sum = 0.0;
      for (int64_t i = 0; i < len; i++) {
        yr[i] = expf(xr[i] - mx);
        sum += yr[i];
      }
      float inv = (float)(1.0 / sum);
      for (int64_t i = 0; i < len; i++)
        yr[i] *= inv;
    }
    return ST_OK;
  }
  /* Another axis: tiles of contiguous columns, walked along the axis with
   * the running max and sum of the tile in two stack rows. */
  const int64_t tiles = (inner + ST_CPU_GRAPH_COLUMN_TILE - 1) /
                        ST_CPU_GRAPH_COLUMN_TILE;
#pragma omp parallel for collapse(2) num_threads(nt) schedule(static)
  for (int64_t o = 0; o < outer; o++) {
    for (int64_t t = 0; t < tiles; t++) {
      float mx[ST_CPU_GRAPH_COLUMN_TILE];
      double sum[ST_CPU_GRAPH_COLUMN_TILE];
      int64_t c0 = t * ST_CPU_GRAPH_COLUMN_TILE;
      int64_t cols = inner - c0 < ST_CPU_GRAPH_COLUMN_TILE
                         ? inner - c0
                         : ST_CPU_GRAPH_COLUMN_TILE;
      const float *xb = xs + o * len * inner + c0;
      float *yb = ys + o * len * inner + c0;
      memcpy(mx, xb, (size_t)cols * sizeof *mx);
      for (int64_t i = 1; i < len; i++) {
        const float *xr = xb + i * inner;
        for (int64_t c = 0; c < cols; c++)
          mx[c] = xr[c] > mx[c] ? xr[c] : mx[c];
      }
      for (int64_t c = 0; c < cols; c++)
        sum[c] = 0.0;
      for (int64_t i = 0; i < len; i++) {
        const float *xr = xb + i * inner;
        float *yr = yb + i * inner;
        for (int64_t c = 0; c < cols; c++) {
          yr[c] = expf(xr[c] - mx[c]);
          sum[c] += yr[c];
        }
      }
      for (int64_t c = 0; c < cols; c++)
        mx[c] = (float)(1.0 / sum[c]); /* reused for the reciprocal */
      for (int64_t i = 0; i < len; i++) {
        float *yr = yb + i * inner;
        for (int64_t c = 0; c < cols; c++)
          yr[c] *= mx[c];
      }
    }
  }
  return ST_OK;
}

int st__cpu_argmax_axis(st_backend *be, int axis, const st_tensor *x,
                        st_tensor *y) {
  const int64_t outer = extent_product(x->shape, 0, axis);
  const int64_t len = x->shape[axis];
  const int64_t inner = extent_product(x->shape, axis + 1, x->ndim);
  const float *xs = x->data;
  int64_t *ys = y->data;
  if (outer * inner == 0)
    return ST_OK;
  int nt = team(be, outer * len * inner);
  /* Strictly greater keeps the first maximum; a NaN wins over numbers
   * (the first NaN), as in PyTorch. */
  if (inner == 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t o = 0; o < outer; o++) {
      const float *xr = xs + o * len;
      float best = xr[0];
      int64_t arg = 0;
      for (int64_t i = 1; i < len && !isnan(best); i++)
        if (xr[i] > best || isnan(xr[i])) {
          best = xr[i];
          arg = i;
        }
      ys[o] = arg;
    }
    return ST_OK;
  }
  const int64_t tiles = (inner + ST_CPU_GRAPH_COLUMN_TILE - 1) /
                        ST_CPU_GRAPH_COLUMN_TILE;
#pragma omp parallel for collapse(2) num_threads(nt) schedule(static)
  for (int64_t o = 0; o < outer; o++) {
    for (int64_t t = 0; t < tiles; t++) {
      float best[ST_CPU_GRAPH_COLUMN_TILE];
      int64_t c0 = t * ST_CPU_GRAPH_COLUMN_TILE;
      int64_t cols = inner - c0 < ST_CPU_GRAPH_COLUMN_TILE
                         ? inner - c0
                         : ST_CPU_GRAPH_COLUMN_TILE;
      const float *xb = xs + o * len * inner + c0;
      int64_t *yb = ys + o * inner + c0;
      memcpy(best, xb, (size_t)cols * sizeof *best);
      for (int64_t c = 0; c < cols; c++)
        yb[c] = 0;
      for (int64_t i = 1; i < len; i++) {
        const float *xr = xb + i * inner;
        for (int64_t c = 0; c < cols; c++)
          if (xr[c] > best[c] || (isnan(xr[c]) && !isnan(best[c]))) {
            best[c] = xr[c];
            yb[c] = i;
          }
      }
    }
  }
  return ST_OK;
}

/* ---- layout --------------------------------------------------------------- */

int st__cpu_transpose(st_backend *be, const int *perm, const st_tensor *x,
                      st_tensor *y) {
  int64_t n = st_tensor_numel(x);
  if (n == 0)
    return ST_OK;
  int64_t xstr[ST_MAX_DIMS];
  st__strides_of(x->shape, x->ndim, xstr);
  /* Output axes with the source stride of each; extent-1 axes dropped and
   * runs of consecutive source axes merged, so NCHW -> NHWC becomes a
   * 3-D [N, HW, C] gather. */
  int64_t shape[ST_MAX_DIMS], sstr[ST_MAX_DIMS];
  int nd = 0, prev_src = -2;
  for (int d = 0; d < y->ndim; d++) {
    int s = perm[d];
    if (x->shape[s] == 1)
      continue;
    if (nd > 0 && s == prev_src + 1) {
      shape[nd - 1] *= x->shape[s];
      sstr[nd - 1] = xstr[s];
    } else {
      shape[nd] = x->shape[s];
      sstr[nd] = xstr[s];
      nd++;
    }
    prev_src = s;
  }
  const float *xs = x->data;
  float *ys = y->data;
  if (nd <= 1) { /* the identity up to extent-1 axes */
    memcpy(ys, xs, (size_t)n * sizeof *ys);
    return ST_OK;
  }
  int inner = nd - 1;
  int64_t len = shape[inner], step = sstr[inner];
  int64_t rows = n / len;
  int nt = team(be, n);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    int64_t rem = r, off = 0;
    for (int d = inner - 1; d >= 0; d--) {
      off += rem % shape[d] * sstr[d];
      rem /= shape[d];
    }
    const float *src = xs + off;
    float *dst = ys + r * len;
    for (int64_t i = 0; i < len; i++)
      dst[i] = src[i * step];
  }
  return ST_OK;
}

int st__cpu_concat(st_backend *be, int axis, const st_tensor *const *inputs,
                   int count, st_tensor *y) {
  const int64_t outer = extent_product(y->shape, 0, axis);
  const int64_t inner = extent_product(y->shape, axis + 1, y->ndim);
  const int64_t yrow = y->shape[axis] * inner;
  float *ys = y->data;
  int nt = team(be, st_tensor_numel(y));
  int64_t col = 0; /* where the current input starts within a y row */
  for (int k = 0; k < count; k++) {
    const float *src = inputs[k]->data;
    int64_t run = inputs[k]->shape[axis] * inner;
    if (run > 0) {
#pragma omp parallel for num_threads(nt) schedule(static)
      for (int64_t o = 0; o < outer; o++)
        memcpy(ys + o * yrow + col, src + o * run, (size_t)run * sizeof *ys);
    }
    col += run;
  }
  return ST_OK;
}

int st__cpu_slice(st_backend *be, const int64_t *starts, const int64_t *steps,
                  const st_tensor *x, st_tensor *y) {
  int64_t n = st_tensor_numel(y);
  if (n == 0)
    return ST_OK;
  int64_t xstr[ST_MAX_DIMS];
  st__strides_of(x->shape, x->ndim, xstr);
  /* Offset of y's first element in x, and x's stride per step of each y
   * axis (negative for negative steps). */
  int64_t base = 0, ystep[ST_MAX_DIMS], yshape[ST_MAX_DIMS];
  int nd = 0;
  for (int d = 0; d < x->ndim; d++) {
    base += starts[d] * xstr[d];
    if (y->shape[d] == 1)
      continue;
    yshape[nd] = y->shape[d];
    ystep[nd] = steps[d] * xstr[d];
    nd++;
  }
  const float *xs = (const float *)x->data + base;
  float *ys = y->data;
  if (nd == 0) {
    ys[0] = xs[0];
    return ST_OK;
  }
  int inner = nd - 1;
  int64_t len = yshape[inner], step = ystep[inner];
  int64_t rows = n / len;
  int nt = team(be, n);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    int64_t rem = r, off = 0;
    for (int d = inner - 1; d >= 0; d--) {
      off += rem % yshape[d] * ystep[d];
      rem /= yshape[d];
    }
    const float *src = xs + off;
    float *dst = ys + r * len;
    if (step == 1)
      memcpy(dst, src, (size_t)len * sizeof *dst);
    else
      for (int64_t i = 0; i < len; i++)
        dst[i] = src[i * step];
  }
  return ST_OK;
}
