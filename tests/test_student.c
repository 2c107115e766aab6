/* The student against the PyTorch reference: parameter counts, forward
 * logits, distillation losses, distilled logits and weights, on two odd
 * frame sizes, partial and full distillation, plus weight-file checks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models/student.h"
#include "testutil.h"

/* Reference tolerances from the foundation issue. */
#define LOGITS_RTOL 1e-4
#define DISTILLED_RTOL 1e-3
#define WEIGHTS_RTOL 1e-3
/* Adam moves every weight by about lr per step whatever its gradient's size,
 * so a weight's error is a fraction of lr (0.01): allow 1 % of one step. */
#define WEIGHTS_ATOL 1e-4

static const char *const sizes[] = {"student_37x59.safetensors",
                                    "student_45x83.safetensors"};

typedef struct example {
  st_safetensors *fx;
  st_tensor image, label, weight;
} example;

static void example_open(example *ex, const char *name) {
  ex->fx = st_test_fixture_open(name);
  ex->image = st_test_fixture_tensor(ex->fx, "image");
  ex->label = st_test_fixture_tensor(ex->fx, "label");
  ex->weight = st_test_fixture_tensor(ex->fx, "weight");
}

static void example_close(example *ex) {
  st_tensor_free(&ex->image);
  st_tensor_free(&ex->label);
  st_tensor_free(&ex->weight);
  st_safetensors_free(ex->fx);
}

static st_student *student_from_fixture(st_backend *be) {
  st_student_options o;
  st_student_options_default(&o);
  st_student *s = NULL;
  ST_ASSERT_OK(st_student_new(be, &o, &s));
  st_safetensors *w = st_test_fixture_open("student_weights.safetensors");
  ST_ASSERT_OK(st_student_load(s, w, "student_weights.safetensors"));
  st_safetensors_free(w);
  return s;
}

/* Relative comparison scaled by the largest reference magnitude, so values
 * near zero do not demand more than float precision. */
static void assert_close_scaled(const float *got, const float *want, size_t n,
                                double rtol, const char *what) {
  double scale = 0.0;
  for (size_t i = 0; i < n; i++)
    scale = fmax(scale, fabs(want[i]));
  st_test_assert_close(got, want, n, rtol, rtol * scale, what);
}

static void assert_logits(st_backend *be, const st_tensor *logits,
                          const st_safetensors *fx, const char *name,
                          double rtol) {
  st_tensor want = st_test_fixture_tensor(fx, name);
  st_tensor got = st_test_to_host(be, logits);
  assert_int_equal(st_tensor_numel(&got), st_tensor_numel(&want));
  assert_close_scaled(got.data, want.data, (size_t)st_tensor_numel(&want),
                      rtol, name);
  st_tensor_free(&want);
  st_tensor_free(&got);
}

static void test_param_counts(void **state) {
  st_backend *be = st_test_backend(state);
  st_student_options o;
  st_student_options_default(&o);
  st_student *s = NULL;
  ST_ASSERT_OK(st_student_new(be, &o, &s));
  assert_int_equal(st_student_param_count(s, 0), 483873);
  assert_int_equal(st_student_param_count(s, 1), 103465);
  assert_non_null(st_student_tensor_name(s, 0));
  assert_true(st_student_tensor_index(s, "enc1.long_path.0.weight") >= 0);
  assert_true(st_student_tensor_index(s, "enc2.short_path.weight") < 0);
  ST_ASSERT_OK(st_student_set_trainable(s, NULL, 0, 1));
  assert_int_equal(st_student_param_count(s, 1), 483873);
  st_student_free(s);
}

static void test_forward_matches_reference(void **state) {
  st_backend *be = st_test_backend(state);
  st_student *s = student_from_fixture(be);
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    example ex;
    example_open(&ex, sizes[k]);
    const st_tensor *logits = NULL;
    /* Twice: the second call runs on the already planned buffers. */
    for (int rep = 0; rep < 2; rep++) {
      ST_ASSERT_OK(st_student_forward(s, &ex.image, &logits));
      assert_logits(be, logits, ex.fx, "logits", LOGITS_RTOL);
    }
    example_close(&ex);
  }
  st_student_free(s);
}

/* The class map a device shows is the argmax of the logits
 * st_student_forward returns, to the last pixel (one backend computes
 * both), whether or not frame-sized logits were ever planned. */
static void test_predict_matches_forward(void **state) {
  st_backend *be = st_test_backend(state);
  st_student *s = student_from_fixture(be);
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    example ex;
    example_open(&ex, sizes[k]);
    const int64_t h = ex.image.shape[0], w = ex.image.shape[1];
    const int64_t map_shape[2] = {h, w};
    st_tensor first, again;
    ST_ASSERT_OK(st_tensor_alloc(NULL, &first, ST_U8, 2, map_shape));
    ST_ASSERT_OK(st_tensor_alloc(NULL, &again, ST_U8, 2, map_shape));
    ST_ASSERT_OK(st_student_predict(s, &ex.image, &first));
    const st_tensor *logits = NULL;
    ST_ASSERT_OK(st_student_forward(s, &ex.image, &logits));
    st_tensor hl = st_test_to_host(be, logits);
    ST_ASSERT_OK(st_student_predict(s, &ex.image, &again));
    const int64_t c = hl.shape[1], hw = h * w;
    const float *lv = hl.data;
    const uint8_t *p1 = first.data, *p2 = again.data;
    int64_t classes_seen = 0, seen[256] = {0};
    for (int64_t i = 0; i < hw; i++) {
      int best = 0;
      for (int64_t j = 1; j < c; j++)
        if (lv[j * hw + i] > lv[best * hw + i])
          best = (int)j;
      if (p1[i] != best || p2[i] != best)
        fail_msg("%lldx%lld pixel %lld: class %d then %d, argmax %d",
                 (long long)h, (long long)w, (long long)i, p1[i], p2[i],
                 best);
      classes_seen += !seen[best]++;
    }
    assert_true(classes_seen > 1); /* not a constant map */
    st_tensor_free(&hl);
    st_tensor_free(&first);
    st_tensor_free(&again);
    example_close(&ex);
  }
  st_student_free(s);
}

static void test_score_matches_reference_miou(void **state) {
  st_backend *be = st_test_backend(state);
  st_student *s = student_from_fixture(be);
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    example ex;
    example_open(&ex, sizes[k]);
    st_tensor want = st_test_fixture_tensor(ex.fx, "miou");
    ST_ASSERT_OK(st_student_set_example(s, &ex.image, &ex.label, &ex.weight));
    double miou = -1.0;
    ST_ASSERT_OK(st_student_score(s, &miou));
    /* A GPU's logits differ in the last bits, enough to flip a near tie. */
    assert_float_equal(miou, ((float *)want.data)[0],
                       st_test_on_gpu() ? 1e-2 : 1e-6);
    st_tensor_free(&want);
    example_close(&ex);
  }
  st_student_free(s);
}

static void assert_distilled_weights(st_backend *be, st_student *s,
                                     const st_safetensors *fx) {
  int compared = 0, mismatched = 0;
  for (size_t i = 0; i < st_student_tensor_count(s); i++) {
    char key[128], mkey[128];
    const char *name = st_student_tensor_name(s, i);
    snprintf(key, sizeof key, "after.%s", name);
    snprintf(mkey, sizeof mkey, "mask.%s", name);
    st_tensor want, mask;
    if (st_safetensors_read(fx, key, &want) == ST_ENOENT)
      continue;
    ST_ASSERT_OK(st_safetensors_read(fx, mkey, &mask));
    st_tensor got = st_test_to_host(be, st_student_tensor(s, i));
    const float *g = got.data, *w = want.data;
    const uint8_t *m = mask.data;
    for (int64_t e = 0; e < st_tensor_numel(&want); e++) {
      if (!m[e])
        continue;
      if (!(fabs(g[e] - w[e]) <= WEIGHTS_RTOL * fabs(w[e]) + WEIGHTS_ATOL)) {
        print_message("%s[%lld]: got %.9g want %.9g\n", name, (long long)e,
                      g[e], w[e]);
        mismatched++;
      }
      compared++;
    }
    st_tensor_free(&got);
    st_tensor_free(&want);
    st_tensor_free(&mask);
  }
  /* Most of the 103,465 trainable parameters carry a real gradient. */
  assert_true(compared > 90000);
  assert_int_equal(mismatched, 0);
}

static void run_distill(st_backend *be, st_student *s, const example *ex,
                        const char *losses_key, int steps) {
  st_tensor want = st_test_fixture_tensor(ex->fx, losses_key);
  assert_int_equal(st_tensor_numel(&want), steps);
  ST_ASSERT_OK(st_student_set_example(s, &ex->image, &ex->label, &ex->weight));
  float losses[8];
  for (int k = 0; k < steps; k++)
    ST_ASSERT_OK(st_student_train_step(s, &losses[k], NULL));
  st_test_assert_close(losses, want.data, (size_t)steps, LOGITS_RTOL, 0.0,
                       losses_key);
  st_tensor_free(&want);
  (void)be;
}

static void test_partial_distillation_matches_reference(void **state) {
  st_backend *be = st_test_backend(state);
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    st_student *s = student_from_fixture(be);
    example ex;
    example_open(&ex, sizes[k]);
    run_distill(be, s, &ex, "losses", 2);
    const st_tensor *logits;
    ST_ASSERT_OK(st_student_forward(s, &ex.image, &logits));
    assert_logits(be, logits, ex.fx, "logits_after", DISTILLED_RTOL);
    assert_distilled_weights(be, s, ex.fx);
    /* Frozen tensors did not move. */
    st_safetensors *w0 = st_test_fixture_open("student_weights.safetensors");
    long idx = st_student_tensor_index(s, "enc3.long_path.0.weight");
    st_tensor before = st_test_fixture_tensor(w0, "enc3.long_path.0.weight");
    st_tensor now = st_test_to_host(be, st_student_tensor(s, (size_t)idx));
    assert_memory_equal(before.data, now.data, st_tensor_nbytes(&now));
    st_tensor_free(&before);
    st_tensor_free(&now);
    st_safetensors_free(w0);
    example_close(&ex);
    st_student_free(s);
  }
}

static void test_full_distillation_matches_reference(void **state) {
  st_backend *be = st_test_backend(state);
  st_student *s = student_from_fixture(be);
  ST_ASSERT_OK(st_student_set_trainable(s, NULL, 0, 1));
  example ex;
  example_open(&ex, sizes[0]);
  run_distill(be, s, &ex, "full_losses", 2);
  const st_tensor *logits;
  ST_ASSERT_OK(st_student_forward(s, &ex.image, &logits));
  assert_logits(be, logits, ex.fx, "full_logits_after", DISTILLED_RTOL);
  example_close(&ex);
  st_student_free(s);
}

static void test_best_snapshot_restores_weights(void **state) {
  st_backend *be = st_test_backend(state);
  st_student *s = student_from_fixture(be);
  example ex;
  example_open(&ex, sizes[0]);
  ST_ASSERT_OK(st_student_set_example(s, &ex.image, &ex.label, &ex.weight));
  double m0, m1, m2;
  ST_ASSERT_OK(st_student_score(s, &m0));
  ST_ASSERT_OK(st_student_save_best(s));
  float loss;
  ST_ASSERT_OK(st_student_train_step(s, &loss, &m1));
  assert_float_equal(m1, m0, 0.0); /* the step's forward is the scored one */
  ST_ASSERT_OK(st_student_score(s, &m1));
  ST_ASSERT_OK(st_student_restore_best(s));
  ST_ASSERT_OK(st_student_score(s, &m2));
  assert_float_equal(m2, m0, 0.0);
  const st_tensor *logits;
  ST_ASSERT_OK(st_student_forward(s, &ex.image, &logits));
  assert_logits(be, logits, ex.fx, "logits", LOGITS_RTOL);
  example_close(&ex);
  st_student_free(s);
}

/* Algorithm 1 driving the real student: with an unreachable threshold it
 * takes every step, and the student ends holding the best scored weights. */
static void test_algorithm1_on_student(void **state) {
  st_backend *be = st_test_backend(state);
  st_student *s = student_from_fixture(be);
  example ex;
  example_open(&ex, sizes[1]);
  ST_ASSERT_OK(st_student_set_example(s, &ex.image, &ex.label, &ex.weight));
  st_distill_learner l = st_student_learner(s);
  const st_distill_params p = {.threshold = 0.999, .max_updates = 4};
  st_distill_result r;
  ST_ASSERT_OK(st_distill_run(&l, &p, &r));
  assert_int_equal(r.steps, 4);
  st_tensor first = st_test_fixture_tensor(ex.fx, "miou");
  assert_float_equal(r.first_metric, ((float *)first.data)[0],
                     st_test_on_gpu() ? 1e-2 : 1e-6);
  assert_true(r.metric >= r.first_metric);
  double now;
  ST_ASSERT_OK(st_student_score(s, &now));
  assert_float_equal(now, r.metric, 0.0);
  st_tensor_free(&first);
  example_close(&ex);
  st_student_free(s);
}

/* Host copies of every tensor of a student, for comparisons. */
static void assert_same_weights(st_backend *be, st_student *a, st_student *b) {
  for (size_t i = 0; i < st_student_tensor_count(a); i++) {
    st_tensor x = st_test_to_host(be, st_student_tensor(a, i));
    st_tensor y = st_test_to_host(be, st_student_tensor(b, i));
    st_test_assert_close(x.data, y.data, (size_t)st_tensor_numel(&x), 0.0, 0.0,
                         st_student_tensor_name(a, i));
    st_tensor_free(&x);
    st_tensor_free(&y);
  }
}

/* Reusing the frozen modules' outputs across the steps of one example
 * gives what recomputing them every time (the reference's way) gives:
 * the same losses, scores and weights, to the bit on the CPU. */
static void test_frozen_reuse_equals_recompute(void **state) {
  st_backend *be = st_test_backend(state);
  st_student *reuse = student_from_fixture(be);
  st_student *again = student_from_fixture(be);
  st_student_recompute_frozen(again, 1);
  example ex;
  example_open(&ex, sizes[1]);
  st_student *both[2] = {reuse, again};
  float losses[2][4];
  double scores[2][4];
  for (int k = 0; k < 2; k++) {
    ST_ASSERT_OK(
        st_student_set_example(both[k], &ex.image, &ex.label, &ex.weight));
    for (int i = 0; i < 4; i++) {
      ST_ASSERT_OK(st_student_train_step(both[k], &losses[k][i], NULL));
      ST_ASSERT_OK(st_student_score(both[k], &scores[k][i]));
    }
  }
  st_test_assert_close(losses[0], losses[1], 4, 0.0, 0.0, "losses");
  for (int i = 0; i < 4; i++)
    assert_float_equal(scores[0][i], scores[1][i],
                       st_test_on_gpu() ? 1e-2 : 0.0);
  assert_same_weights(be, reuse, again);
  example_close(&ex);
  st_student_free(again);
  st_student_free(reuse);
}

/* The first step's loss of `s` on the example after its weights were
 * replaced in the middle of an example (the kept frozen outputs belong to
 * the old weights) equals that of a student that had the new weights from
 * the start. Both ways a caller replaces weights: a learner state, and
 * writes through st_student_tensor (an update arriving). */
static void test_weight_change_recomputes_frozen(void **state) {
  st_backend *be = st_test_backend(state);
  st_student_options o;
  st_student_options_default(&o);
  o.seed = 7;
  st_student *other = NULL;
  ST_ASSERT_OK(st_student_new(be, &o, &other));
  st_student_state *other_state = NULL;
  ST_ASSERT_OK(st_student_state_new(other, &other_state));
  example ex;
  example_open(&ex, sizes[0]);
  float want, got;
  ST_ASSERT_OK(st_student_set_example(other, &ex.image, &ex.label, &ex.weight));
  ST_ASSERT_OK(st_student_train_step(other, &want, NULL));

  for (int way = 0; way < 2; way++) {
    st_student *s = student_from_fixture(be);
    double before;
    ST_ASSERT_OK(st_student_set_example(s, &ex.image, &ex.label, &ex.weight));
    ST_ASSERT_OK(st_student_score(s, &before));
    if (way == 0) {
      ST_ASSERT_OK(st_student_state_load(s, other_state));
    } else {
      for (size_t i = 0; i < st_student_tensor_count(s); i++) {
        size_t n;
        const float *v = st_student_state_values(other_state, i, &n);
        ST_ASSERT_OK(st_tensor_upload(be, st_student_tensor(s, i), v,
                                      n * sizeof(float)));
      }
    }
    ST_ASSERT_OK(st_student_train_step(s, &got, NULL));
    st_test_assert_close(&got, &want, 1, 0.0, 0.0,
                         way ? "loss after tensor writes"
                             : "loss after a state load");
    st_student_free(s);
  }
  example_close(&ex);
  st_student_state_free(other_state);
  st_student_free(other);
}

static void test_weight_file_errors(void **state) {
  st_backend *be = st_test_backend(state);
  st_student_options o;
  st_student_options_default(&o);
  o.num_classes = 5; /* out_conv3 no longer matches the 9-class file */
  st_student *s = NULL;
  ST_ASSERT_OK(st_student_new(be, &o, &s));
  st_safetensors *w = st_test_fixture_open("student_weights.safetensors");
  assert_int_equal(st_student_load(s, w, "w.safetensors"), ST_ESHAPE);
  assert_non_null(strstr(st_error_detail(), "out_conv3.weight"));
  st_safetensors_free(w);
  /* A file holding something else entirely. */
  w = st_test_fixture_open(sizes[0]);
  assert_int_equal(st_student_load(s, w, "x.safetensors"), ST_EFORMAT);
  assert_non_null(strstr(st_error_detail(), "not a student tensor"));
  st_safetensors_free(w);
  st_student_free(s);
}

static void test_bad_inputs_rejected(void **state) {
  st_backend *be = st_test_backend(state);
  st_student *s = student_from_fixture(be);
  example ex;
  example_open(&ex, sizes[0]);
  ((uint8_t *)ex.label.data)[5] = 9; /* not a class */
  assert_int_equal(
      st_student_set_example(s, &ex.image, &ex.label, &ex.weight), ST_ERANGE);
  float loss;
  assert_int_equal(st_student_train_step(s, &loss, NULL), ST_EINVAL);
  st_tensor f32 = st_tensor_view(ex.weight.data, ST_F32, 2, ex.weight.shape);
  const st_tensor *logits;
  assert_int_equal(st_student_forward(s, &f32, &logits), ST_ESHAPE);
  example_close(&ex);
  st_student_free(s);
}

static void test_save_load_round_trip(void **state) {
  st_backend *be = st_test_backend(state);
  st_student *s = student_from_fixture(be);
  char path[] = "/tmp/st_student_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  ST_ASSERT_OK(st_student_save(s, path));
  st_student_options o;
  st_student_options_default(&o);
  o.seed = 7;
  st_student *t = NULL;
  ST_ASSERT_OK(st_student_new(be, &o, &t));
  st_safetensors *f = NULL;
  ST_ASSERT_OK(st_safetensors_open(path, &f));
  ST_ASSERT_OK(st_student_load(t, f, path));
  for (size_t i = 0; i < st_student_tensor_count(s); i++) {
    st_tensor a = st_test_to_host(be, st_student_tensor(s, i));
    st_tensor b = st_test_to_host(be, st_student_tensor(t, i));
    assert_memory_equal(a.data, b.data, st_tensor_nbytes(&a));
    st_tensor_free(&a);
    st_tensor_free(&b);
  }
  st_safetensors_free(f);
  unlink(path);
  st_student_free(t);
  st_student_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_param_counts),
      cmocka_unit_test(test_forward_matches_reference),
      cmocka_unit_test(test_predict_matches_forward),
      cmocka_unit_test(test_score_matches_reference_miou),
      cmocka_unit_test(test_partial_distillation_matches_reference),
      cmocka_unit_test(test_full_distillation_matches_reference),
      cmocka_unit_test(test_best_snapshot_restores_weights),
      cmocka_unit_test(test_algorithm1_on_student),
      cmocka_unit_test(test_frozen_reuse_equals_recompute),
      cmocka_unit_test(test_weight_change_recomputes_frozen),
      cmocka_unit_test(test_weight_file_errors),
      cmocka_unit_test(test_bad_inputs_rejected),
      cmocka_unit_test(test_save_load_round_trip),
  };
  return st_test_run_on_backends("student", tests,
                                 sizeof tests / sizeof tests[0]);
}
