/* Every non-convolution op on every backend: values against PyTorch
 * fixtures (tests/fixtures/gen_ops.py -> ops_*.safetensors), central finite
 * differences for each backward op, the wrappers' argument checks, and large
 * inputs that take the multi-threaded paths compared with a one-thread CPU
 * context (and, on a CUDA machine, the CUDA backend with the CPU). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/cpu/cpu_impl.h"
#include "testutil.h"

/* Fixture comparisons, by why results may differ from PyTorch's:
 * - copies, selections and single float ops compare exactly (0, 0);
 * - ops that evaluate PyTorch's formula in its order (batch norm forward and
 *   its statistics, resize forward, Adam) agree bit for bit with the FMA
 *   build of PyTorch 1.13 the fixtures came from; a build without FMA
 *   rounds an ulp differently, hence a few ulps of room;
 * - sums taken in another order (resize backward, the loss and its
 *   gradient) differ by a few ulps of the terms;
 * - batch norm backward: PyTorch sums each plane in float lanes, which is
 *   ~1e-5 off the exact sum over a few thousand terms (ours is in double). */
#define ULPS_RTOL 1e-6
#define ULPS_ATOL 1e-7
#define REORDERED_RTOL 1e-5
#define REORDERED_ATOL 1e-6
/* The gradient's label entry w * (p - 1) / (N*H*W) cancels when p is near
 * 1, so its error scales with w / (N*H*W) (~1e-2 in the fixtures), not with
 * the entry: an ulp-level 1e-6 of that. */
#define CE_GRAD_ATOL 1e-8
#define FLOAT_SUMS_RTOL 1e-4
#define FLOAT_SUMS_ATOL 1e-5

/* Finite differences on fp32 ops with the probe loss L = sum(y * r). */
#define FD_STEP 1e-2f
#define FD_LINEAR_STEP 0.5f /* linear ops: any step is exact but rounding */
#define FD_RTOL 1e-2
#define FD_ATOL 2e-3
/* A gradient check must see gradients at least this large somewhere. */
#define FD_MIN_SIGNAL 1e-2

/* Large inputs for the threading checks: above the CPU backend's
 * one-thread cutoff for every op. CPU contexts of any team size agree to
 * the last bit except in the loss (a reduction split by thread); another
 * backend sums in float on its own order, ~1e-4 of the larger sums. */
#define BIG_THREADS_ODD 3
#define BIG_CPU_RTOL 1e-6
#define BIG_CPU_ATOL 0.0
#define BIG_CROSS_RTOL 1e-4
#define BIG_CROSS_ATOL 1e-4

/* ---- helpers --------------------------------------------------------------
 */

static st_tensor fx_get(const st_safetensors *fx, const char *prefix,
                        const char *name) {
  char full[128];
  snprintf(full, sizeof full, "%s%s", prefix, name);
  return st_test_fixture_tensor(fx, full);
}

static float fx_scalar(const st_safetensors *fx, const char *prefix,
                       const char *name) {
  st_tensor t = fx_get(fx, prefix, name);
  assert_int_equal(st_tensor_numel(&t), 1);
  float v = ((const float *)t.data)[0];
  st_tensor_free(&t);
  return v;
}

/* A backend tensor shaped like `like`; F32 ones start as NaN so an op that
 * leaves an element unwritten fails the comparison. */
static st_tensor dev_alloc(st_backend *be, st_dtype dt, const st_tensor *like) {
  st_tensor t;
  ST_ASSERT_OK(st_tensor_alloc(be, &t, dt, like->ndim, like->shape));
  if (dt == ST_F32)
    ST_ASSERT_OK(st_fill(be, &t, NAN));
  return t;
}

static st_tensor dev_alloc4(st_backend *be, int64_t n, int64_t c, int64_t h,
                            int64_t w) {
  const int64_t shape[4] = {n, c, h, w};
  st_tensor like = st_tensor_view(NULL, ST_F32, 4, shape);
  return dev_alloc(be, ST_F32, &like);
}

static void expect_close(st_backend *be, const st_tensor *got,
                         const st_tensor *want, double rtol, double atol,
                         const char *what) {
  assert_int_equal(st_tensor_numel(got), st_tensor_numel(want));
  assert_int_equal(got->dtype, ST_F32);
  st_tensor h = st_test_to_host(be, got);
  st_test_assert_close(h.data, want->data, (size_t)st_tensor_numel(want), rtol,
                       atol, what);
  st_tensor_free(&h);
}

static void expect_equal_bytes(st_backend *be, const st_tensor *got,
                               const st_tensor *want, const char *what) {
  assert_int_equal(st_tensor_nbytes(got), st_tensor_nbytes(want));
  st_tensor h = st_test_to_host(be, got);
  const uint8_t *a = h.data, *b = want->data;
  for (size_t i = 0; i < st_tensor_nbytes(want); i++)
    if (a[i] != b[i])
      fail_msg("%s: byte %zu is %u, want %u", what, i, a[i], b[i]);
  st_tensor_free(&h);
}

static float max_abs(const float *x, size_t n) {
  float m = 0.0f;
  for (size_t i = 0; i < n; i++)
    m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
  return m;
}

/* sum(y * r) in double, y downloaded from the backend. */
static double probe_dot(st_backend *be, const st_tensor *y, const float *r) {
  st_tensor h = st_test_to_host(be, y);
  const float *yd = h.data;
  double s = 0.0;
  for (int64_t i = 0; i < st_tensor_numel(&h); i++)
    s += (double)yd[i] * (double)r[i];
  st_tensor_free(&h);
  return s;
}

typedef double (*fd_loss_fn)(st_backend *be, void *ctx);

/* Central differences of loss() in every element of the host buffer `host`,
 * which is uploaded into `dev` before each evaluation and restored after. */
static void fd_gradient(st_backend *be, st_tensor *dev, st_tensor *host,
                        float step, fd_loss_fn loss, void *ctx, float *num) {
  float *x = host->data;
  const size_t bytes = st_tensor_nbytes(host);
  for (int64_t i = 0; i < st_tensor_numel(host); i++) {
    const float keep = x[i];
    const float hi = keep + step, lo = keep - step;
    x[i] = hi;
    ST_ASSERT_OK(st_tensor_upload(be, dev, x, bytes));
    const double lp = loss(be, ctx);
    x[i] = lo;
    ST_ASSERT_OK(st_tensor_upload(be, dev, x, bytes));
    const double lm = loss(be, ctx);
    x[i] = keep;
    num[i] = (float)((lp - lm) / ((double)hi - (double)lo));
  }
  ST_ASSERT_OK(st_tensor_upload(be, dev, x, bytes));
}

/* Compares an analytic gradient (backend tensor) with finite differences,
 * and insists the gradient is not trivially small. */
static void expect_fd(st_backend *be, const st_tensor *analytic,
                      const float *numeric, double rtol, double atol,
                      const char *what) {
  st_tensor h = st_test_to_host(be, analytic);
  const size_t n = (size_t)st_tensor_numel(&h);
  if (!(max_abs(numeric, n) > FD_MIN_SIGNAL))
    fail_msg("%s: finite differences are all below %g; the check would be "
             "vacuous",
             what, FD_MIN_SIGNAL);
  st_test_assert_close(h.data, numeric, n, rtol, atol, what);
  st_tensor_free(&h);
}

static st_tensor host_uniform4(int64_t n, int64_t c, int64_t h, int64_t w,
                               uint64_t seed, float lo, float hi) {
  st_tensor t;
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &t, ST_F32, n, c, h, w));
  st_test_fill_uniform(t.data, (size_t)st_tensor_numel(&t), seed, lo, hi);
  return t;
}

static st_tensor host_uniform_vec(int64_t n, uint64_t seed, float lo,
                                  float hi) {
  st_tensor t;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &t, ST_F32, 1, &n));
  st_test_fill_uniform(t.data, (size_t)n, seed, lo, hi);
  return t;
}

/* ---- batch normalisation ----------------------------------------------------
 */

#define BN_FIXTURE_CASES 3

static void test_batchnorm_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_bn.safetensors");
  for (int i = 0; i < BN_FIXTURE_CASES; i++) {
    char p[16];
    snprintf(p, sizeof p, "bn%d.", i);
    st_tensor hx = fx_get(fx, p, "x"), hg = fx_get(fx, p, "gamma"),
              hb = fx_get(fx, p, "beta"), hy = fx_get(fx, p, "y"),
              hmean = fx_get(fx, p, "mean"), hinv = fx_get(fx, p, "invstd"),
              hdy = fx_get(fx, p, "dy"), hdx = fx_get(fx, p, "dx"),
              hdg = fx_get(fx, p, "dgamma"), hdb = fx_get(fx, p, "dbeta");
    const float eps = fx_scalar(fx, p, "eps");
    const st_activation act =
        fx_scalar(fx, p, "relu") != 0.0f ? ST_ACT_RELU : ST_ACT_NONE;
    st_tensor x = st_test_to_backend(be, &hx), g = st_test_to_backend(be, &hg),
              b = st_test_to_backend(be, &hb),
              dy = st_test_to_backend(be, &hdy);
    st_tensor y = dev_alloc(be, ST_F32, &hx), mean = dev_alloc(be, ST_F32, &hg),
              inv = dev_alloc(be, ST_F32, &hg), dx = dev_alloc(be, ST_F32, &hx),
              dg = dev_alloc(be, ST_F32, &hg), db = dev_alloc(be, ST_F32, &hg);

    ST_ASSERT_OK(st_batchnorm_fwd(be, &x, &g, &b, eps, act, &y, &mean, &inv));
    expect_close(be, &mean, &hmean, ULPS_RTOL, 0.0, p);
    expect_close(be, &inv, &hinv, ULPS_RTOL, 0.0, p);
    expect_close(be, &y, &hy, ULPS_RTOL, ULPS_ATOL, p);

    ST_ASSERT_OK(
        st_batchnorm_bwd(be, &x, &y, &dy, &g, &mean, &inv, act, &dx, &dg, &db));
    expect_close(be, &dx, &hdx, FLOAT_SUMS_RTOL, FLOAT_SUMS_ATOL, p);
    expect_close(be, &dg, &hdg, FLOAT_SUMS_RTOL, FLOAT_SUMS_ATOL, p);
    expect_close(be, &db, &hdb, FLOAT_SUMS_RTOL, FLOAT_SUMS_ATOL, p);

    /* The optional outputs are independent: dx alone, then the affine
     * gradients alone, into fresh (NaN-filled) tensors. */
    st_tensor dx2 = dev_alloc(be, ST_F32, &hx),
              dg2 = dev_alloc(be, ST_F32, &hg),
              db2 = dev_alloc(be, ST_F32, &hg);
    ST_ASSERT_OK(st_batchnorm_bwd(be, &x, &y, &dy, &g, &mean, &inv, act, &dx2,
                                  NULL, NULL));
    expect_close(be, &dx2, &hdx, FLOAT_SUMS_RTOL, FLOAT_SUMS_ATOL, "dx only");
    ST_ASSERT_OK(st_batchnorm_bwd(be, &x, &y, &dy, &g, &mean, &inv, act, NULL,
                                  &dg2, &db2));
    expect_close(be, &dg2, &hdg, FLOAT_SUMS_RTOL, FLOAT_SUMS_ATOL,
                 "dgamma only");
    expect_close(be, &db2, &hdb, FLOAT_SUMS_RTOL, FLOAT_SUMS_ATOL,
                 "dbeta only");

    /* In place (y == x). */
    ST_ASSERT_OK(st_batchnorm_fwd(be, &x, &g, &b, eps, act, &x, &mean, &inv));
    expect_close(be, &x, &hy, ULPS_RTOL, ULPS_ATOL, "in place");

    st_tensor *all[] = {&hx,  &hg,  &hb, &hy, &hmean, &hinv, &hdy, &hdx,
                        &hdg, &hdb, &x,  &g,  &b,     &dy,   &y,   &mean,
                        &inv, &dx,  &dg, &db, &dx2,   &dg2,  &db2};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
      st_tensor_free(all[k]);
  }
  st_safetensors_free(fx);
}

typedef struct bn_fd_ctx {
  st_tensor x, gamma, beta, y, mean, invstd; /* backend tensors */
  const float *r;                            /* probe weights */
  st_activation act;
} bn_fd_ctx;

#define BN_FD_EPS 1e-5f

static double bn_fd_loss(st_backend *be, void *opaque) {
  bn_fd_ctx *c = opaque;
  ST_ASSERT_OK(st_batchnorm_fwd(be, &c->x, &c->gamma, &c->beta, BN_FD_EPS,
                                c->act, &c->y, &c->mean, &c->invstd));
  return probe_dot(be, &c->y, c->r);
}

static void bn_fd_case(st_backend *be, st_activation act) {
  enum { N = 2, C = 3, H = 5, W = 7, M = N * H * W };
  /* Per channel, values come in pairs offset +-(0.5..1.5) around 2, so the
   * normalised values stay at least ~0.4 from zero: steps of FD_STEP never
   * cross the ReLU's kink, and beta (below 0.1) cannot move them across. */
  st_tensor hx, hg, hb, hr;
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &hx, ST_F32, N, C, H, W));
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &hr, ST_F32, N, C, H, W));
  const int64_t cshape[1] = {C};
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hg, ST_F32, 1, cshape));
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hb, ST_F32, 1, cshape));
  float mag[M / 2];
  float *xd = hx.data;
  for (int c = 0; c < C; c++) {
    st_test_fill_uniform(mag, M / 2, 100 + (uint64_t)c, 0.5f, 1.5f);
    for (int s = 0; s < M; s++) {
      const int n = s / (H * W), pos = s % (H * W);
      xd[(n * C + c) * H * W + pos] = 2.0f + (s % 2 ? -mag[s / 2] : mag[s / 2]);
    }
  }
  st_test_fill_uniform(hg.data, C, 7, 0.5f, 1.5f);
  st_test_fill_uniform(hb.data, C, 8, -0.1f, 0.1f);
  st_test_fill_uniform(hr.data, (size_t)st_tensor_numel(&hr), 9, -1.0f, 1.0f);

  bn_fd_ctx c = {.r = hr.data, .act = act};
  c.x = st_test_to_backend(be, &hx);
  c.gamma = st_test_to_backend(be, &hg);
  c.beta = st_test_to_backend(be, &hb);
  c.y = dev_alloc(be, ST_F32, &hx);
  c.mean = dev_alloc(be, ST_F32, &hg);
  c.invstd = dev_alloc(be, ST_F32, &hg);
  st_tensor r = st_test_to_backend(be, &hr);
  st_tensor dx = dev_alloc(be, ST_F32, &hx), dg = dev_alloc(be, ST_F32, &hg),
            db = dev_alloc(be, ST_F32, &hg);
  bn_fd_loss(be, &c);
  ST_ASSERT_OK(st_batchnorm_bwd(be, &c.x, &c.y, &r, &c.gamma, &c.mean,
                                &c.invstd, act, &dx, &dg, &db));

  float num_x[N * C * H * W], num_g[C], num_b[C];
  fd_gradient(be, &c.x, &hx, FD_STEP, bn_fd_loss, &c, num_x);
  fd_gradient(be, &c.gamma, &hg, FD_STEP, bn_fd_loss, &c, num_g);
  fd_gradient(be, &c.beta, &hb, FD_STEP, bn_fd_loss, &c, num_b);
  expect_fd(be, &dx, num_x, FD_RTOL, FD_ATOL, "batchnorm dx");
  expect_fd(be, &dg, num_g, FD_RTOL, FD_ATOL, "batchnorm dgamma");
  expect_fd(be, &db, num_b, FD_RTOL, FD_ATOL, "batchnorm dbeta");

  st_tensor *all[] = {&hx,  &hg,     &hb,       &hr, &c.x, &c.gamma, &c.beta,
                      &c.y, &c.mean, &c.invstd, &r,  &dx,  &dg,      &db};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
}

static void test_batchnorm_fd(void **state) {
  st_backend *be = st_test_backend(state);
  bn_fd_case(be, ST_ACT_NONE);
  bn_fd_case(be, ST_ACT_RELU);
}

/* ---- elementwise ----------------------------------------------------------
 */

static void test_relu_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_misc.safetensors");
  st_tensor hx = fx_get(fx, "relu.", "x"), hy = fx_get(fx, "relu.", "y"),
            hdy = fx_get(fx, "relu.", "dy"), hdx = fx_get(fx, "relu.", "dx");
  st_tensor x = st_test_to_backend(be, &hx), dy = st_test_to_backend(be, &hdy);
  st_tensor y = dev_alloc(be, ST_F32, &hx), dx = dev_alloc(be, ST_F32, &hx);
  ST_ASSERT_OK(st_relu_fwd(be, &x, &y));
  expect_close(be, &y, &hy, 0.0, 0.0, "relu fwd");
  ST_ASSERT_OK(st_relu_bwd(be, &y, &dy, &dx));
  expect_close(be, &dx, &hdx, 0.0, 0.0, "relu bwd");
  /* In place: dx == dy, then y == x. */
  ST_ASSERT_OK(st_relu_bwd(be, &y, &dy, &dy));
  expect_close(be, &dy, &hdx, 0.0, 0.0, "relu bwd in place");
  ST_ASSERT_OK(st_relu_fwd(be, &x, &x));
  expect_close(be, &x, &hy, 0.0, 0.0, "relu fwd in place");
  st_tensor *all[] = {&hx, &hy, &hdy, &hdx, &x, &dy, &y, &dx};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
  st_safetensors_free(fx);
}

typedef struct unary_fd_ctx {
  st_tensor x, y;
  const float *r;
  int (*op)(st_backend *be, const st_tensor *x, st_tensor *y);
} unary_fd_ctx;

static double unary_fd_loss(st_backend *be, void *opaque) {
  unary_fd_ctx *c = opaque;
  ST_ASSERT_OK(c->op(be, &c->x, &c->y));
  return probe_dot(be, &c->y, c->r);
}

static void test_relu_fd(void **state) {
  st_backend *be = st_test_backend(state);
  /* Inputs at least 0.1 from the kink, ten steps away. */
  st_tensor hx = host_uniform4(1, 3, 5, 7, 11, 0.1f, 1.0f);
  st_tensor hr = host_uniform4(1, 3, 5, 7, 12, -1.0f, 1.0f);
  float *xd = hx.data;
  for (int64_t i = 0; i < st_tensor_numel(&hx); i += 2)
    xd[i] = -xd[i];
  unary_fd_ctx c = {.r = hr.data, .op = st_relu_fwd};
  c.x = st_test_to_backend(be, &hx);
  c.y = dev_alloc(be, ST_F32, &hx);
  st_tensor r = st_test_to_backend(be, &hr), dx = dev_alloc(be, ST_F32, &hx);
  ST_ASSERT_OK(st_relu_fwd(be, &c.x, &c.y));
  ST_ASSERT_OK(st_relu_bwd(be, &c.y, &r, &dx));
  float num[3 * 5 * 7];
  fd_gradient(be, &c.x, &hx, FD_STEP, unary_fd_loss, &c, num);
  expect_fd(be, &dx, num, FD_RTOL, FD_ATOL, "relu dx");
  st_tensor *all[] = {&hx, &hr, &c.x, &c.y, &r, &dx};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
}

static void test_add_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_misc.safetensors");
  st_tensor ha = fx_get(fx, "add.", "a"), hb = fx_get(fx, "add.", "b"),
            hy = fx_get(fx, "add.", "y");
  st_tensor a = st_test_to_backend(be, &ha), b = st_test_to_backend(be, &hb);
  st_tensor y = dev_alloc(be, ST_F32, &ha);
  ST_ASSERT_OK(st_add(be, &a, &b, &y));
  expect_close(be, &y, &hy, 0.0, 0.0, "add");
  ST_ASSERT_OK(st_add(be, &a, &b, &a)); /* y == a */
  expect_close(be, &a, &hy, 0.0, 0.0, "add in place (a)");
  st_tensor a2 = st_test_to_backend(be, &ha);
  ST_ASSERT_OK(st_add(be, &a2, &b, &b)); /* y == b */
  expect_close(be, &b, &hy, 0.0, 0.0, "add in place (b)");
  st_tensor *all[] = {&ha, &hb, &hy, &a, &b, &y, &a2};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
  st_safetensors_free(fx);
}

/* ---- layout ---------------------------------------------------------------
 */

static void test_concat_split_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_misc.safetensors");
  st_tensor ha = fx_get(fx, "cat.", "a"), hb = fx_get(fx, "cat.", "b"),
            hy = fx_get(fx, "cat.", "y"), hdy = fx_get(fx, "cat.", "dy"),
            hda = fx_get(fx, "cat.", "da"), hdb = fx_get(fx, "cat.", "db");
  st_tensor a = st_test_to_backend(be, &ha), b = st_test_to_backend(be, &hb),
            dy = st_test_to_backend(be, &hdy);
  st_tensor y = dev_alloc(be, ST_F32, &hy), da = dev_alloc(be, ST_F32, &ha),
            db = dev_alloc(be, ST_F32, &hb);
  ST_ASSERT_OK(st_concat_channels(be, &a, &b, &y));
  expect_close(be, &y, &hy, 0.0, 0.0, "concat");
  ST_ASSERT_OK(st_split_channels(be, &dy, &da, &db));
  expect_close(be, &da, &hda, 0.0, 0.0, "split da");
  expect_close(be, &db, &hdb, 0.0, 0.0, "split db");
  /* Either half alone. */
  st_tensor da2 = dev_alloc(be, ST_F32, &ha), db2 = dev_alloc(be, ST_F32, &hb);
  ST_ASSERT_OK(st_split_channels(be, &dy, &da2, NULL));
  expect_close(be, &da2, &hda, 0.0, 0.0, "split da only");
  ST_ASSERT_OK(st_split_channels(be, &dy, NULL, &db2));
  expect_close(be, &db2, &hdb, 0.0, 0.0, "split db only");
  st_tensor *all[] = {&ha, &hb, &hy, &hdy, &hda, &hdb, &a,
                      &b,  &dy, &y,  &da,  &db,  &da2, &db2};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
  st_safetensors_free(fx);
}

#define SUBSAMPLE_FIXTURE_CASES 2

static void test_subsample_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_misc.safetensors");
  for (int i = 0; i < SUBSAMPLE_FIXTURE_CASES; i++) {
    char p[16];
    snprintf(p, sizeof p, "sub%d.", i);
    st_tensor hx = fx_get(fx, p, "x"), hy = fx_get(fx, p, "y"),
              hdy = fx_get(fx, p, "dy"), hdx = fx_get(fx, p, "dx");
    const int stride = (int)fx_scalar(fx, p, "stride");
    st_tensor x = st_test_to_backend(be, &hx),
              dy = st_test_to_backend(be, &hdy);
    st_tensor y = dev_alloc(be, ST_F32, &hy), dx = dev_alloc(be, ST_F32, &hx);
    ST_ASSERT_OK(st_subsample(be, &x, stride, &y));
    expect_close(be, &y, &hy, 0.0, 0.0, p);
    ST_ASSERT_OK(st_subsample_bwd(be, &dy, stride, &dx));
    expect_close(be, &dx, &hdx, 0.0, 0.0, p);
    st_tensor *all[] = {&hx, &hy, &hdy, &hdx, &x, &dy, &y, &dx};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
      st_tensor_free(all[k]);
  }
  st_safetensors_free(fx);
}

typedef struct subsample_fd_ctx {
  st_tensor x, y;
  const float *r;
  int stride;
} subsample_fd_ctx;

static double subsample_fd_loss(st_backend *be, void *opaque) {
  subsample_fd_ctx *c = opaque;
  ST_ASSERT_OK(st_subsample(be, &c->x, c->stride, &c->y));
  return probe_dot(be, &c->y, c->r);
}

static void test_subsample_fd(void **state) {
  st_backend *be = st_test_backend(state);
  enum {
    N = 1,
    C = 2,
    H = 7,
    W = 9,
    S = 2,
    OH = (H + 1) / 2,
    OW = (W + 1) / 2
  };
  st_tensor hx = host_uniform4(N, C, H, W, 21, -1.0f, 1.0f);
  st_tensor hr = host_uniform4(N, C, OH, OW, 22, -1.0f, 1.0f);
  subsample_fd_ctx c = {.r = hr.data, .stride = S};
  c.x = st_test_to_backend(be, &hx);
  c.y = dev_alloc(be, ST_F32, &hr);
  st_tensor r = st_test_to_backend(be, &hr), dx = dev_alloc(be, ST_F32, &hx);
  ST_ASSERT_OK(st_subsample_bwd(be, &r, S, &dx));
  float num[N * C * H * W];
  fd_gradient(be, &c.x, &hx, FD_LINEAR_STEP, subsample_fd_loss, &c, num);
  expect_fd(be, &dx, num, FD_RTOL, FD_ATOL, "subsample dx");
  st_tensor *all[] = {&hx, &hr, &c.x, &c.y, &r, &dx};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
}

/* ---- bilinear resize --------------------------------------------------------
 */

#define RESIZE_FIXTURE_CASES 8

static void test_resize_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_resize.safetensors");
  for (int i = 0; i < RESIZE_FIXTURE_CASES; i++) {
    char p[16];
    snprintf(p, sizeof p, "resize%d.", i);
    st_tensor hx = fx_get(fx, p, "x"), hy = fx_get(fx, p, "y"),
              hdy = fx_get(fx, p, "dy"), hdx = fx_get(fx, p, "dx");
    st_tensor x = st_test_to_backend(be, &hx),
              dy = st_test_to_backend(be, &hdy);
    st_tensor y = dev_alloc(be, ST_F32, &hy), dx = dev_alloc(be, ST_F32, &hx);
    ST_ASSERT_OK(st_resize_bilinear_fwd(be, &x, &y));
    expect_close(be, &y, &hy, ULPS_RTOL, ULPS_ATOL, p);
    ST_ASSERT_OK(st_resize_bilinear_bwd(be, &dy, &dx));
    expect_close(be, &dx, &hdx, REORDERED_RTOL, REORDERED_ATOL, p);
    st_tensor *all[] = {&hx, &hy, &hdy, &hdx, &x, &dy, &y, &dx};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
      st_tensor_free(all[k]);
  }
  st_safetensors_free(fx);
}

static void resize_fd_case(st_backend *be, int64_t n, int64_t c, int64_t ih,
                           int64_t iw, int64_t oh, int64_t ow) {
  st_tensor hx = host_uniform4(n, c, ih, iw, 31, -1.0f, 1.0f);
  st_tensor hr = host_uniform4(n, c, oh, ow, 32, -1.0f, 1.0f);
  unary_fd_ctx ctx = {.r = hr.data, .op = st_resize_bilinear_fwd};
  ctx.x = st_test_to_backend(be, &hx);
  ctx.y = dev_alloc(be, ST_F32, &hr);
  st_tensor r = st_test_to_backend(be, &hr), dx = dev_alloc(be, ST_F32, &hx);
  ST_ASSERT_OK(st_resize_bilinear_bwd(be, &r, &dx));
  float *num = malloc((size_t)st_tensor_numel(&hx) * sizeof(float));
  assert_non_null(num);
  fd_gradient(be, &ctx.x, &hx, FD_LINEAR_STEP, unary_fd_loss, &ctx, num);
  char what[64];
  snprintf(what, sizeof what, "resize dx %lldx%lld->%lldx%lld", (long long)ih,
           (long long)iw, (long long)oh, (long long)ow);
  expect_fd(be, &dx, num, FD_RTOL, FD_ATOL, what);
  free(num);
  st_tensor *all[] = {&hx, &hr, &ctx.x, &ctx.y, &r, &dx};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
}

static void test_resize_fd(void **state) {
  st_backend *be = st_test_backend(state);
  resize_fd_case(be, 1, 2, 5, 7, 9, 11);  /* up, non-integer */
  resize_fd_case(be, 2, 1, 9, 11, 4, 5);  /* down, non-integer */
  resize_fd_case(be, 1, 1, 5, 7, 3, 10);  /* down in H, up in W */
  resize_fd_case(be, 1, 1, 13, 21, 2, 3); /* rows read by no output */
}

/* ---- loss and metrics -----------------------------------------------------
 */

#define CE_FIXTURE_CASES 2

static void test_weighted_ce_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_loss.safetensors");
  for (int i = 0; i < CE_FIXTURE_CASES; i++) {
    char p[16];
    snprintf(p, sizeof p, "ce%d.", i);
    st_tensor hl = fx_get(fx, p, "logits"), hlab = fx_get(fx, p, "label"),
              hw = fx_get(fx, p, "weight"), hd = fx_get(fx, p, "dlogits");
    const float want = fx_scalar(fx, p, "loss");
    st_tensor l = st_test_to_backend(be, &hl),
              lab = st_test_to_backend(be, &hlab),
              w = st_test_to_backend(be, &hw), d = dev_alloc(be, ST_F32, &hl);
    float loss = NAN, loss_only = NAN;
    ST_ASSERT_OK(st_weighted_ce(be, &l, &lab, &w, &loss, &d));
    st_test_assert_close(&loss, &want, 1, REORDERED_RTOL, 0.0, p);
    expect_close(be, &d, &hd, REORDERED_RTOL, CE_GRAD_ATOL, p);
    ST_ASSERT_OK(st_weighted_ce(be, &l, &lab, &w, &loss_only, NULL));
    st_test_assert_close(&loss_only, &want, 1, REORDERED_RTOL, 0.0, p);
    st_tensor *all[] = {&hl, &hlab, &hw, &hd, &l, &lab, &w, &d};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
      st_tensor_free(all[k]);
  }
  st_safetensors_free(fx);
}

typedef struct ce_fd_ctx {
  st_tensor logits, label, weight;
} ce_fd_ctx;

static double ce_fd_loss(st_backend *be, void *opaque) {
  ce_fd_ctx *c = opaque;
  float loss = NAN;
  ST_ASSERT_OK(
      st_weighted_ce(be, &c->logits, &c->label, &c->weight, &loss, NULL));
  return loss;
}

static void test_weighted_ce_fd(void **state) {
  st_backend *be = st_test_backend(state);
  enum { N = 2, C = 5, H = 3, W = 4 };
  st_tensor hl = host_uniform4(N, C, H, W, 41, -3.0f, 3.0f);
  const int64_t map_shape[3] = {N, H, W};
  st_tensor hlab, hw;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hlab, ST_U8, 3, map_shape));
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hw, ST_F32, 3, map_shape));
  uint8_t *labd = hlab.data;
  float *wd = hw.data;
  for (int i = 0; i < N * H * W; i++) {
    labd[i] = (uint8_t)((i * 7 + 3) % C);
    wd[i] = i % 3 ? 1.0f : 5.0f;
  }
  ce_fd_ctx c;
  c.logits = st_test_to_backend(be, &hl);
  c.label = st_test_to_backend(be, &hlab);
  c.weight = st_test_to_backend(be, &hw);
  st_tensor d = dev_alloc(be, ST_F32, &hl);
  float loss = NAN;
  ST_ASSERT_OK(st_weighted_ce(be, &c.logits, &c.label, &c.weight, &loss, &d));
  float num[N * C * H * W];
  fd_gradient(be, &c.logits, &hl, FD_STEP, ce_fd_loss, &c, num);
  expect_fd(be, &d, num, FD_RTOL, FD_ATOL, "weighted_ce dlogits");
  st_tensor *all[] = {&hl, &hlab, &hw, &c.logits, &c.label, &c.weight, &d};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
}

static void test_weighted_ce_bad_label(void **state) {
  st_backend *be = st_test_backend(state);
  enum { C = 4, BAD = 7 };
  st_tensor hl = host_uniform4(1, C, 3, 5, 51, -1.0f, 1.0f);
  const int64_t map_shape[3] = {1, 3, 5};
  st_tensor hlab, hw;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hlab, ST_U8, 3, map_shape));
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hw, ST_F32, 3, map_shape));
  ((uint8_t *)hlab.data)[9] = BAD;
  st_test_fill_uniform(hw.data, 15, 52, 1.0f, 2.0f);
  st_tensor l = st_test_to_backend(be, &hl),
            lab = st_test_to_backend(be, &hlab),
            w = st_test_to_backend(be, &hw), d = dev_alloc(be, ST_F32, &hl);
  float loss = NAN;
  assert_int_equal(st_weighted_ce(be, &l, &lab, &w, &loss, &d), ST_ERANGE);
  assert_non_null(strstr(st_error_detail(), "7"));
  assert_int_equal(st_weighted_ce(be, &l, &lab, &w, &loss, NULL), ST_ERANGE);
  /* Without waiting: the call itself succeeds, reading its result names
   * the label; a result of the wrong shape is refused up front. */
  const int64_t res_shape[1] = {ST_CE_RESULT_LEN}, short_shape[1] = {2};
  st_tensor res, short_res;
  ST_ASSERT_OK(st_tensor_alloc(be, &res, ST_F32, 1, res_shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &short_res, ST_F32, 1, short_shape));
  ST_ASSERT_OK(st_weighted_ce_into(be, &l, &lab, &w, &res, &d));
  assert_int_equal(st_weighted_ce_result(be, &res, C, &loss), ST_ERANGE);
  assert_non_null(strstr(st_error_detail(), "label 7 is not below the 4"));
  assert_int_equal(st_weighted_ce_into(be, &l, &lab, &w, &short_res, NULL),
                   ST_ESHAPE);
  /* The same call with the label fixed succeeds. */
  ((uint8_t *)hlab.data)[9] = C - 1;
  ST_ASSERT_OK(st_tensor_upload(be, &lab, hlab.data, st_tensor_nbytes(&hlab)));
  ST_ASSERT_OK(st_weighted_ce(be, &l, &lab, &w, &loss, &d));
  assert_true(isfinite(loss) && loss > 0.0f);
  float later = NAN;
  ST_ASSERT_OK(st_weighted_ce_into(be, &l, &lab, &w, &res, NULL));
  ST_ASSERT_OK(st_weighted_ce_result(be, &res, C, &later));
  assert_memory_equal(&later, &loss, sizeof loss);
  st_tensor_free(&res);
  st_tensor_free(&short_res);
  /* A NaN logit off the label channel still makes the loss NaN, as in
   * PyTorch, so a diverged network cannot look healthy. */
  ((float *)hl.data)[2 * 15 + 4] = NAN;
  ((uint8_t *)hlab.data)[4] = 0;
  ST_ASSERT_OK(st_tensor_upload(be, &l, hl.data, st_tensor_nbytes(&hl)));
  ST_ASSERT_OK(st_tensor_upload(be, &lab, hlab.data, st_tensor_nbytes(&hlab)));
  ST_ASSERT_OK(st_weighted_ce(be, &l, &lab, &w, &loss, NULL));
  assert_true(isnan(loss));
  st_tensor *all[] = {&hl, &hlab, &hw, &l, &lab, &w, &d};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
}

/* The loss of resized logits and the small logits' gradient against the
 * resize, the loss and the resize backward on the same backend: the loss
 * to the rounding of its double sum (summed in other groups), the gradient
 * bit for bit. Up (integer and not, threaded), down, equal sizes, a batch,
 * a row wider than the CPU's pixel tile, a loss without gradient, and a
 * label out of range (reported alike). */
typedef struct ce_resized_case {
  int64_t n, c, ih, iw, oh, ow;
  int grad; /* 0: loss only */
  int bad;  /* a label >= C planted */
} ce_resized_case;

static void ce_resized_case_run(st_backend *be, const ce_resized_case *k,
                                int i) {
  st_tensor hx =
      host_uniform4(k->n, k->c, k->ih, k->iw, 60 + (uint64_t)i, -4.0f, 4.0f);
  const int64_t map_shape[3] = {k->n, k->oh, k->ow};
  st_tensor hlab, hw;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hlab, ST_U8, 3, map_shape));
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hw, ST_F32, 3, map_shape));
  uint8_t *labd = hlab.data;
  float *wd = hw.data;
  for (int64_t j = 0; j < st_tensor_numel(&hlab); j++) {
    labd[j] = (uint8_t)((j * 2654435761u >> 9) % (uint64_t)k->c);
    wd[j] = (j / 7) % 4 ? 1.0f : 5.0f;
  }
  if (k->bad)
    labd[st_tensor_numel(&hlab) / 2] = (uint8_t)(k->c + 3);
  const int64_t res_shape[1] = {ST_CE_RESULT_LEN};
  st_tensor x = st_test_to_backend(be, &hx),
            lab = st_test_to_backend(be, &hlab),
            w = st_test_to_backend(be, &hw),
            up = dev_alloc4(be, k->n, k->c, k->oh, k->ow),
            dup = dev_alloc4(be, k->n, k->c, k->oh, k->ow),
            want_dx = dev_alloc(be, ST_F32, &hx),
            got_dx = dev_alloc(be, ST_F32, &hx), want_res, got_res;
  ST_ASSERT_OK(st_tensor_alloc(be, &want_res, ST_F32, 1, res_shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &got_res, ST_F32, 1, res_shape));
  ST_ASSERT_OK(st_resize_bilinear_fwd(be, &x, &up));
  ST_ASSERT_OK(
      st_weighted_ce_into(be, &up, &lab, &w, &want_res, k->grad ? &dup : NULL));
  if (k->grad)
    ST_ASSERT_OK(st_resize_bilinear_bwd(be, &dup, &want_dx));
  ST_ASSERT_OK(st_weighted_ce_resized_into(be, &x, &lab, &w, &got_res,
                                           k->grad ? &got_dx : NULL));
  char what[96];
  snprintf(what, sizeof what, "weighted_ce_resized %lldx%lldx%lld->%lldx%lld",
           (long long)k->c, (long long)k->ih, (long long)k->iw,
           (long long)k->oh, (long long)k->ow);
  st_tensor hwant = st_test_to_host(be, &want_res),
            hgot = st_test_to_host(be, &got_res);
  const float *rw = hwant.data, *rg = hgot.data;
  assert_true(isfinite(rw[0]) && rw[0] > 0.0f);
  st_test_assert_close(rg, rw, 1, 1e-6, 0.0, what);
  assert_true(rg[1] == rw[1] && rg[2] == rw[2]); /* bad labels alike */
  assert_true(k->bad ? rg[1] == 1.0f && rg[2] == (float)(k->c + 3)
                     : rg[1] == 0.0f);
  if (k->grad) {
    st_tensor hd = st_test_to_host(be, &want_dx);
    assert_true(max_abs(hd.data, (size_t)st_tensor_numel(&hd)) > 0.0f);
    expect_equal_bytes(be, &got_dx, &hd, what);
    st_tensor_free(&hd);
  }
  st_tensor *all[] = {&hx,       &hlab,    &hw,    &x,       &lab,
                      &w,        &up,      &dup,   &want_dx, &got_dx,
                      &want_res, &got_res, &hwant, &hgot};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    st_tensor_free(all[j]);
}

static void test_weighted_ce_resized(void **state) {
  st_backend *be = st_test_backend(state);
  const ce_resized_case cases[] = {
      {1, 9, 45, 80, 180, 320, 1, 0}, /* 4x up, threaded */
      {2, 5, 7, 9, 23, 31, 1, 0},     /* non-integer up, a batch */
      {1, 3, 13, 21, 5, 8, 1, 0},     /* down */
      {1, 4, 6, 6, 6, 6, 1, 0},       /* equal sizes */
      {1, 3, 4, 700, 9, 2100, 1, 0},  /* rows wider than a pixel tile */
      {1, 6, 9, 10, 20, 21, 0, 0},    /* the loss alone */
      {1, 4, 5, 6, 11, 13, 1, 1},     /* a label out of range */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    ce_resized_case_run(be, &cases[i], (int)i);
}

/* The CPU backend's doubled-width column path (ow = 2 iw: contiguous loads
 * instead of per-column gathers and scatters) against its general path on
 * the same inputs, byte for byte, in every op that resizes: the resize
 * forward and backward, the fused class map, and the fused loss with its
 * gradient. Shapes: the narrowest doubling (2 -> 4), odd widths, H doubled
 * with W, H not doubled, a batch, the whole team, and rows wider than a
 * pixel tile; inputs with an infinity and a NaN in the first and the last
 * columns, whose products with the border columns' zero weights the paths
 * must keep alike. A width that is not doubled takes the general path. */
typedef struct doubled_case {
  int64_t n, c, ih, iw, oh;
  int special; /* inf and NaN in the border columns, a label out of range */
} doubled_case;

/* Every resizing op's outputs for one input, as host tensors, and the
 * plain loss and class map of the resized logits y (the other ops on the
 * CPU backend's kernel tables). */
typedef struct resized_outputs {
  st_tensor y, dx, map, res, dsmall, ce_res, dy_ce, ymap;
} resized_outputs;

static resized_outputs resized_run(st_backend *be, const st_tensor *x,
                                   const st_tensor *dy, const st_tensor *lab,
                                   const st_tensor *w) {
  const int64_t n = x->shape[0], c = x->shape[1];
  const int64_t oh = dy->shape[2], ow = dy->shape[3];
  const int64_t map_shape[3] = {n, oh, ow}, res_shape[1] = {ST_CE_RESULT_LEN};
  resized_outputs o;
  o.y = dev_alloc4(be, n, c, oh, ow);
  o.dx = dev_alloc(be, ST_F32, x);
  o.dsmall = dev_alloc(be, ST_F32, x);
  ST_ASSERT_OK(st_tensor_alloc(be, &o.map, ST_U8, 3, map_shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &o.res, ST_F32, 1, res_shape));
  ST_ASSERT_OK(st_resize_bilinear_fwd(be, x, &o.y));
  ST_ASSERT_OK(st_resize_bilinear_bwd(be, dy, &o.dx));
  ST_ASSERT_OK(st_argmax_resized(be, x, &o.map));
  ST_ASSERT_OK(st_weighted_ce_resized_into(be, x, lab, w, &o.res, &o.dsmall));
  o.dy_ce = dev_alloc(be, ST_F32, &o.y);
  ST_ASSERT_OK(st_tensor_alloc(be, &o.ymap, ST_U8, 3, map_shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &o.ce_res, ST_F32, 1, res_shape));
  ST_ASSERT_OK(st_weighted_ce_into(be, &o.y, lab, w, &o.ce_res, &o.dy_ce));
  ST_ASSERT_OK(st_argmax_channels(be, &o.y, &o.ymap));
  return o;
}

static void resized_outputs_free(resized_outputs *o) {
  st_tensor *all[] = {&o->y,      &o->dx,     &o->map,   &o->res,
                      &o->dsmall, &o->ce_res, &o->dy_ce, &o->ymap};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    st_tensor_free(all[j]);
}

static void resized_outputs_expect_equal(st_backend *be,
                                         const resized_outputs *got,
                                         const resized_outputs *want,
                                         const char *what) {
  const st_tensor *g[] = {&got->y,      &got->dx,     &got->map,   &got->res,
                          &got->dsmall, &got->ce_res, &got->dy_ce, &got->ymap};
  const st_tensor *w[] = {&want->y,     &want->dx,     &want->map,
                          &want->res,   &want->dsmall, &want->ce_res,
                          &want->dy_ce, &want->ymap};
  static const char *const names[] = {
      "resize",        "resize backward", "resized class map",
      "resized loss",  "its gradient",    "loss",
      "loss gradient", "class map"};
  for (size_t j = 0; j < sizeof g / sizeof g[0]; j++) {
    char which[128];
    snprintf(which, sizeof which, "%s, %s", what, names[j]);
    expect_equal_bytes(be, g[j], w[j], which);
  }
}

/* One case's inputs: logits x [n,c,ih,iw], an upstream gradient dy of the
 * resize [n,c,oh,2 iw], labels and weights at the output size. With
 * `special`, an infinity and a NaN in the border columns of x and dy and
 * one label out of range. Host tensors. */
static void doubled_inputs(const doubled_case *k, int i, st_tensor *x,
                           st_tensor *dy, st_tensor *lab, st_tensor *w) {
  const int64_t ow = 2 * k->iw;
  *x = host_uniform4(k->n, k->c, k->ih, k->iw, 120 + (uint64_t)i, -3.0f, 3.0f);
  *dy = host_uniform4(k->n, k->c, k->oh, ow, 140 + (uint64_t)i, -1.0f, 1.0f);
  const int64_t map_shape[3] = {k->n, k->oh, ow};
  ST_ASSERT_OK(st_tensor_alloc(NULL, lab, ST_U8, 3, map_shape));
  ST_ASSERT_OK(st_tensor_alloc(NULL, w, ST_F32, 3, map_shape));
  uint8_t *labd = lab->data;
  float *wd = w->data;
  for (int64_t j = 0; j < st_tensor_numel(lab); j++) {
    labd[j] = (uint8_t)((j * 2654435761u >> 9) % (uint64_t)k->c);
    wd[j] = (j / 5) % 3 ? 1.0f : 4.0f;
  }
  if (k->special) {
    float *xv = x->data, *dv = dy->data;
    xv[0] = INFINITY;        /* first column, first row */
    xv[2 * k->iw - 1] = NAN; /* last column, second row */
    dv[0] = -INFINITY;       /* dy's first column */
    dv[(k->oh - 1) * ow + ow - 1] = NAN;
    labd[st_tensor_numel(lab) - 1] = (uint8_t)(k->c + 3);
  }
}

static void doubled_inputs_free(st_tensor *x, st_tensor *dy, st_tensor *lab,
                                st_tensor *w) {
  st_tensor *all[] = {x, dy, lab, w};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    st_tensor_free(all[j]);
}

static void doubled_case_name(const doubled_case *k, const char *prefix,
                              char *what, size_t size) {
  snprintf(what, size, "%s %lldx%lldx%lldx%lld->%lldx%lld", prefix,
           (long long)k->n, (long long)k->c, (long long)k->ih, (long long)k->iw,
           (long long)k->oh, (long long)(2 * k->iw));
}

static void doubled_case_run(st_backend *be, const doubled_case *k, int i) {
  const int64_t ow = 2 * k->iw;
  st_tensor x, dy, lab, w;
  doubled_inputs(k, i, &x, &dy, &lab, &w);
  st__cpu_resize_allow_doubled(0);
  resized_outputs want = resized_run(be, &x, &dy, &lab, &w);
  st__cpu_resize_allow_doubled(1);
  resized_outputs got = resized_run(be, &x, &dy, &lab, &w);
  char what[96];
  doubled_case_name(k, "doubled", what, sizeof what);
  resized_outputs_expect_equal(be, &got, &want, what);
  /* Not vacuous: values, and where planted the non-finite ones, came out. */
  const float *y = want.y.data;
  assert_true(max_abs(want.dx.data, (size_t)st_tensor_numel(&want.dx)) > 0.0f ||
              k->special);
  assert_true(isfinite(y[ow / 2]) && y[ow / 2] != 0.0f);
  if (k->special)
    assert_true(isinf(y[0]) && isnan(y[2 * ow - 1]));
  resized_outputs_free(&want);
  resized_outputs_free(&got);
  doubled_inputs_free(&x, &dy, &lab, &w);
}

static void test_resize_doubled_matches_general(void **state) {
  st_backend *be = st_test_backend(state);
  if (st_test_on_gpu()) {
    printf("the CPU backend's column paths only\n");
    skip();
  }
  const doubled_case cases[] = {
      {1, 2, 3, 2, 6, 0},    /* the narrowest doubling */
      {1, 3, 7, 9, 14, 0},   /* odd width */
      {2, 2, 5, 11, 13, 1},  /* H not doubled, a batch, inf and NaN */
      {1, 9, 45, 80, 90, 0}, /* the student's ratio, the whole team */
      {1, 3, 4, 1100, 8, 1}, /* rows wider than a pixel tile */
      {1, 2, 6, 1, 12, 0},   /* one column: a general doubling */
      {1, 2, 3, 5, 6, 0},    /* 5 -> 10 */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    doubled_case_run(be, &cases[i], (int)i);
}

/* The CPU backend's kernel tables (cpu_kernels.h: the same loops compiled
 * for the baseline, AVX2 and AVX-512) against the baseline's, byte for
 * byte, in every op that calls them, on the doubled-width test's shapes
 * (both column paths, pixel tiles and their remainders, infinities, NaNs
 * and a label out of range). A table this CPU does not run is reported and
 * left out; a name no build has is refused. */
static void test_cpu_kernel_sets_agree(void **state) {
  (void)state;
  if (st_test_on_gpu()) {
    printf("the CPU backend's kernel tables only\n");
    skip();
  }
  st_backend_options opts = {
      .kind = ST_BACKEND_CPU, .threads = 2, .cpu_isa = "baseline"};
  st_backend *base = NULL;
  ST_ASSERT_OK(st_backend_new(&opts, &base));
  assert_string_equal(st_backend_cpu_isa(base), "baseline");
  st_backend *other = NULL;
  opts.cpu_isa = "avx1024";
  assert_int_equal(st_backend_new(&opts, &other), ST_EINVAL);
  assert_non_null(strstr(st_error_detail(), "\"avx1024\""));
  assert_null(other);

  const doubled_case cases[] = {
      {1, 2, 3, 2, 6, 0},    /* the narrowest doubling */
      {2, 3, 7, 9, 13, 1},   /* odd width, H not doubled, a batch */
      {1, 9, 45, 80, 90, 1}, /* the student's ratio and classes */
      {1, 3, 4, 1100, 8, 1}, /* rows wider than a pixel tile */
      {1, 21, 5, 37, 11, 0}, /* 21 classes, remainders of every width */
  };
  const char *const sets[] = {"avx2", "avx512"};
  int compared = 0;
  for (size_t s = 0; s < sizeof sets / sizeof sets[0]; s++) {
    opts.cpu_isa = sets[s];
    const int rc = st_backend_new(&opts, &other);
    if (rc == ST_ENOTSUP || rc == ST_EINVAL) {
      printf("%s: not compared: %s\n", sets[s], st_error_detail());
      continue;
    }
    ST_ASSERT_OK(rc);
    assert_string_equal(st_backend_cpu_isa(other), sets[s]);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      st_tensor x, dy, lab, w;
      doubled_inputs(&cases[i], (int)i, &x, &dy, &lab, &w);
      resized_outputs want = resized_run(base, &x, &dy, &lab, &w);
      resized_outputs got = resized_run(other, &x, &dy, &lab, &w);
      char what[96];
      doubled_case_name(&cases[i], sets[s], what, sizeof what);
      resized_outputs_expect_equal(other, &got, &want, what);
      /* Not vacuous: finite nonzero values, and the planted label's
       * error, came out. */
      float loss = 0.0f;
      const int want_rc = cases[i].special ? ST_ERANGE : ST_OK;
      assert_int_equal(
          st_weighted_ce_result(base, &want.ce_res, (int)cases[i].c, &loss),
          want_rc);
      assert_int_equal(
          st_weighted_ce_result(base, &want.res, (int)cases[i].c, &loss),
          want_rc);
      const float *y = want.y.data;
      const int64_t mid = 2 * cases[i].iw * (cases[i].oh / 2) + cases[i].iw;
      assert_true(isfinite(y[mid]) && y[mid] != 0.0f);
      assert_true(max_abs((const float *)want.dy_ce.data + mid, 1) > 0.0f);
      resized_outputs_free(&want);
      resized_outputs_free(&got);
      doubled_inputs_free(&x, &dy, &lab, &w);
    }
    st_backend_free(other);
    other = NULL;
    compared++;
  }
  st_backend_free(base);
  if (!compared) {
    printf("no kernel table but the baseline runs on this CPU\n");
    skip();
  }
}

static void test_argmax_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_loss.safetensors");
  for (int i = 0; i < 2; i++) {
    char p[16];
    snprintf(p, sizeof p, "argmax%d.", i);
    st_tensor hl = fx_get(fx, p, "logits"), hlab = fx_get(fx, p, "labels");
    st_tensor l = st_test_to_backend(be, &hl), lab;
    ST_ASSERT_OK(st_tensor_alloc(be, &lab, ST_U8, 3, hlab.shape));
    ST_ASSERT_OK(st_argmax_channels(be, &l, &lab));
    expect_equal_bytes(be, &lab, &hlab, p);
    st_tensor *all[] = {&hl, &hlab, &l, &lab};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
      st_tensor_free(all[k]);
  }
  st_safetensors_free(fx);
}

/* The fused class map against resize then argmax on the same backend,
 * byte for byte: up (integer and not), down, equal sizes, a batch, one
 * class and 256, with values on a coarse grid so that channels tie, and
 * NaNs (a NaN wins, the first NaN among them). The first case is large
 * enough for the CPU backend's whole team. */
typedef struct argmax_resized_case {
  int64_t n, c, ih, iw, oh, ow;
  int nans; /* NaNs planted in the input */
} argmax_resized_case;

static void argmax_resized_case_run(st_backend *be,
                                    const argmax_resized_case *k, int i) {
  st_tensor hx =
      host_uniform4(k->n, k->c, k->ih, k->iw, 90 + (uint64_t)i, -2.0f, 2.0f);
  float *xv = hx.data;
  const int64_t len = st_tensor_numel(&hx);
  for (int64_t j = 0; j < len; j++)
    xv[j] = floorf(xv[j] * 2.0f) / 2.0f; /* 8 levels: many ties */
  for (int j = 0; j < k->nans; j++)
    xv[(j * 7919 + 13) % len] = NAN;
  const int64_t map_shape[3] = {k->n, k->oh, k->ow};
  st_tensor x = st_test_to_backend(be, &hx),
            up = dev_alloc4(be, k->n, k->c, k->oh, k->ow), want, got;
  ST_ASSERT_OK(st_tensor_alloc(be, &want, ST_U8, 3, map_shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &got, ST_U8, 3, map_shape));
  ST_ASSERT_OK(st_resize_bilinear_fwd(be, &x, &up));
  ST_ASSERT_OK(st_argmax_channels(be, &up, &want));
  ST_ASSERT_OK(st_argmax_resized(be, &x, &got));
  st_tensor hwant = st_test_to_host(be, &want);
  char what[96];
  snprintf(what, sizeof what, "argmax_resized %lldx%lldx%lld->%lldx%lld",
           (long long)k->c, (long long)k->ih, (long long)k->iw,
           (long long)k->oh, (long long)k->ow);
  expect_equal_bytes(be, &got, &hwant, what);
  /* Not vacuous: with several classes the map holds several of them. */
  if (k->c > 1) {
    const uint8_t *m = hwant.data;
    int64_t differ = 0;
    for (int64_t j = 1; j < st_tensor_numel(&hwant); j++)
      differ += m[j] != m[0];
    assert_true(differ > 0);
  }
  st_tensor *all[] = {&hx, &x, &up, &want, &got, &hwant};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    st_tensor_free(all[j]);
}

static void test_argmax_resized(void **state) {
  st_backend *be = st_test_backend(state);
  const argmax_resized_case cases[] = {
      {1, 9, 45, 80, 180, 320, 0}, /* 4x up, threaded */
      {2, 5, 7, 9, 23, 31, 6},     /* non-integer up, a batch, NaNs */
      {1, 3, 13, 21, 5, 8, 2},     /* down */
      {1, 4, 6, 6, 6, 6, 1},       /* equal sizes */
      {1, 1, 4, 5, 9, 11, 0},      /* one class */
      {1, 256, 3, 4, 7, 9, 0},     /* every label value */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    argmax_resized_case_run(be, &cases[i], (int)i);
}

#define MIOU_CLASSES 6

static void test_miou_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_loss.safetensors");
  st_tensor hl = fx_get(fx, "miou.", "logits"),
            hlab = fx_get(fx, "miou.", "label"),
            hcounts = fx_get(fx, "miou.", "counts");
  const float want = fx_scalar(fx, "miou.", "value");
  st_tensor l = st_test_to_backend(be, &hl),
            lab = st_test_to_backend(be, &hlab), pred;
  ST_ASSERT_OK(st_tensor_alloc(be, &pred, ST_U8, 3, hlab.shape));
  ST_ASSERT_OK(st_argmax_channels(be, &l, &pred));
  int64_t counts[MIOU_CLASSES * MIOU_CLASSES];
  memset(counts, 0xff, sizeof counts); /* the op must zero them */
  ST_ASSERT_OK(st_confusion_counts(be, &pred, &lab, MIOU_CLASSES, counts));
  const int64_t *wc = hcounts.data;
  for (int i = 0; i < MIOU_CLASSES * MIOU_CLASSES; i++)
    if (counts[i] != wc[i])
      fail_msg("counts[%d] = %lld, want %lld", i, (long long)counts[i],
               (long long)wc[i]);
  const float got = (float)st_miou_from_counts(counts, MIOU_CLASSES);
  st_test_assert_close(&got, &want, 1, ULPS_RTOL, 0.0, "miou");
  /* Without waiting, into a result tensor: the same counts. */
  const int64_t dev_shape[1] = {MIOU_CLASSES * MIOU_CLASSES +
                                ST_CONFUSION_EXTRA};
  st_tensor dev;
  ST_ASSERT_OK(st_tensor_alloc(be, &dev, ST_I64, 1, dev_shape));
  int64_t later[MIOU_CLASSES * MIOU_CLASSES];
  ST_ASSERT_OK(st_confusion_counts_into(be, &pred, &lab, MIOU_CLASSES, &dev));
  ST_ASSERT_OK(st_confusion_counts_result(be, &dev, MIOU_CLASSES, later));
  assert_memory_equal(later, counts, sizeof counts);
  /* Values >= num_classes are an error, found when the result is read; a
   * result sized for other classes is refused. */
  assert_int_equal(
      st_confusion_counts(be, &pred, &lab, MIOU_CLASSES - 2, counts),
      ST_ERANGE);
  assert_int_equal(
      st_confusion_counts_into(be, &pred, &lab, MIOU_CLASSES - 2, &dev),
      ST_ESHAPE);
  st_tensor_free(&dev);
  st_tensor *all[] = {&hl, &hlab, &hcounts, &l, &lab, &pred};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
  st_safetensors_free(fx);
}

/* ---- optimiser and conversions ----------------------------------------------
 */

#define ADAM_STEPS 3
#define ADAM_LR 0.01
#define ADAM_BETA1 0.9
#define ADAM_BETA2 0.999
#define ADAM_EPS 1e-8

static void test_adam_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_misc.safetensors");
  st_tensor hp = fx_get(fx, "adam.", "param0");
  st_tensor p = st_test_to_backend(be, &hp), m, v;
  ST_ASSERT_OK(st_tensor_alloc(be, &m, ST_F32, hp.ndim, hp.shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &v, ST_F32, hp.ndim, hp.shape));
  const st_adam_params ap = {ADAM_LR, ADAM_BETA1, ADAM_BETA2, ADAM_EPS};
  for (int s = 1; s <= ADAM_STEPS; s++) {
    char name[16];
    snprintf(name, sizeof name, "grad%d", s);
    st_tensor hg = fx_get(fx, "adam.", name);
    st_tensor g = st_test_to_backend(be, &hg);
    ST_ASSERT_OK(st_adam_step(be, &ap, s, &p, &g, &m, &v));
    const char *fields[] = {"param", "m", "v"};
    st_tensor *dev[] = {&p, &m, &v};
    for (int f = 0; f < 3; f++) {
      snprintf(name, sizeof name, "%s%d", fields[f], s);
      st_tensor want = fx_get(fx, "adam.", name);
      expect_close(be, dev[f], &want, ULPS_RTOL, 0.0, name);
      st_tensor_free(&want);
    }
    st_tensor_free(&hg);
    st_tensor_free(&g);
  }
  st_tensor *all[] = {&hp, &p, &m, &v};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
  st_safetensors_free(fx);
}

/* Enough tensors for two CUDA batches (32 per launch), of sizes from one
 * element to more than one block's worth, with an empty one among them. */
#define ADAM_MANY 37

/* st_adam_steps over many tensors gives each tensor exactly what
 * st_adam_step gives it, over several steps. */
static void test_adam_steps_match_single(void **state) {
  st_backend *be = st_test_backend(state);
  const st_adam_params ap = {ADAM_LR, ADAM_BETA1, ADAM_BETA2, ADAM_EPS};
  /* [k][0..3]: param, grad, m, v of the batched run; [k][4..7] single. */
  st_tensor t[ADAM_MANY][8];
  st_tensor *params[ADAM_MANY], *ms[ADAM_MANY], *vs[ADAM_MANY];
  const st_tensor *grads[ADAM_MANY];
  for (int k = 0; k < ADAM_MANY; k++) {
    const int64_t n = k == 5 ? 0 : 1 + (int64_t)k * k * 7;
    const int64_t shape[1] = {n};
    st_tensor host;
    ST_ASSERT_OK(st_tensor_alloc(NULL, &host, ST_F32, 1, shape));
    for (int f = 0; f < 8; f++) {
      /* param and grad random, moments start from a random state too */
      st_test_fill_uniform(host.data, (size_t)n, 100 + (uint64_t)k * 4 + f % 4,
                           f % 4 == 3 ? 0.0f : -1.0f, 1.0f);
      t[k][f] = st_test_to_backend(be, &host);
    }
    st_tensor_free(&host);
    params[k] = &t[k][0];
    grads[k] = &t[k][1];
    ms[k] = &t[k][2];
    vs[k] = &t[k][3];
  }
  for (int64_t step = 1; step <= ADAM_STEPS; step++) {
    ST_ASSERT_OK(
        st_adam_steps(be, &ap, step, ADAM_MANY, params, grads, ms, vs));
    for (int k = 0; k < ADAM_MANY; k++)
      ST_ASSERT_OK(
          st_adam_step(be, &ap, step, &t[k][4], &t[k][5], &t[k][6], &t[k][7]));
  }
  for (int k = 0; k < ADAM_MANY; k++)
    for (int f = 0; f < 4; f++) {
      if (f == 1)
        continue; /* grads are only read */
      st_tensor a = st_test_to_host(be, &t[k][f]);
      st_tensor b = st_test_to_host(be, &t[k][f + 4]);
      assert_memory_equal(a.data, b.data, st_tensor_nbytes(&a));
      st_tensor_free(&a);
      st_tensor_free(&b);
    }
  for (int k = 0; k < ADAM_MANY; k++)
    for (int f = 0; f < 8; f++)
      st_tensor_free(&t[k][f]);
  /* Mismatched shapes are refused before anything runs. */
  st_tensor small, big;
  const int64_t s1[1] = {3}, s2[1] = {4};
  ST_ASSERT_OK(st_tensor_alloc(be, &small, ST_F32, 1, s1));
  ST_ASSERT_OK(st_tensor_alloc(be, &big, ST_F32, 1, s2));
  st_tensor *bp[1] = {&small}, *bm[1] = {&small}, *bv[1] = {&big};
  const st_tensor *bg[1] = {&small};
  assert_int_equal(st_adam_steps(be, &ap, 1, 1, bp, bg, bm, bv), ST_ESHAPE);
  assert_int_equal(st_adam_steps(be, &ap, 0, 1, bp, bg, bm, bm), ST_EINVAL);
  st_tensor_free(&small);
  st_tensor_free(&big);
}

static int f16_is_nan(uint16_t h) {
  return (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu);
}

#define F16_PATTERNS 65536

static void test_cast_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_cast.safetensors");
  st_tensor hsrc = fx_get(fx, "cast.", "f32"),
            hwant = fx_get(fx, "cast.", "f16");
  st_tensor src = st_test_to_backend(be, &hsrc), half;
  ST_ASSERT_OK(st_tensor_alloc(be, &half, ST_F16, hsrc.ndim, hsrc.shape));
  ST_ASSERT_OK(st_cast(be, &src, &half));
  st_tensor hhalf = st_test_to_host(be, &half);
  const uint16_t *got = hhalf.data, *want = hwant.data;
  const float *in = hsrc.data;
  for (int64_t i = 0; i < st_tensor_numel(&hsrc); i++) {
    if (f16_is_nan(want[i]) ? !f16_is_nan(got[i]) : got[i] != want[i])
      fail_msg("f32->f16 of %.9g: got 0x%04x, want 0x%04x", (double)in[i],
               got[i], want[i]);
  }

  /* Every half pattern widened. */
  const int64_t all_shape[1] = {F16_PATTERNS};
  st_tensor hall, wide;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hall, ST_F16, 1, all_shape));
  for (int i = 0; i < F16_PATTERNS; i++)
    ((uint16_t *)hall.data)[i] = (uint16_t)i;
  st_tensor all_dev = st_test_to_backend(be, &hall);
  ST_ASSERT_OK(st_tensor_alloc(be, &wide, ST_F32, 1, all_shape));
  ST_ASSERT_OK(st_cast(be, &all_dev, &wide));
  st_tensor hwide = st_test_to_host(be, &wide);
  st_tensor hwide_want = fx_get(fx, "cast.", "all_f16_as_f32");
  const float *gw = hwide.data, *ww = hwide_want.data;
  for (int i = 0; i < F16_PATTERNS; i++) {
    const int ok = isnan(ww[i]) ? isnan(gw[i])
                                : memcmp(&gw[i], &ww[i], sizeof(float)) == 0;
    if (!ok)
      fail_msg("f16 0x%04x -> f32: got %.9g, want %.9g", i, (double)gw[i],
               (double)ww[i]);
  }
  st_tensor *all[] = {&hsrc, &hwant, &src,     &half,  &hhalf,
                      &hall, &wide,  &all_dev, &hwide, &hwide_want};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
  st_safetensors_free(fx);
}

static void test_copy_fill(void **state) {
  st_backend *be = st_test_backend(state);
  enum { N = 2, C = 3, H = 5, W = 7 };
  st_tensor hx = host_uniform4(N, C, H, W, 61, -5.0f, 5.0f);
  st_tensor x = st_test_to_backend(be, &hx);
  /* Same element count, another shape: copy is by elements. */
  st_tensor y = dev_alloc4(be, 1, 1, N * C, H * W);
  ST_ASSERT_OK(st_copy(be, &x, &y));
  expect_close(be, &y, &hx, 0.0, 0.0, "copy");
  const float value = -2.5f;
  ST_ASSERT_OK(st_fill(be, &y, value));
  st_tensor hy = st_test_to_host(be, &y);
  for (int64_t i = 0; i < st_tensor_numel(&hy); i++)
    assert_true(((float *)hy.data)[i] == value);
  st_tensor *all[] = {&hx, &x, &y, &hy};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
}

static void test_image_to_tensor_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("ops_misc.safetensors");
  st_tensor himg = fx_get(fx, "image.", "rgb");
  st_tensor img = st_test_to_backend(be, &himg);
  const struct {
    const char *mean, *std_, *want;
    int order[3];
  } cases[] = {{"bgr_mean", "bgr_std", "bgr", {2, 1, 0}},
               {"rgb_mean", "rgb_std", "rgb_tensor", {0, 1, 2}}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    st_tensor hm = fx_get(fx, "image.", cases[i].mean),
              hs = fx_get(fx, "image.", cases[i].std_),
              hw = fx_get(fx, "image.", cases[i].want);
    st_tensor y = dev_alloc(be, ST_F32, &hw);
    ST_ASSERT_OK(
        st_image_to_tensor(be, &img, cases[i].order, hm.data, hs.data, &y));
    expect_close(be, &y, &hw, 0.0, 0.0, cases[i].want);
    st_tensor *all[] = {&hm, &hs, &hw, &y};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
      st_tensor_free(all[k]);
  }
  st_tensor_free(&himg);
  st_tensor_free(&img);
  st_safetensors_free(fx);
}

/* ---- argument checks in the wrappers ----------------------------------------
 */

static void test_wrappers_reject_bad_shapes(void **state) {
  st_backend *be = st_test_backend(state);
  st_tensor a = dev_alloc4(be, 1, 2, 3, 4), b = dev_alloc4(be, 1, 2, 3, 5),
            c3 = dev_alloc4(be, 1, 3, 3, 4), small = dev_alloc4(be, 1, 2, 1, 2);
  const int64_t vshape[1] = {3}, mshape[3] = {1, 3, 5};
  st_tensor vec, lab, w;
  ST_ASSERT_OK(st_tensor_alloc(be, &vec, ST_F32, 1, vshape));
  ST_ASSERT_OK(st_tensor_alloc(be, &lab, ST_U8, 3, mshape));
  ST_ASSERT_OK(st_tensor_alloc(be, &w, ST_F32, 3, mshape));
  float loss = 0.0f;

  assert_int_equal(st_add(be, &a, &b, &a), ST_ESHAPE);
  assert_int_equal(st_relu_fwd(be, &a, &b), ST_ESHAPE);
  assert_int_equal(st_relu_bwd(be, &a, &a, &b), ST_ESHAPE);
  /* gamma has 3 entries for 2 channels */
  assert_int_equal(
      st_batchnorm_fwd(be, &a, &vec, &vec, 1e-5f, ST_ACT_NONE, &a, &vec, &vec),
      ST_ESHAPE);
  assert_int_equal(st_resize_bilinear_fwd(be, &a, &c3), ST_ESHAPE);
  assert_int_equal(st_resize_bilinear_bwd(be, &c3, &a), ST_ESHAPE);
  /* 3x4 with stride 2 gives 2x2, not 1x2 */
  assert_int_equal(st_subsample(be, &a, 2, &small), ST_ESHAPE);
  assert_int_equal(st_subsample_bwd(be, &small, 2, &a), ST_ESHAPE);
  assert_int_equal(st_concat_channels(be, &a, &b, &c3), ST_ESHAPE);
  assert_int_equal(st_split_channels(be, &c3, &a, &a), ST_ESHAPE);
  /* label map 3x5 for 3x4 logits */
  assert_int_equal(st_weighted_ce(be, &a, &lab, &w, &loss, NULL), ST_ESHAPE);
  assert_int_equal(st_argmax_channels(be, &a, &lab), ST_ESHAPE);
  /* the class map must be U8 [N,H,W] with the logits' N */
  assert_int_equal(st_argmax_resized(be, &a, &w), ST_EDTYPE);
  assert_int_equal(st_argmax_resized(be, &a, &a), ST_EDTYPE);
  st_tensor lab2;
  const int64_t m2shape[3] = {2, 3, 5};
  ST_ASSERT_OK(st_tensor_alloc(be, &lab2, ST_U8, 3, m2shape));
  assert_int_equal(st_argmax_resized(be, &a, &lab2), ST_ESHAPE);
  st_tensor_free(&lab2);
  st_tensor many = dev_alloc4(be, 1, 257, 1, 1);
  assert_int_equal(st_argmax_resized(be, &many, &lab), ST_ESHAPE);
  st_tensor_free(&many);
  /* the resized loss: label and weight alike, N shared, dlogits like the
   * logits, the result F32 [ST_CE_RESULT_LEN] */
  st_tensor res, wide_w;
  const int64_t res_shape[1] = {ST_CE_RESULT_LEN}, wshape[3] = {1, 3, 6};
  ST_ASSERT_OK(st_tensor_alloc(be, &res, ST_F32, 1, res_shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &wide_w, ST_F32, 3, wshape));
  ST_ASSERT_OK(st_tensor_alloc(be, &lab2, ST_U8, 3, m2shape));
  assert_int_equal(
      st_weighted_ce_resized_into(be, &a, &lab, &wide_w, &res, NULL),
      ST_ESHAPE);
  assert_int_equal(st_weighted_ce_resized_into(be, &a, &lab2, &w, &res, NULL),
                   ST_ESHAPE);
  assert_int_equal(st_weighted_ce_resized_into(be, &a, &lab, &w, &res, &b),
                   ST_ESHAPE);
  st_tensor short_res;
  const int64_t short_shape[1] = {ST_CE_RESULT_LEN - 1};
  ST_ASSERT_OK(st_tensor_alloc(be, &short_res, ST_F32, 1, short_shape));
  assert_int_equal(
      st_weighted_ce_resized_into(be, &a, &lab, &w, &short_res, NULL),
      ST_ESHAPE);
  st_tensor_free(&short_res);
  assert_int_equal(st_weighted_ce_resized_into(be, &a, &w, &w, &res, NULL),
                   ST_EDTYPE);
  st_tensor da = dev_alloc4(be, 1, 2, 3, 4);
  ST_ASSERT_OK(st_weighted_ce_resized_into(be, &a, &lab, &w, &res, &da));
  st_tensor_free(&da);
  st_tensor_free(&res);
  st_tensor_free(&wide_w);
  st_tensor_free(&lab2);
  assert_int_equal(st_cast(be, &a, &b), ST_EDTYPE);
  assert_int_equal(st_copy(be, &a, &b), ST_ESHAPE);
  st_tensor *all[] = {&a, &b, &c3, &small, &vec, &lab, &w};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
}

/* ---- large inputs: threaded paths against one thread ----------------------
 */

/* Every op on fixed inputs large enough to run on the whole team; the
 * results come back as host tensors in a fixed order. */
enum {
  BIG_BN_Y,
  BIG_BN_MEAN,
  BIG_BN_INVSTD,
  BIG_BN_DX,
  BIG_BN_DGAMMA,
  BIG_BN_DBETA,
  BIG_RELU_Y,
  BIG_RELU_DX,
  BIG_ADD,
  BIG_CONCAT,
  BIG_SPLIT_A,
  BIG_SPLIT_B,
  BIG_SUB,
  BIG_SUB_DX,
  BIG_UP,
  BIG_UP_DX,
  BIG_DOWN,
  BIG_DOWN_DX,
  BIG_CE_D,
  BIG_CE_LOSS,
  BIG_ARGMAX,
  BIG_COUNTS,
  BIG_HALF,
  BIG_WIDE,
  BIG_COPY,
  BIG_FILL,
  BIG_IMAGE,
  BIG_ADAM_P,
  BIG_ADAM_M,
  BIG_ADAM_V,
  BIG_COUNT
};

#define BIG_CLASSES 9

typedef struct big_results {
  st_tensor t[BIG_COUNT];
} big_results;

static void big_keep(st_backend *be, big_results *out, int slot,
                     st_tensor *dev) {
  out->t[slot] = st_test_to_host(be, dev);
  st_tensor_free(dev);
}

static void big_run(st_backend *be, big_results *out) {
  enum { N = 2, C = 8, H = 90, W = 160 };
  st_tensor hx = host_uniform4(N, C, H, W, 71, -1.0f, 3.0f);
  st_tensor hdy = host_uniform4(N, C, H, W, 72, -1.0f, 1.0f);
  st_tensor hg = host_uniform_vec(C, 73, 0.5f, 1.5f);
  st_tensor hb = host_uniform_vec(C, 74, -0.5f, 0.5f);
  st_tensor x = st_test_to_backend(be, &hx), dy = st_test_to_backend(be, &hdy),
            g = st_test_to_backend(be, &hg), b = st_test_to_backend(be, &hb);

  st_tensor y = dev_alloc(be, ST_F32, &hx), mean = dev_alloc(be, ST_F32, &hg),
            inv = dev_alloc(be, ST_F32, &hg), dx = dev_alloc(be, ST_F32, &hx),
            dg = dev_alloc(be, ST_F32, &hg), db = dev_alloc(be, ST_F32, &hg);
  ST_ASSERT_OK(st_batchnorm_fwd(be, &x, &g, &b, BN_FD_EPS, ST_ACT_RELU, &y,
                                &mean, &inv));
  ST_ASSERT_OK(st_batchnorm_bwd(be, &x, &y, &dy, &g, &mean, &inv, ST_ACT_RELU,
                                &dx, &dg, &db));
  big_keep(be, out, BIG_BN_MEAN, &mean);
  big_keep(be, out, BIG_BN_INVSTD, &inv);
  big_keep(be, out, BIG_BN_DX, &dx);
  big_keep(be, out, BIG_BN_DGAMMA, &dg);
  big_keep(be, out, BIG_BN_DBETA, &db);

  st_tensor ry = dev_alloc(be, ST_F32, &hx), rdx = dev_alloc(be, ST_F32, &hx),
            sum = dev_alloc(be, ST_F32, &hx);
  ST_ASSERT_OK(st_relu_fwd(be, &x, &ry));
  ST_ASSERT_OK(st_relu_bwd(be, &ry, &dy, &rdx));
  ST_ASSERT_OK(st_add(be, &x, &dy, &sum));
  big_keep(be, out, BIG_RELU_Y, &ry);
  big_keep(be, out, BIG_RELU_DX, &rdx);
  big_keep(be, out, BIG_ADD, &sum);

  st_tensor cat = dev_alloc4(be, N, 2 * C, H, W),
            sa = dev_alloc(be, ST_F32, &hx), sb = dev_alloc(be, ST_F32, &hx);
  ST_ASSERT_OK(st_concat_channels(be, &x, &y, &cat));
  ST_ASSERT_OK(st_split_channels(be, &cat, &sa, &sb));
  big_keep(be, out, BIG_CONCAT, &cat);
  big_keep(be, out, BIG_SPLIT_A, &sa);
  big_keep(be, out, BIG_SPLIT_B, &sb);
  big_keep(be, out, BIG_BN_Y, &y);

  st_tensor sub = dev_alloc4(be, N, C, (H + 2) / 3, (W + 2) / 3),
            sub_dx = dev_alloc(be, ST_F32, &hx);
  ST_ASSERT_OK(st_subsample(be, &x, 3, &sub));
  ST_ASSERT_OK(st_subsample_bwd(be, &sub, 3, &sub_dx));
  big_keep(be, out, BIG_SUB, &sub);
  big_keep(be, out, BIG_SUB_DX, &sub_dx);

  /* Upsample 4x like the student's last layer, and a non-integer
   * downsample of the result. */
  st_tensor hsmall = host_uniform4(1, BIG_CLASSES, 45, 80, 75, -4.0f, 4.0f);
  st_tensor small = st_test_to_backend(be, &hsmall),
            up = dev_alloc4(be, 1, BIG_CLASSES, 180, 320),
            up_dx = dev_alloc(be, ST_F32, &hsmall),
            down = dev_alloc4(be, 1, BIG_CLASSES, 47, 83),
            down_dx = dev_alloc4(be, 1, BIG_CLASSES, 180, 320);
  ST_ASSERT_OK(st_resize_bilinear_fwd(be, &small, &up));
  ST_ASSERT_OK(st_resize_bilinear_bwd(be, &up, &up_dx));
  ST_ASSERT_OK(st_resize_bilinear_fwd(be, &up, &down));
  ST_ASSERT_OK(st_resize_bilinear_bwd(be, &down, &down_dx));
  big_keep(be, out, BIG_UP_DX, &up_dx);
  big_keep(be, out, BIG_DOWN, &down);
  big_keep(be, out, BIG_DOWN_DX, &down_dx);

  /* Loss and metrics on logits uploaded from the host, so that an ulp of
   * difference in another backend's resize cannot flip an argmax. */
  st_tensor hlogits = host_uniform4(1, BIG_CLASSES, 180, 320, 76, -6.0f, 6.0f);
  st_tensor logits = st_test_to_backend(be, &hlogits);
  const int64_t map_shape[3] = {1, 180, 320};
  st_tensor hlab, hw;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hlab, ST_U8, 3, map_shape));
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hw, ST_F32, 3, map_shape));
  for (int64_t i = 0; i < st_tensor_numel(&hlab); i++) {
    ((uint8_t *)hlab.data)[i] = (uint8_t)((i * 2654435761u >> 7) % BIG_CLASSES);
    ((float *)hw.data)[i] = (i / 640) % 4 ? 1.0f : 5.0f;
  }
  st_tensor lab = st_test_to_backend(be, &hlab),
            w = st_test_to_backend(be, &hw),
            dl = dev_alloc(be, ST_F32, &hlogits), pred;
  ST_ASSERT_OK(st_tensor_alloc(be, &pred, ST_U8, 3, map_shape));
  float loss = NAN;
  ST_ASSERT_OK(st_weighted_ce(be, &logits, &lab, &w, &loss, &dl));
  ST_ASSERT_OK(st_argmax_channels(be, &logits, &pred));
  st_tensor hcounts;
  const int64_t cshape[1] = {BIG_CLASSES * BIG_CLASSES};
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hcounts, ST_I64, 1, cshape));
  ST_ASSERT_OK(st_confusion_counts(be, &pred, &lab, BIG_CLASSES, hcounts.data));
  const int64_t one[1] = {1};
  ST_ASSERT_OK(st_tensor_alloc(NULL, &out->t[BIG_CE_LOSS], ST_F32, 1, one));
  ((float *)out->t[BIG_CE_LOSS].data)[0] = loss;
  out->t[BIG_COUNTS] = hcounts;
  big_keep(be, out, BIG_CE_D, &dl);
  big_keep(be, out, BIG_ARGMAX, &pred);
  big_keep(be, out, BIG_UP, &up);

  st_tensor half, wide = dev_alloc(be, ST_F32, &hx),
                  copy = dev_alloc(be, ST_F32, &hx),
                  filled = dev_alloc(be, ST_F32, &hx);
  ST_ASSERT_OK(st_tensor_alloc(be, &half, ST_F16, 4, hx.shape));
  ST_ASSERT_OK(st_cast(be, &dy, &half));
  ST_ASSERT_OK(st_cast(be, &half, &wide));
  ST_ASSERT_OK(st_copy(be, &x, &copy));
  ST_ASSERT_OK(st_fill(be, &filled, 0.75f));
  big_keep(be, out, BIG_HALF, &half);
  big_keep(be, out, BIG_WIDE, &wide);
  big_keep(be, out, BIG_COPY, &copy);
  big_keep(be, out, BIG_FILL, &filled);

  const int64_t img_shape[3] = {180, 320, 3};
  st_tensor himg;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &himg, ST_U8, 3, img_shape));
  for (int64_t i = 0; i < st_tensor_numel(&himg); i++)
    ((uint8_t *)himg.data)[i] = (uint8_t)(i * 37 + (i >> 9));
  st_tensor img = st_test_to_backend(be, &himg),
            norm = dev_alloc4(be, 1, 3, 180, 320);
  const int order[3] = {2, 1, 0};
  const float mu[3] = {103.53f, 116.28f, 123.675f},
              sd[3] = {57.4f, 57.1f, 58.4f};
  ST_ASSERT_OK(st_image_to_tensor(be, &img, order, mu, sd, &norm));
  big_keep(be, out, BIG_IMAGE, &norm);

  st_tensor m, v, p = st_test_to_backend(be, &hx);
  ST_ASSERT_OK(st_tensor_alloc(be, &m, ST_F32, 4, hx.shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &v, ST_F32, 4, hx.shape));
  const st_adam_params ap = {ADAM_LR, ADAM_BETA1, ADAM_BETA2, ADAM_EPS};
  ST_ASSERT_OK(st_adam_step(be, &ap, 1, &p, &dy, &m, &v));
  ST_ASSERT_OK(st_adam_step(be, &ap, 2, &p, &x, &m, &v));
  big_keep(be, out, BIG_ADAM_P, &p);
  big_keep(be, out, BIG_ADAM_M, &m);
  big_keep(be, out, BIG_ADAM_V, &v);

  st_tensor *all[] = {&hx,   &hdy, &hg,     &hb,    &x,       &dy,
                      &g,    &b,   &hsmall, &small, &hlogits, &logits,
                      &hlab, &hw,  &lab,    &w,     &himg,    &img};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    st_tensor_free(all[k]);
}

static void big_compare(const big_results *got, const big_results *want,
                        double rtol, double atol, const char *against) {
  for (int k = 0; k < BIG_COUNT; k++) {
    const st_tensor *a = &got->t[k], *b = &want->t[k];
    char what[64];
    snprintf(what, sizeof what, "result %d against %s", k, against);
    assert_int_equal(st_tensor_nbytes(a), st_tensor_nbytes(b));
    if (a->dtype == ST_F32) {
      st_test_assert_close(a->data, b->data, (size_t)st_tensor_numel(a), rtol,
                           atol, what);
    } else if (memcmp(a->data, b->data, st_tensor_nbytes(a)) != 0) {
      fail_msg("%s: %s bytes differ", what, st_dtype_name(a->dtype));
    }
  }
}

static void big_free(big_results *r) {
  for (int k = 0; k < BIG_COUNT; k++)
    st_tensor_free(&r->t[k]);
}

static void test_threads_agree(void **state) {
  st_backend *be = st_test_backend(state);
  big_results got = {0}, want = {0};
  big_run(be, &got);
  /* A one-thread CPU context is the reference; an odd team size splits
   * every op unevenly. */
  const int threads[] = {1, BIG_THREADS_ODD};
  for (size_t i = 0; i < sizeof threads / sizeof threads[0]; i++) {
    st_backend_options opts = {
        .kind = ST_BACKEND_CPU, .threads = threads[i], .deterministic = 1};
    st_backend *ref = NULL;
    ST_ASSERT_OK(st_backend_new(&opts, &ref));
    big_run(ref, &want);
    char against[32];
    snprintf(against, sizeof against, "cpu with %d threads", threads[i]);
    const int same = st_backend_get_kind(be) == ST_BACKEND_CPU;
    big_compare(&got, &want, same ? BIG_CPU_RTOL : BIG_CROSS_RTOL,
                same ? BIG_CPU_ATOL : BIG_CROSS_ATOL, against);
    /* The CPU loss adds its tiles' sums in tile order, so every team size
     * gives the same bits. */
    if (same)
      assert_memory_equal(got.t[BIG_CE_LOSS].data, want.t[BIG_CE_LOSS].data,
                          sizeof(float));
    big_free(&want);
    st_backend_free(ref);
  }
  /* Not vacuous: the loss is a real number and the gradient is non-zero. */
  const float loss = ((float *)got.t[BIG_CE_LOSS].data)[0];
  assert_true(isfinite(loss) && loss > 0.0f);
  assert_true(max_abs(got.t[BIG_UP_DX].data,
                      (size_t)st_tensor_numel(&got.t[BIG_UP_DX])) > 1.0f);
  big_free(&got);
}

/* ---- benchmark (ST_OPS_BENCH=1) -------------------------------------------
 */

/* The student's class map and loss at 720x1280 from its [1,C,360,640]
 * logits on a default CPU context, ms per call (median of BENCH_REPS after
 * one warm-up): the resize then the argmax against st_argmax_resized, the
 * resize, the loss and the resize backward against
 * st_weighted_ce_resized_into, with the ratio of each pair in the same run,
 * and the resize forward and backward alone. */
#define BENCH_REPS 7

typedef struct bench_data {
  st_backend *be;
  st_tensor x, dx, up, dup, lab, w, res;
} bench_data;

/* The timed work, by bench_call's `what`. */
enum {
  BENCH_MAP_COMPOSED,
  BENCH_MAP_FUSED,
  BENCH_LOSS_COMPOSED,
  BENCH_LOSS_FUSED,
  BENCH_RESIZE_FWD,
  BENCH_RESIZE_BWD,
  BENCH_KINDS
};

static int bench_call(bench_data *b, int what) {
  st_backend *be = b->be;
  int rc = ST_OK;
  switch (what) {
  case BENCH_MAP_COMPOSED:
    rc = st_resize_bilinear_fwd(be, &b->x, &b->up);
    return rc ? rc : st_argmax_channels(be, &b->up, &b->lab);
  case BENCH_MAP_FUSED:
    return st_argmax_resized(be, &b->x, &b->lab);
  case BENCH_LOSS_COMPOSED:
    rc = st_resize_bilinear_fwd(be, &b->x, &b->up);
    if (!rc)
      rc = st_weighted_ce_into(be, &b->up, &b->lab, &b->w, &b->res, &b->dup);
    return rc ? rc : st_resize_bilinear_bwd(be, &b->dup, &b->dx);
  case BENCH_LOSS_FUSED:
    return st_weighted_ce_resized_into(be, &b->x, &b->lab, &b->w, &b->res,
                                       &b->dx);
  case BENCH_RESIZE_FWD:
    return st_resize_bilinear_fwd(be, &b->x, &b->up);
  default:
    return st_resize_bilinear_bwd(be, &b->dup, &b->dx);
  }
}

static int bench_classes(st_backend *be, int64_t c) {
  bench_data b = {.be = be};
  const int64_t map_shape[3] = {1, 720, 1280},
                res_shape[1] = {ST_CE_RESULT_LEN};
  int rc = st_tensor_alloc4(be, &b.x, ST_F32, 1, c, 360, 640);
  if (!rc)
    rc = st_tensor_alloc4(be, &b.dx, ST_F32, 1, c, 360, 640);
  if (!rc)
    rc = st_tensor_alloc4(be, &b.up, ST_F32, 1, c, 720, 1280);
  if (!rc)
    rc = st_tensor_alloc4(be, &b.dup, ST_F32, 1, c, 720, 1280);
  if (!rc)
    rc = st_tensor_alloc(be, &b.lab, ST_U8, 3, map_shape);
  if (!rc)
    rc = st_tensor_alloc(be, &b.w, ST_F32, 3, map_shape);
  if (!rc)
    rc = st_tensor_alloc(be, &b.res, ST_F32, 1, res_shape);
  if (!rc) {
    st_test_fill_uniform(b.x.data, (size_t)st_tensor_numel(&b.x), 5, -4.0f,
                         4.0f);
    st_test_fill_uniform(b.dup.data, (size_t)st_tensor_numel(&b.dup), 6, -1.0f,
                         1.0f);
    uint8_t *lab = b.lab.data;
    float *w = b.w.data;
    for (int64_t j = 0; j < st_tensor_numel(&b.lab); j++) {
      lab[j] = (uint8_t)((j * 2654435761u >> 9) % (uint64_t)c);
      w[j] = (j / 7) % 4 ? 1.0f : 5.0f;
    }
  }
  double t[BENCH_KINDS][BENCH_REPS];
  for (int r = -1; !rc && r < BENCH_REPS; r++)
    for (int k = 0; !rc && k < BENCH_KINDS; k++) {
      /* The composed loss overwrote dup with the loss's gradient. */
      if (k == BENCH_RESIZE_BWD)
        st_test_fill_uniform(b.dup.data, (size_t)st_tensor_numel(&b.dup), 6,
                             -1.0f, 1.0f);
      const double t0 = st_test_now_ms();
      rc = bench_call(&b, k);
      if (r >= 0)
        t[k][r] = st_test_now_ms() - t0;
    }
  if (!rc) {
    double m[BENCH_KINDS];
    for (int k = 0; k < BENCH_KINDS; k++)
      m[k] = st_test_median(t[k], BENCH_REPS);
    printf("%8lld %9.2f %9.2f %6.2f %9.2f %9.2f %6.2f %9.2f %9.2f\n",
           (long long)c, m[BENCH_MAP_COMPOSED], m[BENCH_MAP_FUSED],
           m[BENCH_MAP_FUSED] / m[BENCH_MAP_COMPOSED], m[BENCH_LOSS_COMPOSED],
           m[BENCH_LOSS_FUSED], m[BENCH_LOSS_FUSED] / m[BENCH_LOSS_COMPOSED],
           m[BENCH_RESIZE_FWD], m[BENCH_RESIZE_BWD]);
  }
  st_tensor *all[] = {&b.x, &b.dx, &b.up, &b.dup, &b.lab, &b.w, &b.res};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    st_tensor_free(all[j]);
  return rc;
}

static int run_bench(void) {
  st_backend_options opts = {.kind = ST_BACKEND_CPU};
  st_backend *be = NULL;
  if (st_backend_new(&opts, &be))
    return 1;
  printf("360x640 -> 720x1280, cpu backend (default threads, %s kernels), "
         "ms per call (median of %d)\n",
         st_backend_cpu_isa(be), BENCH_REPS);
  printf("%8s %9s %9s %6s %9s %9s %6s %9s %9s\n", "classes", "map:2ops",
         "fused", "ratio", "loss:3ops", "fused", "ratio", "resize", "res.bwd");
  const int64_t classes[] = {9, 21};
  int rc = 0;
  for (size_t i = 0; i < sizeof classes / sizeof classes[0] && !rc; i++)
    rc = bench_classes(be, classes[i]);
  if (rc)
    fprintf(stderr, "bench: %s\n", st_error_detail());
  st_backend_free(be);
  return rc;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_batchnorm_fixture),
      cmocka_unit_test(test_batchnorm_fd),
      cmocka_unit_test(test_relu_fixture),
      cmocka_unit_test(test_relu_fd),
      cmocka_unit_test(test_add_fixture),
      cmocka_unit_test(test_concat_split_fixture),
      cmocka_unit_test(test_subsample_fixture),
      cmocka_unit_test(test_subsample_fd),
      cmocka_unit_test(test_resize_fixture),
      cmocka_unit_test(test_resize_fd),
      cmocka_unit_test(test_weighted_ce_fixture),
      cmocka_unit_test(test_weighted_ce_fd),
      cmocka_unit_test(test_weighted_ce_bad_label),
      cmocka_unit_test(test_weighted_ce_resized),
      cmocka_unit_test(test_resize_doubled_matches_general),
      cmocka_unit_test(test_cpu_kernel_sets_agree),
      cmocka_unit_test(test_argmax_fixture),
      cmocka_unit_test(test_argmax_resized),
      cmocka_unit_test(test_miou_fixture),
      cmocka_unit_test(test_adam_fixture),
      cmocka_unit_test(test_adam_steps_match_single),
      cmocka_unit_test(test_cast_fixture),
      cmocka_unit_test(test_copy_fill),
      cmocka_unit_test(test_image_to_tensor_fixture),
      cmocka_unit_test(test_wrappers_reject_bad_shapes),
      cmocka_unit_test(test_threads_agree),
  };
  int failed =
      st_test_run_on_backends("ops", tests, sizeof tests / sizeof tests[0]);
  const char *bench = getenv("ST_OPS_BENCH");
  if (bench && *bench && strcmp(bench, "0") != 0)
    failed += run_bench();
  return failed ? 1 : 0;
}
