/* Shape arithmetic shared by the CPU and CUDA backends' ops of imported
 * graphs (plain C, also compiled as CUDA C++): contiguous strides, and the
 * broadcast geometry of a binary op reduced to the fewest axes, computed
 * once per call on the host. */
#ifndef ST_GPU_LAYOUT_H
#define ST_GPU_LAYOUT_H

#include <stdint.h>

#include "gpu/tensor.h"

/* Row-major element strides of a contiguous shape. */
static inline void st__strides_of(const int64_t *shape, int ndim, int64_t *strides) {
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; d--) {
    strides[d] = s;
    s *= shape[d];
  }
}

/* Broadcast geometry reduced to the fewest axes: output extents and each
 * operand's element strides (0 along broadcast axes). */
typedef struct st__bcast_geom {
  int ndim;                 /* reduced rank, >= 1 */
  int64_t shape[ST_MAX_DIMS];
  int64_t sa[ST_MAX_DIMS];  /* a's strides in elements */
  int64_t sb[ST_MAX_DIMS];  /* b's strides in elements */
} st__bcast_geom;

static inline void st__bcast_build(const st_tensor *a, const st_tensor *b,
                                   const st_tensor *y, st__bcast_geom *g) {
  int rank = y->ndim;
  int64_t ashape[ST_MAX_DIMS], bshape[ST_MAX_DIMS];
  int64_t astr[ST_MAX_DIMS], bstr[ST_MAX_DIMS];
  for (int d = 0; d < rank; d++) {
    int da = d - (rank - a->ndim), db = d - (rank - b->ndim);
    ashape[d] = da >= 0 ? a->shape[da] : 1;
    bshape[d] = db >= 0 ? b->shape[db] : 1;
  }
  st__strides_of(ashape, rank, astr);
  st__strides_of(bshape, rank, bstr);
  g->ndim = 0;
  for (int d = 0; d < rank; d++) {
    int64_t e = y->shape[d];
    if (e == 1)
      continue; /* contributes nothing to any offset */
    int64_t sa = ashape[d] == 1 ? 0 : astr[d];
    int64_t sb = bshape[d] == 1 ? 0 : bstr[d];
    int k = g->ndim;
    /* Merge into the previous axis when both operands step through it as
     * one longer axis (broadcast axes merge with broadcast axes). */
    if (k > 0 && g->sa[k - 1] == sa * e && g->sb[k - 1] == sb * e) {
      g->shape[k - 1] *= e;
      g->sa[k - 1] = sa;
      g->sb[k - 1] = sb;
      continue;
    }
    g->shape[k] = e;
    g->sa[k] = sa;
    g->sb[k] = sb;
    g->ndim++;
  }
  if (g->ndim == 0) {
    g->ndim = 1;
    g->shape[0] = 1;
    g->sa[0] = g->sb[0] = 0;
  }
}

#endif
