/* Key-frame striding (ShadowTutor Algorithm 2).
 *
 * After every distillation the server tells the client how many frames to
 * wait before its next key frame. The stride is scaled by a ratio that is a
 * piecewise-linear function of the student's mIoU against the teacher: it
 * passes through (0, 0), (threshold, 1) and (1, 2), so a student exactly at
 * the threshold keeps its stride, a perfect one doubles it and a useless one
 * drops to the minimum. The result is truncated toward zero and clamped to
 * [min_stride, max_stride]. This file is pure arithmetic with no state; it
 * agrees bit for bit with next_stride() in shadowtutor_ref.py.
 */
#ifndef ST_MODELS_STRIDE_H
#define ST_MODELS_STRIDE_H

typedef struct st_stride_params {
  double threshold; /* mIoU that keeps the stride unchanged, in (0, 1) */
  int min_stride;   /* smallest stride in frames, >= 1 */
  int max_stride;   /* largest stride in frames, >= min_stride */
} st_stride_params;

/* Checks 0 < threshold < 1 and 1 <= min_stride <= max_stride. Returns ST_OK
 * or ST_EINVAL with a detail line naming the bad field. */
int st_stride_params_check(const st_stride_params *p);

/* The stride that follows `stride` when the student scored `metric` (mIoU
 * in [0, 1]) on the last key frame. `p` must pass st_stride_params_check.
 * Metrics outside [0, 1] are extrapolated exactly as the reference does and
 * then clamped; a NaN metric (no score) is treated as total disagreement
 * and gives min_stride. Never fails: the result is always in
 * [min_stride, max_stride]. */
int st_next_stride(int stride, double metric, const st_stride_params *p);

#endif
