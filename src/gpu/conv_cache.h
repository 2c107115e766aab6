/* What the CPU and CUDA backends' convolution caches share (plain C, also
 * compiled as CUDA C++): the key that tells two calls apart, and
 * least-recently-used replacement over entries that begin with an
 * st__conv_cached. Each backend builds, runs and frees its own entries
 * (oneDNN primitives; cuDNN descriptors and algorithms). */
#ifndef ST_GPU_CONV_CACHE_H
#define ST_GPU_CONV_CACHE_H

#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "gpu/backend.h"

typedef enum st__conv_kind {
  ST__CONV_FWD = 0,
  ST__CONV_BWD_DATA,
  ST__CONV_BWD_WEIGHTS,
} st__conv_kind;

/* Everything that makes two calls need different primitives, descriptors
 * or algorithms. Every field is an int64_t, so the struct has no padding
 * bytes and two keys compare with memcmp (st__conv_key_init also zeroes
 * it first). */
typedef struct st__conv_key {
  int64_t kind;              /* st__conv_kind */
  int64_t n, cin, h, w;      /* input extents */
  int64_t cout, kh, kw;      /* weight extents (cin per group implied) */
  int64_t oh, ow;            /* output extents */
  int64_t stride[2], pad[2]; /* [h, w] */
  int64_t dilation[2];       /* [h, w], ours: 1 = dense */
  int64_t groups;            /* channel groups */
  int64_t has_bias;          /* fwd: bias given; bwd_weights: db wanted */
  int64_t act;               /* st_activation applied after the sum */
  int64_t beta;              /* 1: y = conv + y (the residual add) */
} st__conv_key;
#define ST__CONV_KEY_FIELDS 20
static_assert(sizeof(st__conv_key) == ST__CONV_KEY_FIELDS * sizeof(int64_t),
              "st__conv_key must have no padding: it is compared with memcmp");

/* The key of a convolution of src by wei into dst (for a backward call:
 * dx, w, dy or x, dw, dy); has_bias, act and beta start at 0. */
static inline void st__conv_key_init(st__conv_key *k, st__conv_kind kind,
                                     const st_conv2d_params *p,
                                     const st_tensor *src, const st_tensor *wei,
                                     const st_tensor *dst) {
  memset(k, 0, sizeof *k);
  k->kind = kind;
  k->n = src->shape[0];
  k->cin = src->shape[1];
  k->h = src->shape[2];
  k->w = src->shape[3];
  k->cout = wei->shape[0];
  k->kh = wei->shape[2];
  k->kw = wei->shape[3];
  k->oh = dst->shape[2];
  k->ow = dst->shape[3];
  for (int i = 0; i < 2; i++) {
    k->stride[i] = p->stride[i];
    k->pad[i] = p->pad[i];
    k->dilation[i] = p->dilation[i];
  }
  k->groups = p->groups;
}

/* The first member of every cache entry. */
typedef struct st__conv_cached {
  st__conv_key key;  /* what the entry computes */
  uint64_t last_use; /* the cache's tick at its last call */
} st__conv_cached;

/* The entry among entry[0, count) that computes k, or NULL. */
static inline st__conv_cached *
st__conv_cache_find(st__conv_cached *const *entry, int count,
                    const st__conv_key *k) {
  for (int i = 0; i < count; i++)
    if (memcmp(&entry[i]->key, k, sizeof *k) == 0)
      return entry[i];
  return NULL;
}

/* Where a new entry goes among entry[0, count) of cap slots: slot count
 * while there is room (the caller then counts it in), else the least
 * recently used one (the caller frees its entry first). */
static inline int st__conv_cache_slot(st__conv_cached *const *entry, int count,
                                      int cap) {
  if (count < cap)
    return count;
  int slot = 0;
  for (int i = 1; i < count; i++)
    if (entry[i]->last_use < entry[slot]->last_use)
      slot = i;
  return slot;
}

#endif
