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
 * The options are CUDA's; on the CPU backend the same test runs and checks
 * the values and the steady state of oneDNN's cache. */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#define CONV_FIXTURE "conv.safetensors"

/* As in test_conv.c: fp32 against a float64 reference (raised on a GPU to
 * the testutil floors). */
#define CONV_RTOL 1e-4
#define CONV_ATOL 2e-5
#define CONV_GRAD_ATOL 1e-4

/* Passes over every case; the second and later ones must allocate
 * nothing. */
#define PASSES 2

static const char *const case_names[] = {
    "k3s1", "k3s2_relu",   "k1s2",  "k13",   "k31_sum",
    "dil2", "g2_relu_sum", "dw_s2", "mixed",
};
#define CASE_COUNT (sizeof case_names / sizeof case_names[0])

/* Index of each entry of the fixture's '<case>.params' vector. */
enum {
  PARAM_STRIDE_H,
  PARAM_STRIDE_W,
  PARAM_PAD_H,
  PARAM_PAD_W,
  PARAM_DIL_H,
  PARAM_DIL_W,
  PARAM_GROUPS,
  PARAM_BIAS,
  PARAM_RELU,
  PARAM_BETA,
  PARAM_COUNT
};

/* One fixture case: host reference tensors and the backend tensors that
 * every pass reuses, as a planned arena would. */
typedef struct conv_case {
  const char *name;
  st_conv2d_params p;
  int has_bias, relu, beta;
  /* host, from the fixture (b, db, y0 zero when absent) */
  st_tensor x, w, b, y0, y, dy, dx, dw, db;
  /* on the backend */
  st_tensor dev_x, dev_w, dev_b, dev_dy, dev_y, dev_dx, dev_dw, dev_db;
} conv_case;

static st_tensor case_tensor(const st_safetensors *fx, const char *cname,
                             const char *what) {
  char name[128];
  snprintf(name, sizeof name, "%s.%s", cname, what);
  return st_test_fixture_tensor(fx, name);
}

static void case_load(st_backend *be, const st_safetensors *fx,
                      const char *cname, conv_case *c) {
  memset(c, 0, sizeof *c);
  c->name = cname;
  st_tensor prm = case_tensor(fx, cname, "params");
  assert_int_equal(prm.dtype, ST_I32);
  assert_int_equal(st_tensor_numel(&prm), PARAM_COUNT);
  const int32_t *v = prm.data;
  c->p.stride[0] = v[PARAM_STRIDE_H];
  c->p.stride[1] = v[PARAM_STRIDE_W];
  c->p.pad[0] = v[PARAM_PAD_H];
  c->p.pad[1] = v[PARAM_PAD_W];
  c->p.dilation[0] = v[PARAM_DIL_H];
  c->p.dilation[1] = v[PARAM_DIL_W];
  c->p.groups = v[PARAM_GROUPS];
  c->has_bias = v[PARAM_BIAS];
  c->relu = v[PARAM_RELU];
  c->beta = v[PARAM_BETA];
  st_tensor_free(&prm);
  c->x = case_tensor(fx, cname, "x");
  c->w = case_tensor(fx, cname, "w");
  c->y = case_tensor(fx, cname, "y");
  c->dy = case_tensor(fx, cname, "dy");
  c->dx = case_tensor(fx, cname, "dx");
  c->dw = case_tensor(fx, cname, "dw");
  if (c->has_bias) {
    c->b = case_tensor(fx, cname, "b");
    c->db = case_tensor(fx, cname, "db");
  }
  if (c->beta)
    c->y0 = case_tensor(fx, cname, "y0");

  c->dev_x = st_test_to_backend(be, &c->x);
  c->dev_w = st_test_to_backend(be, &c->w);
  c->dev_dy = st_test_to_backend(be, &c->dy);
  ST_ASSERT_OK(st_tensor_alloc(be, &c->dev_y, ST_F32, 4, c->y.shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &c->dev_dx, ST_F32, 4, c->x.shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &c->dev_dw, ST_F32, 4, c->w.shape));
  if (c->has_bias) {
    c->dev_b = st_test_to_backend(be, &c->b);
    ST_ASSERT_OK(st_tensor_alloc(be, &c->dev_db, ST_F32, 1, c->db.shape));
  }
}

static void case_free(conv_case *c) {
  st_tensor *all[] = {&c->x,      &c->w,     &c->b,      &c->y0,    &c->y,
                      &c->dy,     &c->dx,    &c->dw,     &c->db,    &c->dev_x,
                      &c->dev_w,  &c->dev_b, &c->dev_dy, &c->dev_y, &c->dev_dx,
                      &c->dev_dw, &c->dev_db};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    st_tensor_free(all[i]);
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

/* Every case, PASSES times, on a fresh context with the given options. */
static void run_mode(st_backend_kind kind, int exhaustive, int deterministic,
                     const char *mode) {
  st_backend_options opts = {.kind = kind,
                             .deterministic = deterministic,
                             .conv_exhaustive = exhaustive};
  st_backend *be = NULL;
  ST_ASSERT_OK(st_backend_new(&opts, &be));
  st_safetensors *fx = st_test_fixture_open(CONV_FIXTURE);
  conv_case cases[CASE_COUNT];
  for (size_t i = 0; i < CASE_COUNT; i++)
    case_load(be, fx, case_names[i], &cases[i]);
  st_backend_stats warm, after;
  memset(&warm, 0, sizeof warm);
  for (int pass = 0; pass < PASSES; pass++) {
    for (size_t i = 0; i < CASE_COUNT; i++)
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
  }
  for (size_t i = 0; i < CASE_COUNT; i++)
    case_free(&cases[i]);
  st_safetensors_free(fx);
  st_backend_free(be);
}

static void test_exhaustive_deterministic(void **state) {
  st_backend *be = st_test_backend(state);
  run_mode(st_backend_get_kind(be), 1, 1, "exhaustive, deterministic");
}

static void test_exhaustive_any_algorithm(void **state) {
  st_backend *be = st_test_backend(state);
  run_mode(st_backend_get_kind(be), 1, 0, "exhaustive");
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
