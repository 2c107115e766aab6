/* Partial distillation of one key frame (ShadowTutor Algorithm 1).
 *
 * The control flow only: score the student against the teacher's label; if
 * it already agrees well enough, stop; otherwise take up to max_updates
 * optimiser steps, stopping as soon as a step lifts the score above the
 * threshold, and if none does, keep the best student seen. The network work
 * is behind a callback table (st_distill_learner) so the same driver runs
 * the real student on any backend and a scripted fake in the tests. It
 * follows distill() in shadowtutor_ref.py decision for decision: every
 * comparison is strict (>, <), so a tie neither stops early nor replaces
 * the best snapshot.
 *
 * Ownership: the driver owns nothing; the learner's ctx is borrowed for the
 * duration of st_distill_run and the driver never stores it.
 */
#ifndef ST_MODELS_DISTILL_H
#define ST_MODELS_DISTILL_H

/* What the driver asks of the model being distilled. Every slot is
 * required. Each returns ST_OK or a negative ST_E* code; on any nonzero
 * return st_distill_run stops at once, calls nothing more, and returns that
 * code (so a failing callback leaves the weights in whatever state it left
 * them: the caller must treat the student as unusable or resync it). */
typedef struct st_distill_learner {
  void *ctx; /* passed to every callback, borrowed */
  /* Forward of the current weights on the key frame and mIoU of the argmax
   * against the teacher's label, into *metric. */
  int (*score)(void *ctx, double *metric);
  /* One optimiser step: forward, weighted cross-entropy, backward of the
   * trainable part, Adam; the loss of that forward into *loss. */
  int (*step)(void *ctx, float *loss);
  /* Snapshots the current weights as the best so far (replacing any older
   * snapshot). */
  int (*save_best)(void *ctx);
  /* Loads the snapshot back into the weights. The optimiser state is NOT
   * restored, as in the reference (it copies only the state dict). */
  int (*restore_best)(void *ctx);
} st_distill_learner;

typedef struct st_distill_params {
  double threshold; /* mIoU above which the student is good enough, (0, 1) */
  int max_updates;  /* most optimiser steps per key frame, >= 0 */
} st_distill_params;

typedef struct st_distill_result {
  /* mIoU of the weights the student holds on return: the first score when
   * no step ran, the score that crossed the threshold, or the best score
   * when max_updates ran out (the reference's returned metric). */
  double metric;
  /* Steps reported as the reference does: 0 when the first score was
   * already above the threshold, k when step k crossed it, max_updates when
   * the budget ran out (even if the best was an earlier state). */
  int steps;
  /* 1 when the budget ran out and the best snapshot was loaded back
   * because the last score was strictly below the best; 0 otherwise. */
  int restored;
  /* The score before any step (the student as the client had it). */
  double first_metric;
  /* Loss of the last step taken; NaN when no step ran. */
  float last_loss;
} st_distill_result;

/* Checks 0 < threshold < 1 and max_updates >= 0. Returns ST_OK or
 * ST_EINVAL with a detail line. */
int st_distill_params_check(const st_distill_params *p);

/* Runs Algorithm 1 on the learner. Calls, in order: score; if the score
 * is not above the threshold and max_updates > 0, save_best, then per step
 * `step, score` and save_best after each strict improvement on the best;
 * restore_best at most once, at the end. (With max_updates == 0 the
 * reference's snapshot would never be read, so save_best is not called.)
 * Returns ST_OK and fills *out, ST_EINVAL for bad arguments (nothing is
 * called), or the first nonzero callback code (*out is then left
 * unchanged). */
int st_distill_run(const st_distill_learner *l, const st_distill_params *p,
                   st_distill_result *out);

#endif
