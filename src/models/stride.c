#include "models/stride.h"

#include <math.h>

#include "base/error.h"

int st_stride_params_check(const st_stride_params *p) {
  if (!p)
    return st_error_set(ST_EINVAL, "stride params: NULL");
  /* Written so that a NaN threshold fails too. */
  if (!(p->threshold > 0.0 && p->threshold < 1.0))
    return st_error_set(ST_EINVAL, "stride params: threshold %g not in (0,1)",
                        p->threshold);
  if (p->min_stride < 1)
    return st_error_set(ST_EINVAL, "stride params: min_stride %d < 1",
                        p->min_stride);
  if (p->max_stride < p->min_stride)
    return st_error_set(ST_EINVAL,
                        "stride params: max_stride %d < min_stride %d",
                        p->max_stride, p->min_stride);
  return ST_OK;
}

int st_next_stride(int stride, double metric, const st_stride_params *p) {
  if (isnan(metric))
    return p->min_stride;
  double t = p->threshold;
  /* Same operations in the same order as the reference, all in double, so
   * that a product landing just below an integer truncates the same way.
   * (2.0 * t is exact, so even a fused multiply-add cannot change it.) */
  double ratio;
  if (metric > t)
    ratio = (metric + 1.0 - 2.0 * t) / (1.0 - t);
  else
    ratio = metric / t;
  /* Python's int() truncates toward zero. Truncating and clamping in double
   * before converting keeps huge or infinite products defined behaviour;
   * clamping after truncation gives the same value as the reference's
   * min(max, max(min, int(x))) because min_stride <= max_stride. The
   * negated test also sends a NaN product (an infinite metric times a zero
   * stride) to min_stride instead of an undefined conversion. */
  double scaled = trunc(ratio * (double)stride);
  if (!(scaled > (double)p->min_stride))
    return p->min_stride;
  if (scaled >= (double)p->max_stride)
    return p->max_stride;
  return (int)scaled;
}
