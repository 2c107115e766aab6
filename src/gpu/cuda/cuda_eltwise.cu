// Elementwise, layout and conversion ops of the CUDA backend: relu, add,
// channel concat and split, strided subsampling, fill, copy, F32 <-> F16
// casts and the frame-to-tensor normalisation.
//
// Every kernel is a grid-stride loop over int64 element indices on the
// context's stream, one element (or one pixel) per iteration, and computes
// exactly what cpu_ops.c computes: the float operations are spelled with
// the _rn intrinsics where nvcc could otherwise contract a multiply and an
// add into an FMA the CPU does not use. Concat and split are pure copies
// and go through the copy engine. Nothing here allocates device memory.
#include <cuda_fp16.h>
#include <limits.h>
#include <stdint.h>

#include "gpu/cuda/cuda_impl.h"

// cudaMemcpy2DAsync refuses pitches above the device's maximum pitch
// (cudaDevAttrMaxPitch, INT_MAX bytes on every current GPU); past it the
// layout ops copy one image at a time instead.
#define ST_CUDA_MAX_COPY_PITCH_BYTES ((size_t)INT_MAX)

// Half-precision bit patterns used to reproduce the CPU's NaN handling.
#define ST_F16_SIGN_MASK 0x8000u
#define ST_F16_EXP_MASK 0x7c00u
#define ST_F16_MANT_MASK 0x03ffu
#define ST_F16_QUIET_NAN 0x7e00u // exponent all ones, quiet bit set
#define ST_F32_EXP_MASK 0x7f800000u
#define ST_F16_TO_F32_MANT_SHIFT 13 // 23 - 10 mantissa bits

// First index and stride of a grid-stride loop, in int64 so that tensors
// past 2^31 elements index correctly.
#define ST_GRID_START ((int64_t)blockIdx.x * blockDim.x + threadIdx.x)
#define ST_GRID_STEP ((int64_t)gridDim.x * blockDim.x)

// ---- elementwise ----------------------------------------------------------

// y = x > 0 ? x : 0, as the CPU (NaN and -0 become +0). x may equal y.
static __global__ void relu_fwd_kernel(const float *x, float *y, int64_t n) {
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP) {
    const float v = x[i];
    y[i] = v > 0.0f ? v : 0.0f;
  }
}

// dx = y > 0 ? dy : +0. dx may equal dy.
static __global__ void relu_bwd_kernel(const float *y, const float *dy,
                                       float *dx, int64_t n) {
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP)
    dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// y = a + b. y may equal a or b: each element is read before it is written
// by the same thread.
static __global__ void add_kernel(const float *a, const float *b, float *y,
                                  int64_t n) {
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP)
    y[i] = __fadd_rn(a[i], b[i]);
}

static __global__ void fill_kernel(float *y, int64_t n, float value) {
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP)
    y[i] = value;
}

extern "C" int st__cuda_relu_fwd(st_backend *be, const st_tensor *x,
                                 st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = st_tensor_numel(x);
  if (n == 0)
    return ST_OK;
  relu_fwd_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)x->data, (float *)y->data, n);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

extern "C" int st__cuda_relu_bwd(st_backend *be, const st_tensor *y,
                                 const st_tensor *dy, st_tensor *dx) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = st_tensor_numel(y);
  if (n == 0)
    return ST_OK;
  relu_bwd_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)y->data, (const float *)dy->data, (float *)dx->data, n);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

extern "C" int st__cuda_add(st_backend *be, const st_tensor *a,
                            const st_tensor *b, st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = st_tensor_numel(a);
  if (n == 0)
    return ST_OK;
  add_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)a->data, (const float *)b->data, (float *)y->data, n);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

extern "C" int st__cuda_fill(st_backend *be, st_tensor *t, float value) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = st_tensor_numel(t);
  if (n == 0)
    return ST_OK;
  fill_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (float *)t->data, n, value);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// ---- layout ---------------------------------------------------------------

// Copies `rows` rows of `row_bytes` bytes from src (rows `spitch` bytes
// apart) to dst (rows `dpitch` bytes apart) on the context's stream. For
// the channel ops a row is one image's block of channels, so one image
// (N=1) is a single plain copy and a batch is one 2-D copy.
static int copy_rows(st_cuda_backend *cu, void *dst, size_t dpitch,
                     const void *src, size_t spitch, size_t row_bytes,
                     int64_t rows) {
  if (row_bytes == 0 || rows <= 0)
    return ST_OK;
  if (rows == 1) {
    ST_CUDA_TRY(cudaMemcpyAsync(dst, src, row_bytes, cudaMemcpyDeviceToDevice,
                                cu->stream));
    return ST_OK;
  }
  if (dpitch <= ST_CUDA_MAX_COPY_PITCH_BYTES &&
      spitch <= ST_CUDA_MAX_COPY_PITCH_BYTES) {
    ST_CUDA_TRY(cudaMemcpy2DAsync(dst, dpitch, src, spitch, row_bytes,
                                  (size_t)rows, cudaMemcpyDeviceToDevice,
                                  cu->stream));
    return ST_OK;
  }
  for (int64_t r = 0; r < rows; r++)
    ST_CUDA_TRY(cudaMemcpyAsync((char *)dst + (size_t)r * dpitch,
                                (const char *)src + (size_t)r * spitch,
                                row_bytes, cudaMemcpyDeviceToDevice,
                                cu->stream));
  return ST_OK;
}

extern "C" int st__cuda_concat_channels(st_backend *be, const st_tensor *a,
                                        const st_tensor *b, st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = a->shape[0], ca = a->shape[1], cb = b->shape[1];
  const int64_t hw = a->shape[2] * a->shape[3];
  const size_t a_bytes = (size_t)(ca * hw) * sizeof(float);
  const size_t b_bytes = (size_t)(cb * hw) * sizeof(float);
  const size_t y_pitch = a_bytes + b_bytes;
  // Image i of y is a's image i followed by b's image i.
  int rc = copy_rows(cu, y->data, y_pitch, a->data, a_bytes, a_bytes, n);
  if (rc)
    return rc;
  return copy_rows(cu, (char *)y->data + a_bytes, y_pitch, b->data, b_bytes,
                   b_bytes, n);
}

extern "C" int st__cuda_split_channels(st_backend *be, const st_tensor *dy,
                                       st_tensor *da, st_tensor *db) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = dy->shape[0], cy = dy->shape[1];
  const int64_t hw = dy->shape[2] * dy->shape[3];
  const int64_t ca = da ? da->shape[1] : cy - db->shape[1], cb = cy - ca;
  const size_t a_bytes = (size_t)(ca * hw) * sizeof(float);
  const size_t b_bytes = (size_t)(cb * hw) * sizeof(float);
  const size_t dy_pitch = a_bytes + b_bytes;
  if (da) {
    int rc = copy_rows(cu, da->data, a_bytes, dy->data, dy_pitch, a_bytes, n);
    if (rc)
      return rc;
  }
  if (db) {
    int rc = copy_rows(cu, db->data, b_bytes, (const char *)dy->data + a_bytes,
                       dy_pitch, b_bytes, n);
    if (rc)
      return rc;
  }
  return ST_OK;
}

// y[p, r, j] = x[p, r * stride, j * stride] over planes p = n * C + c; one
// thread per y element.
static __global__ void subsample_kernel(const float *x, float *y, int64_t total,
                                        int64_t ih, int64_t iw, int64_t oh,
                                        int64_t ow, int stride) {
  for (int64_t i = ST_GRID_START; i < total; i += ST_GRID_STEP) {
    const int64_t j = i % ow;
    const int64_t rest = i / ow;
    const int64_t r = rest % oh;
    const int64_t p = rest / oh;
    y[i] = x[(p * ih + r * stride) * iw + j * stride];
  }
}

// dx[p, r, c] = dy[p, r / stride, c / stride] where both r and c are
// multiples of stride, else 0; one thread per dx element, so every element
// is written exactly once and no memset is needed.
static __global__ void subsample_bwd_kernel(const float *dy, float *dx,
                                            int64_t total, int64_t ih,
                                            int64_t iw, int64_t oh, int64_t ow,
                                            int stride) {
  for (int64_t i = ST_GRID_START; i < total; i += ST_GRID_STEP) {
    const int64_t c = i % iw;
    const int64_t rest = i / iw;
    const int64_t r = rest % ih;
    const int64_t p = rest / ih;
    float v = 0.0f;
    if (r % stride == 0 && c % stride == 0)
      v = dy[(p * oh + r / stride) * ow + c / stride];
    dx[i] = v;
  }
}

extern "C" int st__cuda_subsample(st_backend *be, const st_tensor *x,
                                  int stride, st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t total = st_tensor_numel(y);
  if (total == 0)
    return ST_OK;
  subsample_kernel<<<st__cuda_grid(total), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)x->data, (float *)y->data, total, x->shape[2], x->shape[3],
      y->shape[2], y->shape[3], stride);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

extern "C" int st__cuda_subsample_bwd(st_backend *be, const st_tensor *dy,
                                      int stride, st_tensor *dx) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t total = st_tensor_numel(dx);
  if (total == 0)
    return ST_OK;
  subsample_bwd_kernel<<<st__cuda_grid(total), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)dy->data, (float *)dx->data, total, dx->shape[2],
      dx->shape[3], dy->shape[2], dy->shape[3], stride);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

// ---- conversions ----------------------------------------------------------

// st_f32_to_f16 on the device: round to nearest even with overflow to inf
// and gradual underflow (the hardware conversion), and a NaN kept quiet
// with its sign and the CPU's payload (the hardware would return 0x7fff).
__device__ static inline uint16_t f32_to_f16_bits(float f) {
  if (isnan(f)) {
    const uint32_t sign = (__float_as_uint(f) >> 16) & ST_F16_SIGN_MASK;
    return (uint16_t)(sign | ST_F16_QUIET_NAN);
  }
  return __half_as_ushort(__float2half_rn(f));
}

// st_f16_to_f32 on the device: exact widening, and a NaN keeps its sign and
// payload bits as on the CPU (the hardware may canonicalise them).
__device__ static inline float f16_bits_to_f32(uint16_t h) {
  if ((h & ST_F16_EXP_MASK) == ST_F16_EXP_MASK && (h & ST_F16_MANT_MASK)) {
    const uint32_t bits =
        ((uint32_t)(h & ST_F16_SIGN_MASK) << 16) | ST_F32_EXP_MASK |
        ((uint32_t)(h & ST_F16_MANT_MASK) << ST_F16_TO_F32_MANT_SHIFT);
    return __uint_as_float(bits);
  }
  return __half2float(__ushort_as_half(h));
}

static __global__ void cast_f32_to_f16_kernel(const float *src, uint16_t *dst,
                                              int64_t n) {
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP)
    dst[i] = f32_to_f16_bits(src[i]);
}

static __global__ void cast_f16_to_f32_kernel(const uint16_t *src, float *dst,
                                              int64_t n) {
  for (int64_t i = ST_GRID_START; i < n; i += ST_GRID_STEP)
    dst[i] = f16_bits_to_f32(src[i]);
}

extern "C" int st__cuda_cast(st_backend *be, const st_tensor *src,
                             st_tensor *dst) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = st_tensor_numel(src);
  if (n == 0)
    return ST_OK;
  if (src->dtype == ST_F32) {
    cast_f32_to_f16_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
        (const float *)src->data, (uint16_t *)dst->data, n);
  } else {
    cast_f16_to_f32_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
        (const uint16_t *)src->data, (float *)dst->data, n);
  }
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

extern "C" int st__cuda_copy(st_backend *be, const st_tensor *src,
                             st_tensor *dst) {
  st_cuda_backend *cu = st__cuda(be);
  const size_t bytes = st_tensor_nbytes(src);
  if (src->data == dst->data || bytes == 0)
    return ST_OK;
  ST_CUDA_TRY(cudaMemcpyAsync(dst->data, src->data, bytes,
                              cudaMemcpyDeviceToDevice, cu->stream));
  return ST_OK;
}

// The per-channel constants of image_to_tensor, passed by value as a
// kernel argument (no device copy of the host arrays needed).
typedef struct image_norm {
  int order[3];  // y channel c reads pixel byte order[c]
  float mean[3]; // subtracted from y channel c
  float std_[3]; // then divides y channel c
} image_norm;

// One thread per pixel: reads its 3 bytes, writes one float to each of the
// 3 planes of y (coalesced along the row). Subtract then divide in float,
// as the CPU and the reference's numpy do.
static __global__ void image_to_tensor_kernel(const uint8_t *img, float *y,
                                              int64_t pixels, image_norm nm) {
  for (int64_t i = ST_GRID_START; i < pixels; i += ST_GRID_STEP) {
    const uint8_t *px = img + 3 * i;
#pragma unroll
    for (int c = 0; c < 3; c++)
      y[c * pixels + i] =
          __fdiv_rn(__fsub_rn((float)px[nm.order[c]], nm.mean[c]), nm.std_[c]);
  }
}

extern "C" int st__cuda_image_to_tensor(st_backend *be, const st_tensor *image,
                                        const int channel_order[3],
                                        const float mean[3],
                                        const float std_[3], st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t pixels = image->shape[0] * image->shape[1];
  if (pixels == 0)
    return ST_OK;
  image_norm nm;
  for (int c = 0; c < 3; c++) {
    nm.order[c] = channel_order[c];
    nm.mean[c] = mean[c];
    nm.std_[c] = std_[c];
  }
  image_to_tensor_kernel<<<st__cuda_grid(pixels), ST_CUDA_BLOCK, 0,
                           cu->stream>>>((const uint8_t *)image->data,
                                         (float *)y->data, pixels, nm);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}
