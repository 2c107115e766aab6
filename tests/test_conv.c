/* Convolution ops (st_conv2d_fwd / _bwd_data / _bwd_weights) on every
 * backend: values against PyTorch (tests/fixtures/gen_conv.py, computed in
 * float64), backward ops against central finite differences of the forward,
 * and repeated / interleaved calls against the backend's primitive cache;
 * on the CPU, the algorithms oneDNN is asked for (Winograd where it has it)
 * against direct ones and float64 sums at the student's largest layers.
 *
 * With ST_CONV_BENCH=1 in the environment the executable also times the
 * student's convolutions at 720x1280 on the CPU backend and prints a table
 * (not part of the pass/fail result). */
#include "conv_cases.h"
#include "gpu/conv_cache.h"
#include "gpu/cpu/cpu_impl.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Central finite differences on the probe loss L = sum(y * r). The
 * convolution is linear, so the only error is fp32 rounding of y divided by
 * the 2h step. */
#define FD_STEP 1e-2
#define FD_RTOL 1e-2
#define FD_ATOL 2e-3
/* Elements probed per tensor (plus the first and the last). */
#define FD_PROBES 24
/* A prime stride so the probes spread over channels, rows and borders. */
#define FD_PROBE_STRIDE 7919

static void assert_tensor_close(st_backend *be, const st_tensor *got,
                                const st_tensor *want, double rtol, double atol,
                                const char *cname, const char *what) {
  assert_true(st_tensor_same_shape(got, want));
  st_tensor h = st_test_to_host(be, got);
  char label[128];
  snprintf(label, sizeof label, "%s %s", cname, what);
  st_test_assert_close(h.data, want->data, (size_t)st_tensor_numel(want), rtol,
                       atol, label);
  st_tensor_free(&h);
}

/* y = act(conv(x, w, b) + beta * y0) on the backend, with the case's own
 * fusion flags unless `plain` asks for the bare convolution (+ bias). */
static st_tensor run_forward(st_backend *be, const conv_case *c,
                             const st_tensor *xh, const st_tensor *wh,
                             const st_tensor *bh, int plain) {
  st_tensor x = st_test_to_backend(be, xh);
  st_tensor w = st_test_to_backend(be, wh);
  st_tensor b = {0};
  if (bh)
    b = st_test_to_backend(be, bh);
  int beta = plain ? 0 : c->beta;
  st_tensor y;
  if (beta)
    y = st_test_to_backend(be, &c->y0);
  else
    ST_ASSERT_OK(st_tensor_alloc(be, &y, ST_F32, 4, c->y.shape));
  st_activation act = (!plain && c->relu) ? ST_ACT_RELU : ST_ACT_NONE;
  ST_ASSERT_OK(st_conv2d_fwd(be, &c->p, &x, &w, bh ? &b : NULL, act,
                             beta ? 1.0f : 0.0f, &y));
  st_tensor_free(&x);
  st_tensor_free(&w);
  st_tensor_free(&b);
  return y;
}

static st_tensor run_bwd_data(st_backend *be, const conv_case *c) {
  st_tensor dy = st_test_to_backend(be, &c->dy);
  st_tensor w = st_test_to_backend(be, &c->w);
  st_tensor dx;
  ST_ASSERT_OK(st_tensor_alloc(be, &dx, ST_F32, 4, c->x.shape));
  ST_ASSERT_OK(st_conv2d_bwd_data(be, &c->p, &dy, &w, &dx));
  st_tensor_free(&dy);
  st_tensor_free(&w);
  return dx;
}

/* dw (and db when want_db) on the backend. */
static void run_bwd_weights(st_backend *be, const conv_case *c, int want_db,
                            st_tensor *dw, st_tensor *db) {
  st_tensor x = st_test_to_backend(be, &c->x);
  st_tensor dy = st_test_to_backend(be, &c->dy);
  ST_ASSERT_OK(st_tensor_alloc(be, dw, ST_F32, 4, c->w.shape));
  memset(db, 0, sizeof *db);
  if (want_db)
    ST_ASSERT_OK(st_tensor_alloc(be, db, ST_F32, 1, c->db.shape));
  ST_ASSERT_OK(
      st_conv2d_bwd_weights(be, &c->p, &x, &dy, dw, want_db ? db : NULL));
  st_tensor_free(&x);
  st_tensor_free(&dy);
}

/* ---- values against PyTorch -------------------------------------------- */

static void test_forward(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open(CONV_FIXTURE);
  for (size_t i = 0; i < conv_case_count; i++) {
    conv_case c;
    conv_case_load(fx, conv_case_names[i], &c);
    st_tensor y = run_forward(be, &c, &c.x, &c.w, c.has_bias ? &c.b : NULL, 0);
    assert_tensor_close(be, &y, &c.y, CONV_RTOL, CONV_ATOL, c.name, "y");
    st_tensor_free(&y);
    conv_case_free(&c);
  }
  st_safetensors_free(fx);
}

/* The fused ReLU and residual add must really be applied: on the fused cases
 * the plain convolution differs from the fixture's y. */
static void test_forward_fusions_matter(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open(CONV_FIXTURE);
  int fused = 0;
  for (size_t i = 0; i < conv_case_count; i++) {
    conv_case c;
    conv_case_load(fx, conv_case_names[i], &c);
    if (c.relu || c.beta) {
      fused++;
      st_tensor y =
          run_forward(be, &c, &c.x, &c.w, c.has_bias ? &c.b : NULL, 1);
      st_tensor h = st_test_to_host(be, &y);
      const float *got = h.data, *want = c.y.data;
      size_t differ = 0, n = (size_t)st_tensor_numel(&c.y);
      for (size_t j = 0; j < n; j++)
        differ += fabsf(got[j] - want[j]) > 1e-3f;
      assert_true(differ > n / 4);
      st_tensor_free(&h);
      st_tensor_free(&y);
    }
    conv_case_free(&c);
  }
  assert_true(fused >= 3);
  st_safetensors_free(fx);
}

static void test_bwd_data(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open(CONV_FIXTURE);
  for (size_t i = 0; i < conv_case_count; i++) {
    conv_case c;
    conv_case_load(fx, conv_case_names[i], &c);
    st_tensor dx = run_bwd_data(be, &c);
    assert_tensor_close(be, &dx, &c.dx, CONV_RTOL, CONV_ATOL, c.name, "dx");
    st_tensor_free(&dx);
    conv_case_free(&c);
  }
  st_safetensors_free(fx);
}

static void test_bwd_weights(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open(CONV_FIXTURE);
  for (size_t i = 0; i < conv_case_count; i++) {
    conv_case c;
    conv_case_load(fx, conv_case_names[i], &c);
    st_tensor dw, db;
    run_bwd_weights(be, &c, c.has_bias, &dw, &db);
    assert_tensor_close(be, &dw, &c.dw, CONV_RTOL, CONV_GRAD_ATOL, c.name,
                        "dw");
    if (c.has_bias)
      assert_tensor_close(be, &db, &c.db, CONV_RTOL, CONV_GRAD_ATOL, c.name,
                          "db");
    st_tensor_free(&dw);
    st_tensor_free(&db);
    /* Without the bias gradient the weight gradient is unchanged. */
    if (c.has_bias) {
      run_bwd_weights(be, &c, 0, &dw, &db);
      assert_tensor_close(be, &dw, &c.dw, CONV_RTOL, CONV_GRAD_ATOL, c.name,
                          "dw (no db)");
      st_tensor_free(&dw);
    }
    conv_case_free(&c);
  }
  st_safetensors_free(fx);
}

/* ---- finite differences ------------------------------------------------- */

/* L = sum(conv(x, w, b) * r) in double, r = the case's dy. */
static double probe_loss(st_backend *be, const conv_case *c,
                         const st_tensor *xh, const st_tensor *wh,
                         const st_tensor *bh) {
  st_tensor y = run_forward(be, c, xh, wh, bh, 1);
  st_tensor h = st_test_to_host(be, &y);
  const float *yv = h.data, *r = c->dy.data;
  double loss = 0.0;
  for (int64_t i = 0; i < st_tensor_numel(&h); i++)
    loss += (double)yv[i] * (double)r[i];
  st_tensor_free(&h);
  st_tensor_free(&y);
  return loss;
}

/* Compares the analytic gradient `grad` (host) of the probe loss with
 * respect to `param` (one of the case's host inputs, perturbed in place and
 * restored) with central differences at FD_PROBES + 2 elements. */
static void check_fd(st_backend *be, const conv_case *c, st_tensor *param,
                     const st_tensor *grad, const char *what) {
  const st_tensor *bias = c->has_bias ? &c->b : NULL;
  float *v = param->data;
  const float *g = grad->data;
  int64_t n = st_tensor_numel(param);
  for (int k = 0; k < FD_PROBES + 2; k++) {
    int64_t i = k == 0   ? 0
                : k == 1 ? n - 1
                         : ((int64_t)k * FD_PROBE_STRIDE) % n;
    float saved = v[i];
    v[i] = saved + (float)FD_STEP;
    double up = probe_loss(be, c, &c->x, &c->w, bias);
    v[i] = saved - (float)FD_STEP;
    double down = probe_loss(be, c, &c->x, &c->w, bias);
    v[i] = saved;
    /* The step actually taken in fp32, not the nominal one. */
    double step =
        (double)(saved + (float)FD_STEP) - (double)(saved - (float)FD_STEP);
    double fd = (up - down) / step;
    double err = fabs(fd - (double)g[i]);
    if (err > FD_ATOL + FD_RTOL * fabs(fd))
      fail_msg("%s d%s[%lld]: analytic %.6g, finite difference %.6g", c->name,
               what, (long long)i, (double)g[i], fd);
  }
  /* A gradient of zeros would pass only if the loss were flat. */
  double gmax = 0.0;
  for (int64_t i = 0; i < n; i++)
    gmax = fmax(gmax, fabs((double)g[i]));
  assert_true(gmax > 10 * FD_ATOL);
}

static void test_fd_backward(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open(CONV_FIXTURE);
  for (size_t i = 0; i < conv_case_count; i++) {
    conv_case c;
    conv_case_load(fx, conv_case_names[i], &c);
    st_tensor dx = run_bwd_data(be, &c);
    st_tensor dxh = st_test_to_host(be, &dx);
    check_fd(be, &c, &c.x, &dxh, "x");
    st_tensor dw, db;
    run_bwd_weights(be, &c, c.has_bias, &dw, &db);
    st_tensor dwh = st_test_to_host(be, &dw);
    check_fd(be, &c, &c.w, &dwh, "w");
    if (c.has_bias) {
      st_tensor dbh = st_test_to_host(be, &db);
      check_fd(be, &c, &c.b, &dbh, "b");
      st_tensor_free(&dbh);
    }
    st_tensor_free(&dx);
    st_tensor_free(&dxh);
    st_tensor_free(&dw);
    st_tensor_free(&db);
    st_tensor_free(&dwh);
    conv_case_free(&c);
  }
  st_safetensors_free(fx);
}

/* ---- the primitive cache ------------------------------------------------ */

static int same_bits(st_backend *be, const st_tensor *a, const st_tensor *b) {
  st_tensor ha = st_test_to_host(be, a), hb = st_test_to_host(be, b);
  int same = st_tensor_same_shape(&ha, &hb) &&
             memcmp(ha.data, hb.data, st_tensor_nbytes(&ha)) == 0;
  st_tensor_free(&ha);
  st_tensor_free(&hb);
  return same;
}

/* Repeated calls with the same shapes reuse the cached primitives and give
 * identical bits; calls with two different shapes interleaved (on the same
 * tensors each time, and on fresh tensors) do not disturb each other. */
static void test_cache_reuse(void **state) {
  enum { ROUNDS = 3 };
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open(CONV_FIXTURE);
  conv_case a, b;
  conv_case_load(fx, "g2_relu_sum", &a); /* grouped, fused ReLU and sum */
  conv_case_load(fx, "dw_s2", &b);       /* depthwise, strided, other sizes */

  st_tensor ya0 = run_forward(be, &a, &a.x, &a.w, &a.b, 0);
  st_tensor yb0 = run_forward(be, &b, &b.x, &b.w, &b.b, 0);
  st_tensor dxa0 = run_bwd_data(be, &a);
  st_tensor dxb0 = run_bwd_data(be, &b);
  assert_tensor_close(be, &ya0, &a.y, CONV_RTOL, CONV_ATOL, a.name, "y");
  assert_tensor_close(be, &yb0, &b.y, CONV_RTOL, CONV_ATOL, b.name, "y");

  /* Same tensors every round, as a planned arena would pass them. */
  st_tensor xa = st_test_to_backend(be, &a.x),
            wa = st_test_to_backend(be, &a.w);
  st_tensor ba = st_test_to_backend(be, &a.b);
  st_tensor xb = st_test_to_backend(be, &b.x),
            wb = st_test_to_backend(be, &b.w);
  st_tensor bb = st_test_to_backend(be, &b.b);
  st_tensor ya, yb;
  ST_ASSERT_OK(st_tensor_alloc(be, &ya, ST_F32, 4, a.y.shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &yb, ST_F32, 4, b.y.shape));
  for (int r = 0; r < ROUNDS; r++) {
    /* beta = 1 adds into y, so reload the residual every round. */
    ST_ASSERT_OK(st_tensor_upload(be, &ya, a.y0.data, st_tensor_nbytes(&a.y0)));
    ST_ASSERT_OK(
        st_conv2d_fwd(be, &a.p, &xa, &wa, &ba, ST_ACT_RELU, 1.0f, &ya));
    ST_ASSERT_OK(
        st_conv2d_fwd(be, &b.p, &xb, &wb, &bb, ST_ACT_NONE, 0.0f, &yb));
    assert_true(same_bits(be, &ya, &ya0));
    assert_true(same_bits(be, &yb, &yb0));
  }
  /* Fresh tensors (new addresses) through the same cached entries, with
   * backward calls interleaved. */
  for (int r = 0; r < ROUNDS; r++) {
    st_tensor y1 = run_forward(be, &b, &b.x, &b.w, &b.b, 0);
    st_tensor dx1 = run_bwd_data(be, &a);
    st_tensor y2 = run_forward(be, &a, &a.x, &a.w, &a.b, 0);
    st_tensor dx2 = run_bwd_data(be, &b);
    assert_true(same_bits(be, &y1, &yb0));
    assert_true(same_bits(be, &y2, &ya0));
    assert_true(same_bits(be, &dx1, &dxa0));
    assert_true(same_bits(be, &dx2, &dxb0));
    st_tensor_free(&y1);
    st_tensor_free(&dx1);
    st_tensor_free(&y2);
    st_tensor_free(&dx2);
  }
  st_tensor *all[] = {&ya0, &yb0, &dxa0, &dxb0, &xa, &wa,
                      &ba,  &xb,  &wb,   &bb,   &ya, &yb};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    st_tensor_free(all[i]);
  conv_case_free(&a);
  conv_case_free(&b);
  st_safetensors_free(fx);
}

/* Output (o, i, j) of a direct convolution in double (N = 1, no groups, no
 * dilation): an independent reference for shapes the fixture does not
 * hold. */
static double naive_conv_at(const st_conv2d_params *p, const st_tensor *x,
                            const st_tensor *w, const st_tensor *b, int64_t o,
                            int64_t i, int64_t j) {
  const float *xv = x->data, *wv = w->data, *bv = b->data;
  int64_t cin = x->shape[1], h = x->shape[2], wd = x->shape[3];
  int64_t kh = w->shape[2], kw = w->shape[3];
  double acc = bv[o];
  for (int64_t c = 0; c < cin; c++)
    for (int64_t u = 0; u < kh; u++)
      for (int64_t v = 0; v < kw; v++) {
        int64_t r = i * p->stride[0] - p->pad[0] + u;
        int64_t q = j * p->stride[1] - p->pad[1] + v;
        if (r >= 0 && r < h && q >= 0 && q < wd)
          acc += (double)xv[(c * h + r) * wd + q] *
                 (double)wv[((o * cin + c) * kh + u) * kw + v];
      }
  return acc;
}

/* The whole of naive_conv_at's convolution into y. */
static void naive_conv(const st_conv2d_params *p, const st_tensor *x,
                       const st_tensor *w, const st_tensor *b, st_tensor *y) {
  float *yv = y->data;
  int64_t cout = w->shape[0], oh = y->shape[2], ow = y->shape[3];
  for (int64_t o = 0; o < cout; o++)
    for (int64_t i = 0; i < oh; i++)
      for (int64_t j = 0; j < ow; j++)
        yv[(o * oh + i) * ow + j] = (float)naive_conv_at(p, x, w, b, o, i, j);
}

/* More distinct shapes than either backend's cache holds (CPU 96 entries,
 * CUDA 128), in two sweeps: entries are evicted and rebuilt, and every
 * result still matches a direct computation. */
static void test_cache_eviction(void **state) {
  enum { SHAPES = 160, SWEEPS = 2, CIN = 2, COUT = 3, WIDTH = 5 };
  st_backend *be = st_test_backend(state);
  st_conv2d_params p = {{1, 1}, {1, 1}, {1, 1}, 1};
  st_tensor w, b, wd, bd;
  int64_t wshape[4] = {COUT, CIN, 3, 3}, bshape[1] = {COUT};
  ST_ASSERT_OK(st_tensor_alloc(NULL, &w, ST_F32, 4, wshape));
  ST_ASSERT_OK(st_tensor_alloc(NULL, &b, ST_F32, 1, bshape));
  st_test_fill_uniform(w.data, (size_t)st_tensor_numel(&w), 11, -0.5f, 0.5f);
  st_test_fill_uniform(b.data, COUT, 12, -0.5f, 0.5f);
  wd = st_test_to_backend(be, &w);
  bd = st_test_to_backend(be, &b);
  for (int sweep = 0; sweep < SWEEPS; sweep++) {
    for (int64_t h = 1; h <= SHAPES; h++) {
      st_tensor x, want;
      ST_ASSERT_OK(st_tensor_alloc4(NULL, &x, ST_F32, 1, CIN, h, WIDTH));
      ST_ASSERT_OK(st_tensor_alloc4(NULL, &want, ST_F32, 1, COUT, h, WIDTH));
      st_test_fill_uniform(x.data, (size_t)st_tensor_numel(&x), (uint64_t)h,
                           -1.0f, 1.0f);
      naive_conv(&p, &x, &w, &b, &want);
      st_tensor xd = st_test_to_backend(be, &x), yd;
      ST_ASSERT_OK(st_tensor_alloc4(be, &yd, ST_F32, 1, COUT, h, WIDTH));
      ST_ASSERT_OK(
          st_conv2d_fwd(be, &p, &xd, &wd, &bd, ST_ACT_NONE, 0.0f, &yd));
      assert_tensor_close(be, &yd, &want, CONV_RTOL, CONV_ATOL, "eviction",
                          "y");
      st_tensor_free(&x);
      st_tensor_free(&want);
      st_tensor_free(&xd);
      st_tensor_free(&yd);
    }
  }
  st_tensor_free(&w);
  st_tensor_free(&b);
  st_tensor_free(&wd);
  st_tensor_free(&bd);
}

/* A context with its own team size gives the same values, and a context
 * that never ran a convolution frees cleanly. */
static void test_single_thread_context(void **state) {
  st_backend *shared = st_test_backend(state);
  st_backend_options opts = {
      .kind = st_backend_get_kind(shared), .threads = 1, .deterministic = 1};
  st_backend *idle = NULL, *be = NULL;
  ST_ASSERT_OK(st_backend_new(&opts, &idle));
  st_backend_free(idle);
  ST_ASSERT_OK(st_backend_new(&opts, &be));
  st_safetensors *fx = st_test_fixture_open(CONV_FIXTURE);
  conv_case c;
  conv_case_load(fx, "k3s2_relu", &c);
  st_tensor y = run_forward(be, &c, &c.x, &c.w, &c.b, 0);
  assert_tensor_close(be, &y, &c.y, CONV_RTOL, CONV_ATOL, c.name,
                      "y (1 thread)");
  st_tensor dw, db;
  run_bwd_weights(be, &c, 1, &dw, &db);
  assert_tensor_close(be, &dw, &c.dw, CONV_RTOL, CONV_GRAD_ATOL, c.name,
                      "dw (1 thread)");
  assert_tensor_close(be, &db, &c.db, CONV_RTOL, CONV_GRAD_ATOL, c.name,
                      "db (1 thread)");
  st_tensor_free(&y);
  st_tensor_free(&dw);
  st_tensor_free(&db);
  conv_case_free(&c);
  st_safetensors_free(fx);
  st_backend_free(be);
}

/* ---- Winograd against direct (CPU) ------------------------------------- */

/* The CPU backend's forward and data gradient take Winograd on large
 * planes where oneDNN implements it, and its weight gradient lets oneDNN
 * choose (cpu_conv.c conv_alg). Three of the student's 3x3 layers run at
 * their 720x1280 sizes, whose planes are above and below the forward's
 * threshold and above the data gradient's (the fixtures' small frames are
 * below both). Each result is compared with float64 sums at sampled
 * elements, and so is that of a context where the test hook makes
 * everything direct. Not vacuous: at least one forward and one data
 * gradient must differ from the direct ones in their bits. If none does,
 * oneDNN ran no Winograd here and the test says skipped. */
typedef struct wino_shape {
  int cin, h, w, cout;
} wino_shape;

/* Every result of one context, on the host. */
typedef struct wino_run {
  st_tensor y, dx, dw, db;
} wino_run;

#define WINO_SAMPLES 512   /* sampled elements of y and of dx */
#define WINO_DW_SAMPLES 48 /* sampled elements of dw */
#define WINO_RTOL 4e-5     /* of the largest sampled magnitude */

static wino_run wino_run_all(int allow, const st_tensor *x, const st_tensor *w,
                             const st_tensor *b, const st_tensor *dy) {
  st__cpu_conv_allow_winograd(allow);
  st_backend_options opts = {.kind = ST_BACKEND_CPU, .threads = 2};
  st_backend *be = NULL;
  ST_ASSERT_OK(st_backend_new(&opts, &be));
  const st_conv2d_params p = {{1, 1}, {1, 1}, {1, 1}, 1};
  wino_run r;
  ST_ASSERT_OK(st_tensor_alloc(be, &r.y, ST_F32, 4, dy->shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &r.dx, ST_F32, 4, x->shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &r.dw, ST_F32, 4, w->shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &r.db, ST_F32, 1, b->shape));
  ST_ASSERT_OK(st_conv2d_fwd(be, &p, x, w, b, ST_ACT_NONE, 0.0f, &r.y));
  ST_ASSERT_OK(st_conv2d_bwd_data(be, &p, dy, w, &r.dx));
  ST_ASSERT_OK(st_conv2d_bwd_weights(be, &p, x, dy, &r.dw, &r.db));
  wino_run h = {st_test_to_host(be, &r.y), st_test_to_host(be, &r.dx),
                st_test_to_host(be, &r.dw), st_test_to_host(be, &r.db)};
  st_tensor *all[] = {&r.y, &r.dx, &r.dw, &r.db};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    st_tensor_free(all[i]);
  st_backend_free(be);
  st__cpu_conv_allow_winograd(1);
  return h;
}

static void wino_run_free(wino_run *r) {
  st_tensor *all[] = {&r->y, &r->dx, &r->dw, &r->db};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    st_tensor_free(all[i]);
}

/* Plane c of an x- or y-shaped tensor at (i, j), 0 outside the frame
 * (padding 1). */
static double wino_at(const wino_shape *k, const float *t, int c, int i,
                      int j) {
  if (i < 0 || j < 0 || i >= k->h || j >= k->w)
    return 0.0;
  return t[((size_t)c * k->h + i) * k->w + j];
}

/* The s-th sampled pixel: the four corners (padding) first, then spread. */
static int64_t wino_pixel(const wino_shape *k, int s) {
  const int64_t hw = (int64_t)k->h * k->w;
  return s < 4 ? (s & 1 ? k->w - 1 : 0) + (s & 2 ? hw - k->w : 0)
               : ((int64_t)s * 104729) % hw;
}

/* The largest errors of y, dw and dx at the sampled elements against
 * float64 sums, each relative to the largest sampled magnitude. */
static void wino_errors(const wino_shape *k, const wino_run *r,
                        const st_tensor *xt, const st_tensor *wt,
                        const st_tensor *bt, const st_tensor *dyt,
                        double err[3]) {
  const st_conv2d_params p = {{1, 1}, {1, 1}, {1, 1}, 1};
  const float *x = xt->data, *w = wt->data, *dy = dyt->data;
  double scale[3] = {0.0, 0.0, 0.0};
  const int64_t hw = (int64_t)k->h * k->w;
  for (int s = 0; s < WINO_SAMPLES; s++) {
    const int o = (s * 7) % k->cout;
    const int64_t px = wino_pixel(k, s);
    const double sum = naive_conv_at(&p, xt, wt, bt, o, px / k->w, px % k->w);
    const double got = ((const float *)r->y.data)[(size_t)o * hw + px];
    err[0] = fmax(err[0], fabs(got - sum));
    scale[0] = fmax(scale[0], fabs(sum));
  }
  for (int s = 0; s < WINO_DW_SAMPLES; s++) {
    const int64_t e = ((int64_t)s * 7919) % st_tensor_numel(&r->dw);
    const int o = (int)(e / (k->cin * 9)), c = (int)(e / 9 % k->cin);
    const int di = (int)(e / 3 % 3), dj = (int)(e % 3);
    double sum = 0.0;
    for (int i = 0; i < k->h; i++)
      for (int j = 0; j < k->w; j++)
        sum += (double)dy[((size_t)o * k->h + i) * k->w + j] *
               wino_at(k, x, c, i + di - 1, j + dj - 1);
    const double got = ((const float *)r->dw.data)[e];
    err[1] = fmax(err[1], fabs(got - sum));
    scale[1] = fmax(scale[1], fabs(sum));
  }
  for (int s = 0; s < WINO_SAMPLES; s++) {
    const int c = (s * 5) % k->cin;
    const int64_t px = wino_pixel(k, s);
    const int i = (int)(px / k->w), j = (int)(px % k->w);
    double sum = 0.0; /* x[i][j] meets w[di][dj] in y[i - di + 1][j - dj + 1] */
    for (int o = 0; o < k->cout; o++)
      for (int di = 0; di < 3; di++)
        for (int dj = 0; dj < 3; dj++)
          sum += (double)w[(((size_t)o * k->cin + c) * 3 + di) * 3 + dj] *
                 wino_at(k, dy, o, i - di + 1, j - dj + 1);
    const double got = ((const float *)r->dx.data)[(size_t)c * hw + px];
    err[2] = fmax(err[2], fabs(got - sum));
    scale[2] = fmax(scale[2], fabs(sum));
  }
  for (int n = 0; n < 3; n++)
    err[n] /= scale[n];
}

static void test_winograd_matches_direct(void **state) {
  (void)state;
  if (st_test_on_gpu()) {
    printf("the CPU backend's convolution algorithms only\n");
    skip();
  }
  const wino_shape shapes[] = {
      {32, 360, 640, 32}, /* out_conv1, out_conv2 */
      {96, 90, 160, 32},  /* dec3.long_path.0 */
      {128, 45, 80, 32},  /* dec2.long_path.0 */
  };
  int y_differed = 0, dx_differed = 0;
  for (size_t n = 0; n < sizeof shapes / sizeof shapes[0]; n++) {
    const wino_shape *k = &shapes[n];
    const int64_t xs[4] = {1, k->cin, k->h, k->w},
                  ws[4] = {k->cout, k->cin, 3, 3}, bs[1] = {k->cout},
                  ys[4] = {1, k->cout, k->h, k->w};
    st_tensor x, w, b, dy;
    ST_ASSERT_OK(st_tensor_alloc(NULL, &x, ST_F32, 4, xs));
    ST_ASSERT_OK(st_tensor_alloc(NULL, &w, ST_F32, 4, ws));
    ST_ASSERT_OK(st_tensor_alloc(NULL, &b, ST_F32, 1, bs));
    ST_ASSERT_OK(st_tensor_alloc(NULL, &dy, ST_F32, 4, ys));
    const float bound = 1.0f / sqrtf(9.0f * (float)k->cin);
    st_test_fill_uniform(x.data, (size_t)st_tensor_numel(&x), 300 + n, -1, 1);
    st_test_fill_uniform(w.data, (size_t)st_tensor_numel(&w), 310 + n, -bound,
                         bound);
    st_test_fill_uniform(b.data, (size_t)k->cout, 320 + n, -bound, bound);
    st_test_fill_uniform(dy.data, (size_t)st_tensor_numel(&dy), 330 + n, -1, 1);
    wino_run picked = wino_run_all(1, &x, &w, &b, &dy);
    wino_run direct = wino_run_all(0, &x, &w, &b, &dy);
    double err_picked[3] = {0}, err_direct[3] = {0};
    wino_errors(k, &picked, &x, &w, &b, &dy, err_picked);
    wino_errors(k, &direct, &x, &w, &b, &dy, err_direct);
    const int y_differs =
        memcmp(picked.y.data, direct.y.data, st_tensor_nbytes(&picked.y)) != 0;
    const int dx_differs = memcmp(picked.dx.data, direct.dx.data,
                                  st_tensor_nbytes(&picked.dx)) != 0;
    printf("%dx%dx%d->%d: errors of y %.2g (direct %.2g)%s, dw %.2g (%.2g), "
           "dx %.2g (%.2g)%s\n",
           k->cin, k->h, k->w, k->cout, err_picked[0], err_direct[0],
           y_differs ? "" : " same bits", err_picked[1], err_direct[1],
           err_picked[2], err_direct[2], dx_differs ? "" : " same bits");
    for (int i = 0; i < 3; i++) {
      assert_true(err_picked[i] <= WINO_RTOL);
      assert_true(err_direct[i] <= WINO_RTOL);
    }
    y_differed += y_differs;
    dx_differed += dx_differs;
    wino_run_free(&picked);
    wino_run_free(&direct);
    st_tensor *all[] = {&x, &w, &b, &dy};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
      st_tensor_free(all[i]);
  }
  if (!y_differed && !dx_differed) {
    printf("oneDNN ran no Winograd convolution on this CPU\n");
    skip();
  }
  assert_true(y_differed && dx_differed);
}

/* ---- optional benchmark: the student's convolutions at 720x1280 --------- */

typedef struct bench_shape {
  const char *name;
  int cin, h, w, cout, kh, kw, stride, pad_h, pad_w;
  int relu, beta; /* fused as the student runs them */
  int train;      /* also run backward (the distilled layers) */
} bench_shape;

static const bench_shape bench_shapes[] = {
    {"in_conv1 3>8 k3s2", 3, 720, 1280, 8, 3, 3, 2, 1, 1, 0, 0, 0},
    {"in_conv2 8>8 k3s2", 8, 360, 640, 8, 3, 3, 2, 1, 1, 0, 0, 0},
    {"enc1.short 8>64 1x1s2", 8, 180, 320, 64, 1, 1, 2, 0, 0, 0, 0, 0},
    {"enc1.long0 8>64 k3s2", 8, 180, 320, 64, 3, 3, 2, 1, 1, 1, 0, 0},
    {"enc1.long2 64 1x3", 64, 90, 160, 64, 1, 3, 1, 0, 1, 0, 0, 0},
    {"enc1.long3 64 3x1+sum", 64, 90, 160, 64, 3, 1, 1, 1, 0, 0, 1, 0},
    {"enc2.long0 64 k3s2", 64, 90, 160, 64, 3, 3, 2, 1, 1, 1, 0, 0},
    {"enc2.long2 64 1x3", 64, 45, 80, 64, 1, 3, 1, 0, 1, 0, 0, 0},
    {"enc2.long3 64 3x1+sum", 64, 45, 80, 64, 3, 1, 1, 1, 0, 0, 1, 0},
    {"enc3.short 64>128 1x1s2", 64, 45, 80, 128, 1, 1, 2, 0, 0, 0, 0, 0},
    {"enc3.long0 64>128 k3s2", 64, 45, 80, 128, 3, 3, 2, 1, 1, 1, 0, 0},
    {"enc3.long2 128 1x3", 128, 23, 40, 128, 1, 3, 1, 0, 1, 0, 0, 0},
    {"enc3.long3 128 3x1+sum", 128, 23, 40, 128, 3, 1, 1, 1, 0, 0, 1, 0},
    {"dec1.short 128>64 1x1", 128, 23, 40, 64, 1, 1, 1, 0, 0, 0, 0, 0},
    {"dec1.long0 128>64 k3", 128, 23, 40, 64, 3, 3, 1, 1, 1, 1, 0, 0},
    {"dec1.long2 64 1x3", 64, 23, 40, 64, 1, 3, 1, 0, 1, 0, 0, 0},
    {"dec1.long3 64 3x1+sum", 64, 23, 40, 64, 3, 1, 1, 1, 0, 0, 1, 0},
    {"dec2.short 128>32 1x1", 128, 45, 80, 32, 1, 1, 1, 0, 0, 0, 0, 1},
    {"dec2.long0 128>32 k3", 128, 45, 80, 32, 3, 3, 1, 1, 1, 1, 0, 1},
    {"dec2.long2 32 1x3", 32, 45, 80, 32, 1, 3, 1, 0, 1, 0, 0, 1},
    {"dec2.long3 32 3x1+sum", 32, 45, 80, 32, 3, 1, 1, 1, 0, 0, 1, 1},
    {"dec3.short 96>32 1x1", 96, 90, 160, 32, 1, 1, 1, 0, 0, 0, 0, 1},
    {"dec3.long0 96>32 k3", 96, 90, 160, 32, 3, 3, 1, 1, 1, 1, 0, 1},
    {"dec3.long2 32 1x3", 32, 90, 160, 32, 1, 3, 1, 0, 1, 0, 0, 1},
    {"dec3.long3 32 3x1+sum", 32, 90, 160, 32, 3, 1, 1, 1, 0, 0, 1, 1},
    {"out_conv1 32 k3", 32, 180, 320, 32, 3, 3, 1, 1, 1, 0, 0, 1},
    {"out_conv2 32 k3", 32, 180, 320, 32, 3, 3, 1, 1, 1, 0, 0, 1},
    {"out_conv3 32>9 1x1", 32, 180, 320, 9, 1, 1, 1, 0, 0, 0, 0, 1},
};
#define BENCH_WARMUP 2
#define BENCH_REPS 7

static int bench_fail(const char *what) {
  fprintf(stderr, "bench: %s: %s\n", what, st_error_detail());
  return 1;
}

/* Times one shape: the first call (which builds the cache entry), then the
 * median of BENCH_REPS steady-state calls, for fwd and, for trained layers,
 * the two backward ops. Adds the medians to totals[3]. */
static int bench_one(st_backend *be, const bench_shape *s, double totals[3]) {
  st_conv2d_params p = {
      {s->stride, s->stride}, {s->pad_h, s->pad_w}, {1, 1}, 1};
  int64_t oh = st_conv2d_out_size(s->h, s->kh, s->stride, s->pad_h, 1);
  int64_t ow = st_conv2d_out_size(s->w, s->kw, s->stride, s->pad_w, 1);
  st_tensor x, w, b, y, dx, dw, db;
  int64_t wshape[4] = {s->cout, s->cin, s->kh, s->kw};
  if (st_tensor_alloc4(be, &x, ST_F32, 1, s->cin, s->h, s->w) ||
      st_tensor_alloc(be, &w, ST_F32, 4, wshape) ||
      st_tensor_alloc(be, &b, ST_F32, 1, &wshape[0]) ||
      st_tensor_alloc4(be, &y, ST_F32, 1, s->cout, oh, ow) ||
      st_tensor_alloc4(be, &dx, ST_F32, 1, s->cin, s->h, s->w) ||
      st_tensor_alloc(be, &dw, ST_F32, 4, wshape) ||
      st_tensor_alloc(be, &db, ST_F32, 1, &wshape[0]))
    return bench_fail("alloc");
  st_test_fill_uniform(x.data, (size_t)st_tensor_numel(&x), 1, -1.0f, 1.0f);
  st_test_fill_uniform(w.data, (size_t)st_tensor_numel(&w), 2, -0.1f, 0.1f);
  st_test_fill_uniform(y.data, (size_t)st_tensor_numel(&y), 3, -1.0f, 1.0f);
  st_activation act = s->relu ? ST_ACT_RELU : ST_ACT_NONE;
  float beta = s->beta ? 1.0f : 0.0f;
  double first[3] = {0}, median[3] = {0}, t[BENCH_REPS];
  for (int op = 0; op < (s->train ? 3 : 1); op++) {
    for (int r = 0; r < 1 + BENCH_WARMUP + BENCH_REPS; r++) {
      double t0 = st_test_now_ms();
      int rc = op == 0   ? st_conv2d_fwd(be, &p, &x, &w, &b, act, beta, &y)
               : op == 1 ? st_conv2d_bwd_data(be, &p, &y, &w, &dx)
                         : st_conv2d_bwd_weights(be, &p, &x, &y, &dw, &db);
      double dt = st_test_now_ms() - t0;
      if (rc)
        return bench_fail(s->name);
      if (r == 0)
        first[op] = dt;
      else if (r > BENCH_WARMUP)
        t[r - 1 - BENCH_WARMUP] = dt;
    }
    median[op] = st_test_median(t, BENCH_REPS);
    totals[op] += median[op];
  }
  printf("%-26s %4lldx%-4lld %8.3f %8.3f", s->name, (long long)oh,
         (long long)ow, median[0], first[0]);
  if (s->train)
    printf(" %8.3f %8.3f", median[1], median[2]);
  printf("\n");
  st_tensor *all[] = {&x, &w, &b, &y, &dx, &dw, &db};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    st_tensor_free(all[i]);
  return 0;
}

static int run_bench(void) {
  st_backend_options opts = {.kind = ST_BACKEND_CPU};
  st_backend *be = NULL;
  if (st_backend_new(&opts, &be))
    return bench_fail("backend");
  printf("student convolutions at 720x1280, N=1, cpu backend, ms per call "
         "(median of %d after %d warm-up; 1st = first call, building the "
         "primitives)\n",
         BENCH_REPS, BENCH_WARMUP);
  printf("%-26s %9s %8s %8s %8s %8s\n", "layer", "out", "fwd", "1st fwd",
         "bwd_dat", "bwd_w+b");
  double totals[3] = {0};
  int rc = 0;
  for (size_t i = 0; i < sizeof bench_shapes / sizeof bench_shapes[0] && !rc;
       i++)
    rc = bench_one(be, &bench_shapes[i], totals);
  printf("total: fwd %.2f ms, bwd_data %.2f ms, bwd_weights %.2f ms\n",
         totals[0], totals[1], totals[2]);
  st_backend_free(be);
  return rc;
}

/* The cache key and replacement both backends share: a key holds every
 * parameter (and only those), lookups compare whole keys, and a full
 * cache gives up its least recently used slot. */
static void test_cache_key_and_lru(void **state) {
  (void)state;
  enum { CAP = 3 };
  st_conv2d_params p = {{2, 1}, {1, 0}, {1, 3}, 2};
  st_tensor x, w, y;
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &x, ST_F32, 2, 4, 9, 11));
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &w, ST_F32, 6, 2, 3, 2));
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &y, ST_F32, 2, 6, 5, 8));
  st__conv_key k;
  memset(&k, 0xff, sizeof k); /* every byte is written */
  st__conv_key_init(&k, ST__CONV_BWD_DATA, &p, &x, &w, &y);
  const st__conv_key want = {.kind = ST__CONV_BWD_DATA,
                             .n = 2, .cin = 4, .h = 9, .w = 11,
                             .cout = 6, .kh = 3, .kw = 2,
                             .oh = 5, .ow = 8,
                             .stride = {2, 1}, .pad = {1, 0},
                             .dilation = {1, 3}, .groups = 2};
  assert_memory_equal(&k, &want, sizeof want);

  st__conv_cached e[CAP + 1];
  st__conv_cached *entry[CAP + 1];
  for (int i = 0; i <= CAP; i++) {
    e[i].key = k;
    e[i].key.beta = i; /* keys that differ in one field only */
    e[i].last_use = 0;
    entry[i] = &e[i];
  }
  for (int i = 0; i < CAP; i++) {
    assert_ptr_equal(st__conv_cache_find(entry, CAP, &e[i].key), &e[i]);
    assert_int_equal(st__conv_cache_slot(entry, i, CAP), i); /* room */
  }
  assert_null(st__conv_cache_find(entry, CAP, &e[CAP].key));
  assert_null(st__conv_cache_find(entry, 0, &e[0].key));
  const uint64_t uses[][CAP] = {{5, 2, 9}, {1, 7, 3}, {4, 6, 2}, {8, 8, 8}};
  const int oldest[] = {1, 0, 2, 0}; /* the first of equals */
  for (size_t c = 0; c < sizeof uses / sizeof uses[0]; c++) {
    for (int i = 0; i < CAP; i++)
      e[i].last_use = uses[c][i];
    assert_int_equal(st__conv_cache_slot(entry, CAP, CAP), oldest[c]);
  }
  st_tensor_free(&x);
  st_tensor_free(&w);
  st_tensor_free(&y);
}

int main(void) {
  const struct CMUnitTest shared[] = {
      cmocka_unit_test(test_cache_key_and_lru),
  };
  int shared_failed =
      cmocka_run_group_tests_name("conv_cache", shared, NULL, NULL);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward),
      cmocka_unit_test(test_forward_fusions_matter),
      cmocka_unit_test(test_bwd_data),
      cmocka_unit_test(test_bwd_weights),
      cmocka_unit_test(test_fd_backward),
      cmocka_unit_test(test_cache_reuse),
      cmocka_unit_test(test_cache_eviction),
      cmocka_unit_test(test_single_thread_context),
      cmocka_unit_test(test_winograd_matches_direct),
  };
  int failed =
      shared_failed +
      st_test_run_on_backends("conv", tests, sizeof tests / sizeof tests[0]);
  const char *bench = getenv("ST_CONV_BENCH");
  if (bench && *bench && strcmp(bench, "0") != 0)
    failed += run_bench();
  return failed ? 1 : 0;
}
