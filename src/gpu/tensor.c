#include "gpu/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "gpu/backend.h"

static const struct {
  const char *name;
  size_t size;
} dtype_info[ST_DTYPE_COUNT] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_U8] = {"U8", 1},
    [ST_I32] = {"I32", 4}, [ST_I64] = {"I64", 8},
};

size_t st_dtype_size(st_dtype dt) {
  return (unsigned)dt < ST_DTYPE_COUNT ? dtype_info[dt].size : 0;
}

const char *st_dtype_name(st_dtype dt) {
  return (unsigned)dt < ST_DTYPE_COUNT ? dtype_info[dt].name : "?";
}

int st_dtype_from_name(const char *name, st_dtype *out) {
  for (int i = 0; i < ST_DTYPE_COUNT; i++) {
    if (strcmp(name, dtype_info[i].name) == 0) {
      *out = (st_dtype)i;
      return ST_OK;
    }
  }
  return st_error_set(ST_EDTYPE, "unsupported dtype '%s'", name);
}

int64_t st_tensor_numel(const st_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++)
    n *= t->shape[i];
  return n;
}

size_t st_tensor_nbytes(const st_tensor *t) {
  return (size_t)st_tensor_numel(t) * st_dtype_size(t->dtype);
}

int st_tensor_same_shape(const st_tensor *a, const st_tensor *b) {
  if (a->ndim != b->ndim)
    return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i])
      return 0;
  return 1;
}

const char *st_tensor_shape_str(const st_tensor *t, char *buf, size_t len) {
  size_t used = 0;
  if (len == 0)
    return buf;
  buf[0] = '\0';
  used += (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < t->ndim && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? "," : "",
                             (long long)t->shape[i]);
  if (used < len)
    snprintf(buf + used, len - used, "]");
  return buf;
}

static void tensor_set_shape(st_tensor *t, st_dtype dt, int ndim,
                             const int64_t *shape) {
  t->dtype = dt;
  t->ndim = ndim;
  for (int i = 0; i < ST_MAX_DIMS; i++)
    t->shape[i] = i < ndim ? shape[i] : 1;
}

int st_tensor_alloc(struct st_backend *be, st_tensor *t, st_dtype dt, int ndim,
                    const int64_t *shape) {
  memset(t, 0, sizeof *t);
  if (ndim < 0 || ndim > ST_MAX_DIMS || st_dtype_size(dt) == 0)
    return st_error_set(ST_EINVAL, "tensor: bad rank %d or dtype %d", ndim,
                        (int)dt);
  size_t bytes = st_dtype_size(dt);
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return st_error_set(ST_ESHAPE, "tensor: negative extent %lld",
                          (long long)shape[i]);
    if (shape[i] > 0 && bytes > SIZE_MAX / (size_t)shape[i])
      return st_error_set(ST_ERANGE, "tensor: byte size overflows");
    bytes *= (size_t)shape[i];
  }
  tensor_set_shape(t, dt, ndim, shape);
  void *data = NULL;
  if (be) {
    int rc = st_backend_alloc(be, bytes, &data);
    if (rc)
      return rc;
  } else {
    size_t rounded = (bytes + ST_HOST_ALIGN_BYTES - 1) / ST_HOST_ALIGN_BYTES *
                     ST_HOST_ALIGN_BYTES;
    data = aligned_alloc(ST_HOST_ALIGN_BYTES, rounded ? rounded
                                                      : ST_HOST_ALIGN_BYTES);
    if (!data)
      return st_error_set(ST_ENOMEM, "tensor: cannot allocate %zu bytes",
                          bytes);
    memset(data, 0, bytes);
  }
  t->data = data;
  t->backend = be;
  t->owns = 1;
  return ST_OK;
}

int st_tensor_alloc4(struct st_backend *be, st_tensor *t, st_dtype dt,
                     int64_t n, int64_t c, int64_t h, int64_t w) {
  const int64_t shape[4] = {n, c, h, w};
  return st_tensor_alloc(be, t, dt, 4, shape);
}

void st_tensor_free(st_tensor *t) {
  if (!t)
    return;
  if (t->owns && t->data) {
    if (t->backend)
      st_backend_release(t->backend, t->data);
    else
      free(t->data);
  }
  memset(t, 0, sizeof *t);
}

st_tensor st_tensor_view(void *data, st_dtype dt, int ndim,
                         const int64_t *shape) {
  st_tensor t;
  memset(&t, 0, sizeof t);
  tensor_set_shape(&t, dt, ndim, shape);
  t.data = data;
  return t;
}

st_tensor st_tensor_view4(void *data, st_dtype dt, int64_t n, int64_t c,
                          int64_t h, int64_t w) {
  const int64_t shape[4] = {n, c, h, w};
  return st_tensor_view(data, dt, 4, shape);
}

uint16_t st_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xffu) /* inf or nan; keep nan quiet */
    return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
  int32_t e = (int32_t)exp - 127 + 15;
  if (e >= 0x1f)
    return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10)
      return (uint16_t)sign;
    mant |= 0x800000u;
    uint32_t shift = (uint32_t)(14 - e);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u)))
      half++;
    return (uint16_t)(sign | half);
  }
  uint32_t half = ((uint32_t)e << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u)))
    half++; /* may carry into the exponent, which is the right rounding */
  return (uint16_t)(sign | half);
}

float st_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while (!(mant & 0x400u));
      x = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    x = sign | 0x7f800000u | (mant << 13);
  } else {
    x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  memcpy(&f, &x, sizeof f);
  return f;
}
