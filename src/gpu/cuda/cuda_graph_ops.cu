// The CUDA backend's ops of imported (ONNX) graphs: elementwise maps,
// broadcasting arithmetic, pooling, ONNX Resize, softmax, argmax and the
// layout ops (transpose, concat, slice) the teacher executor needs.
//
// Each kernel computes one output element (or one softmax/argmax column, or
// one global-pooling plane) exactly as cpu_graph_ops.c does, in the same
// precision and the same order of operations: float products and sums are
// spelled with the _rn intrinsics so nvcc cannot contract them into FMAs the
// CPU does not use, resize coordinates are computed in double with the same
// formulas (so nearest-mode rounding picks the same pixel), and sums the CPU
// takes in double (softmax denominators, global averages) are taken in
// double here. What can still differ is expf (CUDA's is within 2 ulp of
// glibc's) and the order of the double sum of a global average. Every loop
// is a grid-stride loop over int64 indices on the context's stream; nothing
// here allocates device memory except the per-call resize taps, which live
// in the context's scratch buffer. The wrappers in backend.c have checked
// dtypes, shapes and indices (semantics: backend.h).
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include "gpu/cuda/cuda_impl.h"

extern "C" {
#include "gpu/layout.h"
}

// First index and stride of a grid-stride loop, in int64 so that tensors
// past 2^31 elements index correctly.
#define ST_GRID_START ((int64_t)blockIdx.x * blockDim.x + threadIdx.x)
#define ST_GRID_STEP ((int64_t)gridDim.x * blockDim.x)

// cudaMemcpy2DAsync refuses pitches above the device's maximum pitch
// (cudaDevAttrMaxPitch, INT_MAX bytes on every current GPU); past it concat
// copies row by row instead.
#define ST_CUDA_MAX_COPY_PITCH_BYTES ((size_t)INT_MAX)

// Blocks of the global average pool: one per plane up to this many, the
// rest taken by a grid-stride loop over planes (gridDim.x's portable cap).
#define ST_CUDA_MAX_PLANE_BLOCKS 65535
// Rows of a resize given one grid row each, the rest taken by a grid-stride
// loop (gridDim.y's cap).
#define ST_CUDA_MAX_ROW_BLOCKS 65535

// Row-major strides of a shape.

// Product of shape[lo..hi).
static int64_t extent_product(const int64_t *shape, int lo, int hi) {
  int64_t p = 1;
  for (int d = lo; d < hi; d++)
    p *= shape[d];
  return p;
}

// ---- unary -----------------------------------------------------------------

// y = f(x); x may equal y (each element is read before the same thread
// writes it). Comparisons are written as the CPU writes them, so NaN and -0
// come out the same.
static __global__ void unary_kernel(st_unary_kind kind, float alpha,
                                    float beta, const float *x, float *y,
                                    int64_t n) {
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP) {
    const float xv = x[i];
    float out;
    switch (kind) {
    case ST_UNARY_RELU:
      out = xv < 0.0f ? 0.0f : xv;
      break;
    case ST_UNARY_CLIP: {
      float v = xv < alpha ? alpha : xv;
      out = v > beta ? beta : v;
      break;
    }
    case ST_UNARY_HARDSIGMOID: {
      float v = __fadd_rn(__fmul_rn(alpha, xv), beta);
      v = v < 0.0f ? 0.0f : v;
      out = v > 1.0f ? 1.0f : v;
      break;
    }
    case ST_UNARY_HARDSWISH: {
      // x * relu6(x + 3) / 6, PyTorch's form, as the CPU.
      float v = __fadd_rn(xv, 3.0f);
      v = v < 0.0f ? 0.0f : v;
      v = v > 6.0f ? 6.0f : v;
      out = __fdiv_rn(__fmul_rn(xv, v), 6.0f);
      break;
    }
    default: { // ST_UNARY_SIGMOID (the host refuses other kinds)
      // exp of a non-positive argument only, as the CPU.
      const float e = expf(-fabsf(xv));
      const float den = __fadd_rn(1.0f, e);
      out = xv >= 0.0f ? __fdiv_rn(1.0f, den) : __fdiv_rn(e, den);
      break;
    }
    }
    y[i] = out;
  }
}

extern "C" int st__cuda_unary(st_backend *be, st_unary_kind kind, float alpha,
                              float beta, const st_tensor *x, st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  switch (kind) {
  case ST_UNARY_RELU:
  case ST_UNARY_CLIP:
  case ST_UNARY_HARDSIGMOID:
  case ST_UNARY_HARDSWISH:
  case ST_UNARY_SIGMOID:
    break;
  default:
    return st_error_set(ST_EINVAL, "cuda unary: unknown kind %d", (int)kind);
  }
  const int64_t n = st_tensor_numel(x);
  if (n == 0)
    return ST_OK;
  unary_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
      kind, alpha, beta, (const float *)x->data, (float *)y->data, n);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// ---- binary with broadcasting ----------------------------------------------


// y[i] = a[oa(i)] (op) b[ob(i)], the offsets from decomposing i over the
// reduced output extents. y may equal an operand of y's shape: that
// operand's offset is i itself, read before the same thread writes it.
// One reduced axis (equal shapes, or a scalar operand) needs no 64-bit
// division, which the GPU runs as a software routine.
static __global__ void binary_kernel(st_binary_kind kind, st__bcast_geom g,
                                     const float *a, const float *b, float *y,
                                     int64_t n) {
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP) {
    int64_t oa = 0, ob = 0;
    if (g.ndim == 1) {
      oa = i * g.sa[0];
      ob = i * g.sb[0];
    } else {
      int64_t rem = i;
      for (int d = g.ndim - 1; d >= 0; d--) {
        const int64_t idx = rem % g.shape[d];
        rem /= g.shape[d];
        oa += idx * g.sa[d];
        ob += idx * g.sb[d];
      }
    }
    const float av = a[oa], bv = b[ob];
    float out;
    switch (kind) {
    case ST_BINARY_ADD:
      out = __fadd_rn(av, bv);
      break;
    case ST_BINARY_SUB:
      out = __fsub_rn(av, bv);
      break;
    case ST_BINARY_MUL:
      out = __fmul_rn(av, bv);
      break;
    default: // ST_BINARY_DIV (the host refuses other kinds)
      out = __fdiv_rn(av, bv);
      break;
    }
    y[i] = out;
  }
}

extern "C" int st__cuda_binary(st_backend *be, st_binary_kind kind,
                               const st_tensor *a, const st_tensor *b,
                               st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  switch (kind) {
  case ST_BINARY_ADD:
  case ST_BINARY_SUB:
  case ST_BINARY_MUL:
  case ST_BINARY_DIV:
    break;
  default:
    return st_error_set(ST_EINVAL, "cuda binary: unknown kind %d", (int)kind);
  }
  const int64_t n = st_tensor_numel(y);
  if (n == 0)
    return ST_OK;
  st__bcast_geom g;
  st__bcast_build(a, b, y, &g);
  binary_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
      kind, g, (const float *)a->data, (const float *)b->data,
      (float *)y->data, n);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// ---- pooling ---------------------------------------------------------------

// Geometry of one pooling call (cpu_graph_ops.c's pool_geom), by value.
typedef struct pool_geom {
  int64_t H, W, OH, OW;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t h_padded_end, w_padded_end; // ceil_mode windows are clipped here
  int is_max, include_pad;
} pool_geom;

// One thread per output element, the window walked as the CPU's pool_one:
// row-major taps, padding never read (so never a maximum), NaN wins a max,
// an average divides by the clipped window's count (padding cells included
// or not per include_pad). The CPU's interior fast path visits the taps in
// the same order, so results agree to the last bit.
static __global__ void pool2d_kernel(pool_geom g, const float *x, float *y,
                                     int64_t n) {
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP) {
    const int64_t ow = i % g.OW;
    const int64_t oh = (i / g.OW) % g.OH;
    const int64_t pl = i / (g.OW * g.OH);
    const float *xp = x + pl * g.H * g.W;
    const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
    if (g.is_max) {
      float best = -INFINITY;
      for (int a = 0; a < g.kh; a++) {
        const int64_t h = h0 + (int64_t)a * g.dh;
        if (h < 0 || h >= g.H)
          continue;
        const float *xr = xp + h * g.W;
        for (int b = 0; b < g.kw; b++) {
          const int64_t w = w0 + (int64_t)b * g.dw;
          if (w < 0 || w >= g.W)
            continue;
          const float v = xr[w];
          if (v > best || isnan(v))
            best = v;
        }
      }
      y[i] = best;
      continue;
    }
    int64_t hs = h0, he = h0 + g.kh < g.h_padded_end ? h0 + g.kh
                                                      : g.h_padded_end;
    int64_t ws = w0, we = w0 + g.kw < g.w_padded_end ? w0 + g.kw
                                                      : g.w_padded_end;
    const int64_t padded_count = (he - hs) * (we - ws);
    hs = hs < 0 ? 0 : hs;
    ws = ws < 0 ? 0 : ws;
    he = he > g.H ? g.H : he;
    we = we > g.W ? g.W : we;
    float sum = 0.0f;
    for (int64_t h = hs; h < he; h++)
      for (int64_t w = ws; w < we; w++)
        sum = __fadd_rn(sum, xp[h * g.W + w]);
    const int64_t count = g.include_pad ? padded_count : (he - hs) * (we - ws);
    y[i] = __fdiv_rn(sum, (float)count);
  }
}

extern "C" int st__cuda_pool2d(st_backend *be, const st_pool2d_params *p,
                               const st_tensor *x, st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int is_max = p->kind == ST_POOL_MAX;
  pool_geom g;
  g.H = x->shape[2];
  g.W = x->shape[3];
  g.OH = y->shape[2];
  g.OW = y->shape[3];
  g.kh = p->kernel[0];
  g.kw = p->kernel[1];
  g.sh = p->stride[0];
  g.sw = p->stride[1];
  g.ph = p->pad_begin[0];
  g.pw = p->pad_begin[1];
  // Average pooling has no dilation (the wrapper allows 0 or 1).
  g.dh = is_max ? p->dilation[0] : 1;
  g.dw = is_max ? p->dilation[1] : 1;
  g.h_padded_end = x->shape[2] + p->pad_end[0];
  g.w_padded_end = x->shape[3] + p->pad_end[1];
  g.is_max = is_max;
  g.include_pad = p->count_include_pad;
  const int64_t n = st_tensor_numel(y);
  if (n == 0)
    return ST_OK;
  pool2d_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
      g, (const float *)x->data, (float *)y->data, n);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// One block per plane: each thread sums a strided share of the plane in
// double (the CPU's precision: a plane of a large frame holds ~1e6 values),
// then a shared-memory tree adds the shares. blockDim.x is ST_CUDA_BLOCK, a
// power of two.
static __global__ void global_avg_pool_kernel(const float *x, float *y,
                                              int64_t planes, int64_t hw) {
  __shared__ double part[ST_CUDA_BLOCK];
  for (int64_t pl = blockIdx.x; pl < planes; pl += gridDim.x) {
    const float *xp = x + pl * hw;
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x)
      sum += (double)xp[i];
    part[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
      if (threadIdx.x < half)
        part[threadIdx.x] += part[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0)
      y[pl] = (float)(part[0] / (double)hw);
    // part[0] is read above before any thread overwrites it next plane.
    __syncthreads();
  }
}

extern "C" int st__cuda_global_avg_pool(st_backend *be, const st_tensor *x,
                                        st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t planes = x->shape[0] * x->shape[1];
  const int64_t hw = x->shape[2] * x->shape[3];
  // Empty planes (hw 0) give 0.0 / 0.0 = NaN, as on the CPU.
  if (planes == 0)
    return ST_OK;
  const unsigned blocks = (unsigned)(planes < ST_CUDA_MAX_PLANE_BLOCKS
                                         ? planes
                                         : ST_CUDA_MAX_PLANE_BLOCKS);
  global_avg_pool_kernel<<<blocks, ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)x->data, (float *)y->data, planes, hw);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// ---- resize ----------------------------------------------------------------

// Everything a resize thread needs, by value.
typedef struct resize_geom {
  int64_t H, W, OH, OW;
  double scale_h, scale_w;
  int mode, coord, nearest; // st_resize_mode, st_resize_coord, st_nearest_mode
} resize_geom;

// Source coordinate of output index o along an axis, in double with the
// CPU's formulas (resize_source in cpu_graph_ops.c).
static __device__ double resize_source(int coord, int64_t o, int64_t in,
                                       int64_t out, double scale) {
  switch (coord) {
  case ST_COORD_HALF_PIXEL:
    return __dsub_rn(__ddiv_rn(__dadd_rn((double)o, 0.5), scale), 0.5);
  case ST_COORD_PYTORCH_HALF_PIXEL:
    return out > 1
               ? __dsub_rn(__ddiv_rn(__dadd_rn((double)o, 0.5), scale), 0.5)
               : 0.0;
  case ST_COORD_ALIGN_CORNERS:
    return out > 1 ? __ddiv_rn(__dmul_rn((double)o, (double)(in - 1)),
                               (double)(out - 1))
                   : 0.0;
  case ST_COORD_ASYMMETRIC:
    return __ddiv_rn((double)o, scale);
  }
  return 0.0;
}

// Nearest input index for a source coordinate, clamped to the input
// (resize_nearest in cpu_graph_ops.c; round() is half away from zero in
// both).
static __device__ int64_t resize_nearest(int mode, double src, int64_t in) {
  const double f = floor(src);
  int64_t i;
  switch (mode) {
  case ST_NEAREST_ROUND_PREFER_FLOOR:
    i = (int64_t)(__dsub_rn(src, f) == 0.5 ? f : round(src));
    break;
  case ST_NEAREST_ROUND_PREFER_CEIL:
    i = (int64_t)(__dsub_rn(src, f) == 0.5 ? __dadd_rn(f, 1.0) : round(src));
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

// One output index's taps along an axis (resize_taps in cpu_graph_ops.c):
// nearest reads i0 only; linear blends i0 and i1 with weight l1 on i1.
typedef struct onnx_resize_tap {
  int i0, i1;
  float l1;
} onnx_resize_tap;

// The two taps of a linear resize along an axis and the weight of the
// second (resize_taps in cpu_graph_ops.c): the coordinate clamped to the
// input, as ONNX's reference pads the edge.
static __device__ onnx_resize_tap resize_linear_tap(double src, int64_t in) {
  src = src < 0.0 ? 0.0 : src > (double)(in - 1) ? (double)(in - 1) : src;
  onnx_resize_tap t;
  t.i0 = (int)src;
  t.i1 = t.i0 + 1 < in ? t.i0 + 1 : (int)(in - 1);
  t.l1 = (float)__dsub_rn(src, (double)t.i0);
  return t;
}

// w0 * p + w1 * q with w0 = 1 - w1, rounded after each operation as the
// CPU's blend is.
static __device__ float blend(float p, float q, float w1) {
  const float w0 = __fsub_rn(1.0f, w1);
  return __fadd_rn(__fmul_rn(w0, p), __fmul_rn(w1, q));
}

// The taps of every output row, then of every output column, one thread
// per index: the double arithmetic of the source coordinates runs OH + OW
// times per call instead of twice per output element (FP64 runs at 1/32
// to 1/64 of the float rate on consumer and inference GPUs).
static __global__ void resize_taps_kernel(resize_geom g, onnx_resize_tap *th,
                                          onnx_resize_tap *tw) {
  const int64_t items = g.OH + g.OW;
  for (int64_t t = ST_GRID_START; t < items; t += ST_GRID_STEP) {
    const int along_w = t >= g.OH;
    const int64_t o = along_w ? t - g.OH : t;
    const int64_t in = along_w ? g.W : g.H, out = along_w ? g.OW : g.OH;
    const double src =
        resize_source(g.coord, o, in, out, along_w ? g.scale_w : g.scale_h);
    onnx_resize_tap tap;
    if (g.mode == ST_RESIZE_NEAREST) {
      tap.i0 = tap.i1 = (int)resize_nearest(g.nearest, src, in);
      tap.l1 = 0.0f;
    } else {
      tap = resize_linear_tap(src, in);
    }
    (along_w ? tw : th)[o] = tap;
  }
}

// Grid y walks the output rows of every plane, grid x the columns of one,
// so a thread divides once per row, not per element. Bilinear follows
// PyTorch's (and the CPU's) order: each of the two source rows blended
// along W, then the two results blended along H.
static __global__ void resize_kernel(resize_geom g, int64_t rows,
                                     const onnx_resize_tap *th,
                                     const onnx_resize_tap *tw,
                                     const float *x, float *y) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t pl = row / g.OH, oh = row - pl * g.OH;
    const float *xp = x + pl * g.H * g.W;
    const onnx_resize_tap a = th[oh];
    const float *r0 = xp + (int64_t)a.i0 * g.W, *r1 = xp + (int64_t)a.i1 * g.W;
    float *yr = y + row * g.OW;
    for (int64_t ow = ST_GRID_START; ow < g.OW; ow += ST_GRID_STEP) {
      const onnx_resize_tap b = tw[ow];
      if (g.mode == ST_RESIZE_NEAREST) {
        yr[ow] = r0[b.i0];
        continue;
      }
      const float top = blend(r0[b.i0], r0[b.i1], b.l1);
      const float bottom = blend(r1[b.i0], r1[b.i1], b.l1);
      yr[ow] = blend(top, bottom, a.l1);
    }
  }
}

extern "C" int st__cuda_resize(st_backend *be, const st_resize_params *p,
                               const st_tensor *x, st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  resize_geom g;
  g.H = x->shape[2];
  g.W = x->shape[3];
  g.OH = y->shape[2];
  g.OW = y->shape[3];
  g.scale_h = p->scale[0];
  g.scale_w = p->scale[1];
  g.mode = (int)p->mode;
  g.coord = (int)p->coord;
  g.nearest = (int)p->nearest;
  if (st_tensor_numel(y) == 0)
    return ST_OK;
  // Tap indices are ints: an axis of 2^31 inputs is far past any frame.
  if (g.H > INT_MAX || g.W > INT_MAX)
    return st_error_set(ST_ERANGE, "cuda resize: input of %lld x %lld",
                        (long long)g.H, (long long)g.W);
  void *scratch = NULL;
  ST_TRY(st__cuda_scratch(cu, (size_t)(g.OH + g.OW) * sizeof(onnx_resize_tap),
                          &scratch));
  onnx_resize_tap *th = (onnx_resize_tap *)scratch, *tw = th + g.OH;
  resize_taps_kernel<<<st__cuda_grid(g.OH + g.OW), ST_CUDA_BLOCK, 0,
                       cu->stream>>>(g, th, tw);
  ST_CUDA_LAUNCHED();
  const int64_t rows = x->shape[0] * x->shape[1] * g.OH;
  const dim3 grid(st__cuda_grid(g.OW),
                  (unsigned)(rows < ST_CUDA_MAX_ROW_BLOCKS
                                 ? rows
                                 : ST_CUDA_MAX_ROW_BLOCKS));
  resize_kernel<<<grid, ST_CUDA_BLOCK, 0, cu->stream>>>(
      g, rows, th, tw, (const float *)x->data, (float *)y->data);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// ---- softmax and argmax along an axis --------------------------------------

// One thread per (outer, inner) column, walking the axis with stride
// `inner` (consecutive threads take consecutive columns, so reads coalesce
// unless the axis is innermost). As the CPU: the float maximum subtracted,
// expf in float, the sum of the float exponentials in double, one float
// reciprocal multiplied in. x may equal y: each element is read before the
// same thread writes it, and only y is read afterwards.
static __global__ void softmax_kernel(const float *x, float *y, int64_t outer,
                                      int64_t len, int64_t inner) {
  const int64_t cols = outer * inner;
  for (int64_t t = ST_GRID_START; t < cols; t += ST_GRID_STEP) {
    const int64_t o = t / inner, c = t % inner;
    const float *xc = x + o * len * inner + c;
    float *yc = y + o * len * inner + c;
    float mx = xc[0];
    for (int64_t i = 1; i < len; i++) {
      const float v = xc[i * inner];
      mx = v > mx ? v : mx;
    }
    double sum = 0.0;
    for (int64_t i = 0; i < len; i++) {
      const float e = expf(__fsub_rn(xc[i * inner], mx));
      yc[i * inner] = e;
      sum += (double)e;
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < len; i++)
      yc[i * inner] = __fmul_rn(yc[i * inner], inv);
  }
}

extern "C" int st__cuda_softmax(st_backend *be, int axis, const st_tensor *x,
                                st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t outer = extent_product(x->shape, 0, axis);
  const int64_t len = x->shape[axis];
  const int64_t inner = extent_product(x->shape, axis + 1, x->ndim);
  if (outer * len * inner == 0)
    return ST_OK;
  softmax_kernel<<<st__cuda_grid(outer * inner), ST_CUDA_BLOCK, 0,
                   cu->stream>>>((const float *)x->data, (float *)y->data,
                                 outer, len, inner);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// One thread per column as softmax. Strictly greater keeps the first
// maximum; the first NaN wins over numbers and later NaNs, as the CPU and
// PyTorch.
static __global__ void argmax_kernel(const float *x, int64_t *y,
                                     int64_t outer, int64_t len,
                                     int64_t inner) {
  const int64_t cols = outer * inner;
  for (int64_t t = ST_GRID_START; t < cols; t += ST_GRID_STEP) {
    const int64_t o = t / inner, c = t % inner;
    const float *xc = x + o * len * inner + c;
    float best = xc[0];
    int64_t arg = 0;
    for (int64_t i = 1; i < len; i++) {
      const float v = xc[i * inner];
      if (st__cuda_argmax_takes(v, best)) {
        best = v;
        arg = i;
      }
    }
    y[o * inner + c] = arg;
  }
}

extern "C" int st__cuda_argmax_axis(st_backend *be, int axis,
                                    const st_tensor *x, st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t outer = extent_product(x->shape, 0, axis);
  const int64_t len = x->shape[axis];
  const int64_t inner = extent_product(x->shape, axis + 1, x->ndim);
  if (outer * inner == 0)
    return ST_OK;
  argmax_kernel<<<st__cuda_grid(outer * inner), ST_CUDA_BLOCK, 0,
                  cu->stream>>>((const float *)x->data, (int64_t *)y->data,
                                outer, len, inner);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// ---- layout ----------------------------------------------------------------

// A strided gather y[i] = x[sum_d idx_d(i) * step[d]] over the output's
// (reduced) extents: transpose and slice both reduce to it. Passed by value.
typedef struct gather_geom {
  int ndim; // >= 1
  int64_t shape[ST_MAX_DIMS];
  int64_t step[ST_MAX_DIMS]; // source elements per step of each axis
} gather_geom;

// x points at the source of y[0]; steps may be negative (slices that walk
// backwards), every offset lands inside the source (checked by backend.c).
static __global__ void gather_kernel(gather_geom g, const float *x, float *y,
                                     int64_t n) {
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP) {
    int64_t rem = i, off = 0;
    for (int d = g.ndim - 1; d >= 0; d--) {
      off += rem % g.shape[d] * g.step[d];
      rem /= g.shape[d];
    }
    y[i] = x[off];
  }
}

static int launch_gather(st_cuda_backend *cu, const gather_geom *g,
                         const float *x, float *y, int64_t n) {
  gather_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(*g, x, y,
                                                                     n);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

extern "C" int st__cuda_transpose(st_backend *be, const int *perm,
                                  const st_tensor *x, st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = st_tensor_numel(x);
  if (n == 0)
    return ST_OK;
  int64_t xstr[ST_MAX_DIMS];
  st__strides_of(x->shape, x->ndim, xstr);
  // Output axes with the source stride of each, extent-1 axes dropped and
  // runs of consecutive source axes merged (as the CPU).
  gather_geom g;
  g.ndim = 0;
  int prev_src = -2;
  for (int d = 0; d < y->ndim; d++) {
    const int s = perm[d];
    if (x->shape[s] == 1)
      continue;
    if (g.ndim > 0 && s == prev_src + 1) {
      g.shape[g.ndim - 1] *= x->shape[s];
      g.step[g.ndim - 1] = xstr[s];
    } else {
      g.shape[g.ndim] = x->shape[s];
      g.step[g.ndim] = xstr[s];
      g.ndim++;
    }
    prev_src = s;
  }
  if (g.ndim <= 1) { // the identity up to extent-1 axes
    ST_CUDA_TRY(cudaMemcpyAsync(y->data, x->data, (size_t)n * sizeof(float),
                                cudaMemcpyDeviceToDevice, cu->stream));
    return ST_OK;
  }
  return launch_gather(cu, &g, (const float *)x->data, (float *)y->data, n);
}

extern "C" int st__cuda_slice(st_backend *be, const int64_t *starts,
                              const int64_t *steps, const st_tensor *x,
                              st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = st_tensor_numel(y);
  if (n == 0)
    return ST_OK;
  int64_t xstr[ST_MAX_DIMS];
  st__strides_of(x->shape, x->ndim, xstr);
  // Offset of y's first element in x, and x's stride per step of each kept
  // y axis (negative for negative steps).
  int64_t base = 0;
  gather_geom g;
  g.ndim = 0;
  for (int d = 0; d < x->ndim; d++) {
    base += starts[d] * xstr[d];
    if (y->shape[d] == 1)
      continue;
    g.shape[g.ndim] = y->shape[d];
    g.step[g.ndim] = steps[d] * xstr[d];
    g.ndim++;
  }
  const float *xs = (const float *)x->data + base;
  if (g.ndim == 0) { // a single element
    ST_CUDA_TRY(cudaMemcpyAsync(y->data, xs, sizeof(float),
                                cudaMemcpyDeviceToDevice, cu->stream));
    return ST_OK;
  }
  return launch_gather(cu, &g, xs, (float *)y->data, n);
}

// Each input is a block of `outer` rows of `run` elements that lands at
// column `col` of y's rows of `yrow` elements: one 2-D copy on the copy
// engine per input.
extern "C" int st__cuda_concat(st_backend *be, int axis,
                               const st_tensor *const *inputs, int count,
                               st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t outer = extent_product(y->shape, 0, axis);
  const int64_t inner = extent_product(y->shape, axis + 1, y->ndim);
  const int64_t yrow = y->shape[axis] * inner;
  float *ys = (float *)y->data;
  int64_t col = 0; // where the current input starts within a y row
  for (int k = 0; k < count; k++) {
    const float *src = (const float *)inputs[k]->data;
    const int64_t run = inputs[k]->shape[axis] * inner;
    if (run > 0 && outer > 0) {
      const size_t run_bytes = (size_t)run * sizeof(float);
      const size_t yrow_bytes = (size_t)yrow * sizeof(float);
      if (yrow_bytes <= ST_CUDA_MAX_COPY_PITCH_BYTES) {
        ST_CUDA_TRY(cudaMemcpy2DAsync(ys + col, yrow_bytes, src, run_bytes,
                                      run_bytes, (size_t)outer,
                                      cudaMemcpyDeviceToDevice, cu->stream));
      } else {
        for (int64_t o = 0; o < outer; o++)
          ST_CUDA_TRY(cudaMemcpyAsync(ys + o * yrow + col, src + o * run,
                                      run_bytes, cudaMemcpyDeviceToDevice,
                                      cu->stream));
      }
    }
    col += run;
  }
  return ST_OK;
}
