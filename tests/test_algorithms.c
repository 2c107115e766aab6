/* Algorithm 1 (st_distill_run) and Algorithm 2 (st_next_stride) against
 * the reference's own answers (fixtures/algorithms.json, written by
 * gen_algorithms.py from shadowtutor_ref.py).
 *
 * Neither algorithm touches a compute backend, so these tests run once,
 * not once per backend. Distillation is replayed through a scripted
 * learner: score() pops the next metric of a case, step() counts steps in
 * the "weights", save_best/restore_best copy that count, so the final
 * weights say which state ended loaded, exactly as the reference's fake
 * model does in the generator. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "models/distill.h"
#include "models/stride.h"

/* Fixture counts below which a test would be checking too little. */
enum {
  MIN_STRIDE_GRID_VALUES = 5000,
  MIN_STRIDE_CASES = 300,
  MIN_DISTILL_CASES = 200,
  MAX_SCRIPT = 64,
  MAX_CALLS = 128,
};

static json_t *load_fixture(void) {
  json_error_t err;
  json_t *root =
      json_load_file(st_test_fixture_path("algorithms.json"), 0, &err);
  if (!root)
    fail_msg("algorithms.json:%d: %s", err.line, err.text);
  return root;
}

/* ---- Algorithm 2 ------------------------------------------------------- */

static void test_next_stride_grids(void **state) {
  (void)state;
  json_t *root = load_fixture();
  json_t *grids = json_object_get(json_object_get(root, "next_stride"), "grids");
  assert_true(json_is_array(grids));
  size_t checked = 0;
  size_t gi;
  json_t *g;
  json_array_foreach(grids, gi, g) {
    st_stride_params p = {
        .threshold = json_real_value(json_object_get(g, "threshold")),
        .min_stride = (int)json_integer_value(json_object_get(g, "min")),
        .max_stride = (int)json_integer_value(json_object_get(g, "max"))};
    ST_ASSERT_OK(st_stride_params_check(&p));
    json_t *strides = json_object_get(g, "strides");
    json_t *metrics = json_object_get(g, "metrics");
    json_t *expected = json_object_get(g, "expected");
    assert_int_equal(json_array_size(expected), json_array_size(strides));
    for (size_t i = 0; i < json_array_size(strides); i++) {
      int stride = (int)json_integer_value(json_array_get(strides, i));
      json_t *row = json_array_get(expected, i);
      assert_int_equal(json_array_size(row), json_array_size(metrics));
      for (size_t j = 0; j < json_array_size(metrics); j++) {
        double m = json_number_value(json_array_get(metrics, j));
        int want = (int)json_integer_value(json_array_get(row, j));
        int got = st_next_stride(stride, m, &p);
        if (got != want)
          fail_msg("next_stride(%d, %.17g, T=%.17g, [%d,%d]) = %d, ref %d",
                   stride, m, p.threshold, p.min_stride, p.max_stride, got,
                   want);
        checked++;
      }
    }
  }
  assert_true(checked >= MIN_STRIDE_GRID_VALUES);
  json_decref(root);
}

/* Products that are an integer in exact arithmetic and land on it, or one
 * ulp below it, in doubles. */
static void test_next_stride_near_integers(void **state) {
  (void)state;
  json_t *root = load_fixture();
  json_t *cases = json_object_get(json_object_get(root, "next_stride"), "cases");
  assert_true(json_array_size(cases) >= MIN_STRIDE_CASES);
  size_t i;
  json_t *c;
  json_array_foreach(cases, i, c) {
    int stride = (int)json_integer_value(json_array_get(c, 0));
    double m = json_number_value(json_array_get(c, 1));
    st_stride_params p = {
        .threshold = json_number_value(json_array_get(c, 2)),
        .min_stride = (int)json_integer_value(json_array_get(c, 3)),
        .max_stride = (int)json_integer_value(json_array_get(c, 4))};
    int want = (int)json_integer_value(json_array_get(c, 5));
    int got = st_next_stride(stride, m, &p);
    if (got != want)
      fail_msg("case %zu: next_stride(%d, %.17g, T=%.17g) = %d, ref %d", i,
               stride, m, p.threshold, got, want);
  }
  json_decref(root);
}

/* Values worked out by hand, independent of the fixture. */
static void test_next_stride_by_hand(void **state) {
  (void)state;
  const st_stride_params wide = {.threshold = 0.8, .min_stride = 1,
                                 .max_stride = 1000};
  const st_stride_params paper = {.threshold = 0.8, .min_stride = 8,
                                  .max_stride = 64};
  /* At the threshold the stride is kept; 1.0 doubles it; 0 gives min. */
  assert_int_equal(st_next_stride(20, 0.8, &wide), 20);
  assert_int_equal(st_next_stride(20, 1.0, &wide), 40);
  assert_int_equal(st_next_stride(20, 0.0, &wide), 1);
  /* 0.7 / 0.8 * 8 = 6.999999999999999 in doubles: truncates to 6. */
  assert_int_equal(st_next_stride(8, 0.7, &wide), 6);
  /* (0.9 + 1 - 1.6) / 0.2 * 16 = 23.99999999999999 -> 23. */
  assert_int_equal(st_next_stride(16, 0.9, &wide), 23);
  /* Clamping at both ends. */
  assert_int_equal(st_next_stride(64, 1.0, &paper), 64);
  assert_int_equal(st_next_stride(8, 0.5, &paper), 8);
  assert_int_equal(st_next_stride(40, 0.85, &paper), 50);
  /* Beyond the reference (which would raise): NaN means no agreement. */
  assert_int_equal(st_next_stride(40, NAN, &paper), 8);
  assert_int_equal(st_next_stride(40, INFINITY, &paper), 64);
  assert_int_equal(st_next_stride(0, INFINITY, &paper), 8);
  assert_int_equal(st_next_stride(40, -INFINITY, &paper), 8);
  assert_int_equal(st_next_stride(2000000000, 1.0, &wide), 1000);
}

static void test_stride_params_check(void **state) {
  (void)state;
  const st_stride_params ok = {.threshold = 0.8, .min_stride = 8,
                               .max_stride = 8};
  ST_ASSERT_OK(st_stride_params_check(&ok));
  const st_stride_params bad[] = {
      {.threshold = 0.0, .min_stride = 8, .max_stride = 64},
      {.threshold = 1.0, .min_stride = 8, .max_stride = 64},
      {.threshold = NAN, .min_stride = 8, .max_stride = 64},
      {.threshold = 0.8, .min_stride = 0, .max_stride = 64},
      {.threshold = 0.8, .min_stride = 9, .max_stride = 8},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(st_stride_params_check(&bad[i]), ST_EINVAL);
  assert_int_equal(st_stride_params_check(NULL), ST_EINVAL);
}

/* ---- Algorithm 1: the scripted learner -------------------------------- */

typedef struct scripted {
  double metrics[MAX_SCRIPT]; /* score() returns these in turn */
  int n_metrics;
  int used;           /* metrics consumed */
  int weights;        /* steps taken on the weights currently loaded */
  int snapshot;       /* weights at the last save_best, -1 before */
  int steps;          /* step() calls */
  char log[MAX_CALLS]; /* one letter per call: S score, T step, V save,
                          R restore */
  int calls;
  int fail_at; /* call index that fails with fail_code, -1: none */
  int fail_code;
  int overrun; /* score() called past the end of the script */
} scripted;

static int record(scripted *s, char what) {
  if (s->calls < MAX_CALLS - 1)
    s->log[s->calls] = what;
  return s->calls++ == s->fail_at ? s->fail_code : ST_OK;
}

static int scripted_score(void *ctx, double *metric) {
  scripted *s = ctx;
  int rc = record(s, 'S');
  if (rc)
    return rc;
  if (s->used >= s->n_metrics) {
    s->overrun = 1;
    return ST_ERANGE;
  }
  *metric = s->metrics[s->used++];
  return ST_OK;
}

/* The loss of the k-th step is 1/k, so last_loss identifies the step. */
static int scripted_step(void *ctx, float *loss) {
  scripted *s = ctx;
  int rc = record(s, 'T');
  if (rc)
    return rc;
  s->weights++;
  s->steps++;
  *loss = 1.0f / (float)s->steps;
  return ST_OK;
}

static int scripted_save(void *ctx) {
  scripted *s = ctx;
  int rc = record(s, 'V');
  if (rc)
    return rc;
  s->snapshot = s->weights;
  return ST_OK;
}

static int scripted_restore(void *ctx) {
  scripted *s = ctx;
  int rc = record(s, 'R');
  if (rc)
    return rc;
  if (s->snapshot < 0)
    return ST_EINVAL; /* restoring a snapshot never taken */
  s->weights = s->snapshot;
  return ST_OK;
}

static void scripted_init(scripted *s, const double *metrics, int n) {
  memset(s, 0, sizeof *s);
  assert_true(n <= MAX_SCRIPT);
  memcpy(s->metrics, metrics, (size_t)n * sizeof *metrics);
  s->n_metrics = n;
  s->snapshot = -1;
  s->fail_at = -1;
}

static st_distill_learner scripted_learner(scripted *s) {
  return (st_distill_learner){.ctx = s,
                              .score = scripted_score,
                              .step = scripted_step,
                              .save_best = scripted_save,
                              .restore_best = scripted_restore};
}

static void test_distill_matches_reference(void **state) {
  (void)state;
  json_t *root = load_fixture();
  json_t *cases = json_object_get(root, "distill");
  assert_true(json_array_size(cases) >= MIN_DISTILL_CASES);
  int restored_cases = 0, early_cases = 0, kept_cases = 0;
  size_t ci;
  json_t *c;
  json_array_foreach(cases, ci, c) {
    const char *name = json_string_value(json_object_get(c, "name"));
    json_t *jm = json_object_get(c, "metrics");
    double metrics[MAX_SCRIPT];
    int n = (int)json_array_size(jm);
    assert_true(n >= 1 && n <= MAX_SCRIPT);
    for (int i = 0; i < n; i++)
      metrics[i] = json_number_value(json_array_get(jm, (size_t)i));
    st_distill_params p = {
        .threshold = json_number_value(json_object_get(c, "threshold")),
        .max_updates =
            (int)json_integer_value(json_object_get(c, "max_updates"))};
    double want_metric = json_number_value(json_object_get(c, "metric"));
    int want_steps = (int)json_integer_value(json_object_get(c, "steps"));
    int want_weights =
        (int)json_integer_value(json_object_get(c, "final_weights"));
    int want_used = (int)json_integer_value(json_object_get(c, "scores_used"));
    /* Without a restore the reference ends on the last state, which is
     * the number of steps taken (scores after the first). */
    int want_restored = want_weights != want_used - 1;

    scripted s;
    scripted_init(&s, metrics, n);
    st_distill_learner l = scripted_learner(&s);
    st_distill_result r;
    int rc = st_distill_run(&l, &p, &r);
    if (rc != ST_OK)
      fail_msg("%s: st_distill_run -> %s (%s)", name, st_strerror(rc),
               st_error_detail());
    assert_false(s.overrun);
    if (r.metric != want_metric || r.steps != want_steps ||
        s.weights != want_weights || s.used != want_used ||
        r.restored != want_restored)
      fail_msg("%s: got metric %.17g steps %d weights %d scores %d restored "
               "%d; ref metric %.17g steps %d weights %d scores %d restored %d",
               name, r.metric, r.steps, s.weights, s.used, r.restored,
               want_metric, want_steps, want_weights, want_used,
               want_restored);
    assert_true(r.first_metric == metrics[0]);
    assert_int_equal(s.steps, want_used - 1);
    if (s.steps == 0) {
      assert_true(isnan(r.last_loss));
      /* No step, no snapshot needed. */
      assert_int_equal(s.snapshot, -1);
    } else {
      assert_true(r.last_loss == 1.0f / (float)s.steps);
    }
    restored_cases += r.restored;
    early_cases += r.steps < p.max_updates || r.metric > p.threshold;
    kept_cases += !r.restored && r.steps == p.max_updates && r.steps > 0 &&
                  !(r.metric > p.threshold);
  }
  /* Every outcome must actually be exercised. */
  assert_true(restored_cases >= 10);
  assert_true(early_cases >= 10);
  assert_true(kept_cases >= 10);
  json_decref(root);
}

/* The order of callbacks documented in distill.h. */
static void test_distill_call_order(void **state) {
  (void)state;
  static const struct {
    double metrics[8];
    int n;
    int max_updates;
    const char *log;
  } cases[] = {
      {{0.9}, 1, 8, "S"},
      {{0.5}, 1, 0, "S"},
      {{0.5, 0.6, 0.7, 0.65}, 4, 3, "SVTSVTSVTSR"},
      {{0.5, 0.4, 0.85}, 3, 3, "SVTSTS"},
      {{0.5, 0.5, 0.6}, 3, 2, "SVTSTSV"},
  };
  const st_distill_params p = {.threshold = 0.8, .max_updates = 0};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    scripted s;
    scripted_init(&s, cases[i].metrics, cases[i].n);
    st_distill_learner l = scripted_learner(&s);
    st_distill_params pi = p;
    pi.max_updates = cases[i].max_updates;
    st_distill_result r;
    ST_ASSERT_OK(st_distill_run(&l, &pi, &r));
    assert_string_equal(s.log, cases[i].log);
  }
}

/* A failing callback at any point stops the run at once with its code and
 * leaves the result untouched. */
static void test_distill_callback_errors(void **state) {
  (void)state;
  const double metrics[] = {0.5, 0.6, 0.7, 0.65};
  const st_distill_params p = {.threshold = 0.8, .max_updates = 3};
  const char *full_log = "SVTSVTSVTSR";
  int n_calls = (int)strlen(full_log);
  for (int at = 0; at < n_calls; at++) {
    scripted s;
    scripted_init(&s, metrics, 4);
    s.fail_at = at;
    s.fail_code = ST_EBACKEND;
    st_distill_learner l = scripted_learner(&s);
    st_distill_result r;
    memset(&r, 0x5a, sizeof r);
    st_distill_result untouched = r;
    int rc = st_distill_run(&l, &p, &r);
    if (rc != ST_EBACKEND)
      fail_msg("failure at call %d (%c): rc %d", at, full_log[at], rc);
    assert_int_equal(s.calls, at + 1);
    assert_memory_equal(s.log, full_log, (size_t)at + 1);
    assert_memory_equal(&r, &untouched, sizeof r);
  }
}

static void test_distill_bad_arguments(void **state) {
  (void)state;
  /* Above the threshold: a valid run scores once and stops. */
  const double metrics[] = {0.9};
  scripted s;
  scripted_init(&s, metrics, 1);
  st_distill_learner l = scripted_learner(&s);
  st_distill_result r;
  const st_distill_params ok = {.threshold = 0.8, .max_updates = 8};
  const st_distill_params bad[] = {
      {.threshold = 0.0, .max_updates = 8},
      {.threshold = 1.0, .max_updates = 8},
      {.threshold = NAN, .max_updates = 8},
      {.threshold = 0.8, .max_updates = -1},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(st_distill_run(&l, &bad[i], &r), ST_EINVAL);
  assert_int_equal(st_distill_run(&l, NULL, &r), ST_EINVAL);
  assert_int_equal(st_distill_run(NULL, &ok, &r), ST_EINVAL);
  assert_int_equal(st_distill_run(&l, &ok, NULL), ST_EINVAL);
  st_distill_learner missing = l;
  missing.restore_best = NULL;
  assert_int_equal(st_distill_run(&missing, &ok, &r), ST_EINVAL);
  assert_int_equal(s.calls, 0);
  /* The same learner still works once the arguments are right. */
  ST_ASSERT_OK(st_distill_run(&l, &ok, &r));
  assert_int_equal(s.calls, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_next_stride_grids),
      cmocka_unit_test(test_next_stride_near_integers),
      cmocka_unit_test(test_next_stride_by_hand),
      cmocka_unit_test(test_stride_params_check),
      cmocka_unit_test(test_distill_matches_reference),
      cmocka_unit_test(test_distill_call_order),
      cmocka_unit_test(test_distill_callback_errors),
      cmocka_unit_test(test_distill_bad_arguments),
  };
  return cmocka_run_group_tests_name("algorithms", tests, NULL, NULL);
}
