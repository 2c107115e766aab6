/* Tensors: a dtype, a shape and a pointer into one backend's memory.
 *
 * A tensor either owns its storage (allocated through st_tensor_alloc on a
 * backend, or on the host when the backend is NULL, and released by
 * st_tensor_free) or is a view (st_tensor_view) that borrows storage owned by
 * someone else, typically a planned arena. Activations are fp32 NCHW; u8
 * holds images and label maps, f16 holds compact parameter updates.
 */
#ifndef ST_GPU_TENSOR_H
#define ST_GPU_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
/* Host allocations are aligned for the widest vector loads we issue. */
#define ST_HOST_ALIGN_BYTES 64

typedef enum st_dtype {
  ST_F32 = 0,
  ST_F16,
  ST_U8,
  ST_I32,
  ST_I64,
  ST_DTYPE_COUNT
} st_dtype;

struct st_backend;

typedef struct st_tensor {
  void *data;                  /* element storage, row-major, contiguous */
  int64_t shape[ST_MAX_DIMS];  /* extents; unused trailing entries are 1 */
  int ndim;                    /* number of dimensions, 0..ST_MAX_DIMS */
  st_dtype dtype;              /* element type */
  struct st_backend *backend;  /* memory owner; NULL with owns=1: host heap */
  int owns;                    /* 1: st_tensor_free releases data */
} st_tensor;

/* Bytes per element, 0 for an invalid dtype. */
size_t st_dtype_size(st_dtype dt);
/* Safetensors spelling ("F32", "F16", "U8", "I32", "I64"). */
const char *st_dtype_name(st_dtype dt);
/* Parses a safetensors dtype name; ST_EDTYPE when it is not one we handle. */
int st_dtype_from_name(const char *name, st_dtype *out);

/* Number of elements (1 for a 0-d tensor). */
int64_t st_tensor_numel(const st_tensor *t);
/* Size of the data in bytes. */
size_t st_tensor_nbytes(const st_tensor *t);
/* 1 when both tensors have the same ndim and extents. */
int st_tensor_same_shape(const st_tensor *a, const st_tensor *b);
/* Formats the shape as "[1,3,720,1280]" into buf (always terminated). */
const char *st_tensor_shape_str(const st_tensor *t, char *buf, size_t len);

/* Allocates storage for a tensor of the given shape on a backend (NULL: the
 * host heap, aligned to ST_HOST_ALIGN_BYTES). Contents are zeroed. Checks
 * every extent and the byte count for overflow. */
int st_tensor_alloc(struct st_backend *be, st_tensor *t, st_dtype dt, int ndim,
                    const int64_t *shape);
/* Convenience for 4-D NCHW. */
int st_tensor_alloc4(struct st_backend *be, st_tensor *t, st_dtype dt,
                     int64_t n, int64_t c, int64_t h, int64_t w);
/* Releases owned storage (views are left alone) and clears the struct.
 * Accepts NULL and already-freed tensors. */
void st_tensor_free(st_tensor *t);
/* Describes borrowed storage as a tensor; the view never frees it. */
st_tensor st_tensor_view(void *data, st_dtype dt, int ndim,
                         const int64_t *shape);
st_tensor st_tensor_view4(void *data, st_dtype dt, int64_t n, int64_t c,
                          int64_t h, int64_t w);

/* Host-side IEEE half conversions (round to nearest even). */
uint16_t st_f32_to_f16(float f);
float st_f16_to_f32(uint16_t h);

#endif
