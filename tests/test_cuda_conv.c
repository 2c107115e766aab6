/* The algorithm-selection modes of the CUDA convolutions that test_conv.c
 * does not reach: its shared context is deterministic with cuDNN's
 * heuristic, so here contexts with opts.conv_exhaustive (cudnnFind* timing
 * every algorithm on pool buffers) and without opts.deterministic (any
 * algorithm, atomics included) compute every fixture case of
 * conv.safetensors, forward, backward-data and backward-weights, against
 * the PyTorch values; a second pass over the same tensors must give the
 * same values and take no new allocation from the system (the search's
 * temporary buffers went back to the pool, the workspace was sized when
 * the entries were built).
 *
 * Exhaustive rankings are kept for the process: the first exhaustive
 * context of each determinism here times its shapes (algo_searches > 0),
 * a second context with the same options runs no search and must give the
 * same values from the stored ranking.
 *
 * The options are CUDA's; on the CPU backend the same test runs and checks
 * the values, the steady state of oneDNN's cache and that no search is
 * counted. */
#include "conv_cases.h"
#include "testutil.h"

#include <stdio.h>
#include <string.h>

/* Passes over every case; the second and later ones must allocate
 * nothing. */
#define PASSES 2

static void case_load(st_backend *be, const st_safetensors *fx,
                      const char *cname, conv_case *c) {
  conv_case_load(fx, cname, c);
  conv_case_upload(be, c);
}

static void assert_tensor_close(st_backend *be, const st_tensor *got,
                                const st_tensor *want, double atol,
                                const char *cname, const char *what,
                                const char *mode) {
  assert_true(st_tensor_same_shape(got, want));
  st_tensor h = st_test_to_host(be, got);
  char label[160];
  snprintf(label, sizeof label, "%s %s (%s)", cname, what, mode);
  st_test_assert_close(h.data, want->data, (size_t)st_tensor_numel(want),
                       CONV_RTOL, atol, label);
  st_tensor_free(&h);
}

/* All three ops of one case on its backend tensors, checked. */
static void case_run(st_backend *be, conv_case *c, const char *mode) {
  /* beta = 1 adds into y: start every pass from the residual. */
  if (c->beta)
    ST_ASSERT_OK(
        st_tensor_upload(be, &c->dev_y, c->y0.data, st_tensor_nbytes(&c->y0)));
  ST_ASSERT_OK(st_conv2d_fwd(
      be, &c->p, &c->dev_x, &c->dev_w, c->has_bias ? &c->dev_b : NULL,
      c->relu ? ST_ACT_RELU : ST_ACT_NONE, c->beta ? 1.0f : 0.0f, &c->dev_y));
  ST_ASSERT_OK(
      st_conv2d_bwd_data(be, &c->p, &c->dev_dy, &c->dev_w, &c->dev_dx));
  ST_ASSERT_OK(st_conv2d_bwd_weights(be, &c->p, &c->dev_x, &c->dev_dy,
                                     &c->dev_dw,
                                     c->has_bias ? &c->dev_db : NULL));
  assert_tensor_close(be, &c->dev_y, &c->y, CONV_ATOL, c->name, "y", mode);
  assert_tensor_close(be, &c->dev_dx, &c->dx, CONV_ATOL, c->name, "dx", mode);
  assert_tensor_close(be, &c->dev_dw, &c->dw, CONV_GRAD_ATOL, c->name, "dw",
                      mode);
  if (c->has_bias)
    assert_tensor_close(be, &c->dev_db, &c->db, CONV_GRAD_ATOL, c->name, "db",
                        mode);
}

/* Every case, PASSES times, on a fresh context with the given options.
 * Returns the algorithm searches the context ran. */
static int64_t run_mode(st_backend_kind kind, int exhaustive, int deterministic,
                        const char *mode) {
  st_backend_options opts = {.kind = kind,
                             .deterministic = deterministic,
                             .conv_exhaustive = exhaustive};
  st_backend *be = NULL;
  ST_ASSERT_OK(st_backend_new(&opts, &be));
  st_safetensors *fx = st_test_fixture_open(CONV_FIXTURE);
  conv_case cases[conv_case_count];
  for (size_t i = 0; i < conv_case_count; i++)
    case_load(be, fx, conv_case_names[i], &cases[i]);
  st_backend_stats warm, after;
  memset(&warm, 0, sizeof warm);
  for (int pass = 0; pass < PASSES; pass++) {
    for (size_t i = 0; i < conv_case_count; i++)
      case_run(be, &cases[i], mode);
    ST_ASSERT_OK(st_backend_sync(be));
    if (pass == 0) {
      st_backend_get_stats(be, &warm);
      continue;
    }
    st_backend_get_stats(be, &after);
    if (after.alloc_calls != warm.alloc_calls)
      fail_msg("%s: pass %d took %lld new allocations", mode, pass + 1,
               (long long)(after.alloc_calls - warm.alloc_calls));
    if (after.algo_searches != warm.algo_searches)
      fail_msg("%s: pass %d ran %lld new algorithm searches", mode, pass + 1,
               (long long)(after.algo_searches - warm.algo_searches));
  }
  /* One search at most per op of a case (cases may share shapes). */
  assert_true(warm.algo_searches <= 3 * (int64_t)conv_case_count);
  if (!exhaustive || kind != ST_BACKEND_CUDA)
    assert_int_equal(warm.algo_searches, 0);
  for (size_t i = 0; i < conv_case_count; i++)
    conv_case_free(&cases[i]);
  st_safetensors_free(fx);
  st_backend_free(be);
  return warm.algo_searches;
}

/* Two contexts in turn, exhaustive: on CUDA the first times the shapes (it
 * is the first of its determinism in this process), the second takes the
 * stored rankings. */
static void run_exhaustive_twice(st_backend_kind kind, int deterministic,
                                 const char *mode) {
  char again[96];
  snprintf(again, sizeof again, "%s, second context", mode);
  const int64_t first = run_mode(kind, 1, deterministic, mode);
  const int64_t second = run_mode(kind, 1, deterministic, again);
  if (kind == ST_BACKEND_CUDA && first == 0)
    fail_msg("%s: the first exhaustive context ran no search", mode);
  if (second != 0)
    fail_msg("%s: searched %lld shapes the process had ranked", again,
             (long long)second);
}

static void test_exhaustive_deterministic(void **state) {
  st_backend *be = st_test_backend(state);
  run_exhaustive_twice(st_backend_get_kind(be), 1, "exhaustive, deterministic");
}

static void test_exhaustive_any_algorithm(void **state) {
  st_backend *be = st_test_backend(state);
  run_exhaustive_twice(st_backend_get_kind(be), 0, "exhaustive");
}

static void test_heuristic_any_algorithm(void **state) {
  st_backend *be = st_test_backend(state);
  run_mode(st_backend_get_kind(be), 0, 0, "heuristic");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exhaustive_deterministic),
      cmocka_unit_test(test_exhaustive_any_algorithm),
      cmocka_unit_test(test_heuristic_any_algorithm),
  };
  return st_test_run_on_backends("cuda_conv", tests,
                                 sizeof tests / sizeof tests[0])
             ? 1
             : 0;
}
