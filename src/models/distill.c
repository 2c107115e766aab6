#include "models/distill.h"

#include <math.h>
#include <stddef.h>

#include "base/error.h"

int st_distill_params_check(const st_distill_params *p) {
  if (!p)
    return st_error_set(ST_EINVAL, "distill params: NULL");
  /* Written so that a NaN threshold fails too. */
  if (!(p->threshold > 0.0 && p->threshold < 1.0))
    return st_error_set(ST_EINVAL, "distill params: threshold %g not in (0,1)",
                        p->threshold);
  if (p->max_updates < 0)
    return st_error_set(ST_EINVAL, "distill params: max_updates %d < 0",
                        p->max_updates);
  return ST_OK;
}

int st_distill_run(const st_distill_learner *l, const st_distill_params *p,
                   st_distill_result *out) {
  if (!l || !out)
    return st_error_set(ST_EINVAL, "distill: NULL learner or result");
  if (!l->score || !l->step || !l->save_best || !l->restore_best)
    return st_error_set(ST_EINVAL, "distill: learner lacks a callback");
  int rc = st_distill_params_check(p);
  if (rc)
    return rc;

  st_distill_result res = {.restored = 0, .last_loss = NAN};
  double metric;
  if ((rc = l->score(l->ctx, &metric)))
    return rc;
  res.first_metric = metric;
  if (metric > p->threshold || p->max_updates == 0) {
    /* Good enough already, or no budget: the reference returns the first
     * score with 0 steps either way, and with no steps there is nothing to
     * restore. */
    res.metric = metric;
    res.steps = 0;
    *out = res;
    return ST_OK;
  }

  double best = metric;
  if ((rc = l->save_best(l->ctx)))
    return rc;
  for (int step = 0; step < p->max_updates; step++) {
    if ((rc = l->step(l->ctx, &res.last_loss)))
      return rc;
    if ((rc = l->score(l->ctx, &metric)))
      return rc;
    if (metric > p->threshold) {
      res.metric = metric;
      res.steps = step + 1;
      *out = res;
      return ST_OK;
    }
    if (metric > best) {
      best = metric;
      if ((rc = l->save_best(l->ctx)))
        return rc;
    }
  }
  /* Strictly below: when the last state ties with the best, the reference
   * keeps the last state (which scores the same) rather than reloading. */
  if (metric < best) {
    if ((rc = l->restore_best(l->ctx)))
      return rc;
    metric = best;
    res.restored = 1;
  }
  res.metric = metric;
  res.steps = p->max_updates;
  *out = res;
  return ST_OK;
}
