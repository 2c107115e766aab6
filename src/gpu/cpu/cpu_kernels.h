/* The CPU backend's hot loops: a resized row forward and backward, a tile
 * of the cross-entropy, a row of the channel argmax. cpu_kernels.c is
 * compiled once per instruction set the build targets (CMake: the baseline
 * everywhere, AVX2 and AVX-512 on x86-64), each copy exporting its table
 * as st__cpu_kernels_<isa>; a context picks one when it is created
 * (cpu_backend.c) and cpu_ops.c calls through it. Every copy gives the same
 * bits: each loop is elementwise across vector lanes, sums keep their order
 * (no -ffast-math), and the build never contracts a * b + c into an FMA
 * (-ffp-contract=off), so the wider copies only run more lanes at once.
 * test_ops compares each copy the machine runs with the baseline byte for
 * byte. */
#ifndef ST_GPU_CPU_KERNELS_H
#define ST_GPU_CPU_KERNELS_H

#include <stdint.h>

/* Pixels per tile in the per-pixel reductions over channels (cross-entropy,
 * argmax): C rows of this many floats stay in L1/L2 between passes. */
#define ST_CPU_PIXEL_TILE 2048

/* One output position's two source positions and their weights. */
typedef struct st_cpu_tap {
  int64_t i0, i1; /* source indices, i0 <= i1, both nondecreasing in dst */
  float l0, l1;   /* weights of i0 and i1, l0 + l1 = 1 */
} st_cpu_tap;

/* The W taps of one call, and whether they are a doubling's: ow = 2 iw
 * and every column but the first and the last reads source columns
 * (j - 1) / 2 and the next with the weights of column 1 (odd j) or column
 * 2 (even j), as PyTorch's taps are for a doubled width (scale 0.5 is
 * exact). Then the W passes read the source and write the gradient with
 * contiguous loads instead of per-column gathers and scatters, and do the
 * same arithmetic on the same values in the same order. */
typedef struct st_cpu_cols {
  const st_cpu_tap *tap; /* [ow] */
  int64_t iw, ow;
  int doubled;
} st_cpu_cols;

/* Two cached W-interpolated rows: consecutive output rows of an upsample
 * share their source rows, so each source row is interpolated about once.
 * The caller owns the buffers (ow floats each). */
typedef struct st_cpu_row_cache {
  float *row[2];
  int64_t tag[2]; /* source row held by each buffer, -1 for none */
} st_cpu_row_cache;

/* What one cross-entropy call adds up over its pixels. */
typedef struct st_cpu_ce_sums {
  double total;       /* sum of -weight * log p[label] */
  int64_t bad_pixels; /* pixels whose label is not below C */
  int bad_label;      /* the largest such label, -1 when none */
} st_cpu_ce_sums;

typedef struct st_cpu_kernels {
  const char *isa; /* "baseline", "avx2" or "avx512" */
  /* Output row t of a plane's bilinear resize into out (cols->ow floats):
   * its two source rows along W (through the cache), then along H. */
  void (*resize_row)(st_cpu_row_cache *cache, const float *plane,
                     const st_cpu_cols *cols, st_cpu_tap t, float *out);
  /* Input row r of a resize's gradient into dst (cols->iw floats): the
   * gradient rows of the output rows range[2r] .. range[2r+1] (output row
   * o at rows + (o - first) * ow) summed along H with their weights th
   * into acc (ow floats of scratch), then scattered along W. */
  void (*resize_row_bwd)(const float *rows, int64_t first, int64_t r,
                         const int64_t *range, const st_cpu_tap *th,
                         const st_cpu_cols *cols, float *acc, float *dst);
  /* The loss of len <= ST_CPU_PIXEL_TILE pixels whose C class scores lie
   * xs floats apart (class k of pixel t at x[k * xs + t]), added to *sums,
   * and when d is not NULL the gradient w * (softmax - [k == label]) *
   * inv_count into d (class k at d[k * ds + t]). */
  void (*ce_tile)(const float *x, int64_t xs, int64_t len, int64_t c,
                  const uint8_t *lab, const float *w, float inv_count, float *d,
                  int64_t ds, st_cpu_ce_sums *sums);
  /* Class k's values of n pixels against their best so far: where v wins
   * (torch.argmax's rule: strictly greater, the first NaN beats all),
   * best takes v and cls takes k. */
  void (*argmax_row)(const float *val, int32_t k, int64_t n, float *best,
                     int32_t *cls);
} st_cpu_kernels;

extern const st_cpu_kernels st__cpu_kernels_baseline;
extern const st_cpu_kernels st__cpu_kernels_avx2;   /* x86-64 builds only */
extern const st_cpu_kernels st__cpu_kernels_avx512; /* x86-64 builds only */

#endif
