/* The ops of imported (ONNX) graphs on every backend: values against
 * PyTorch and ONNX-specification fixtures (tests/fixtures/gen_graph_ops.py
 * -> graph_ops_*.safetensors), the wrappers' argument checks, and large
 * inputs that take the multi-threaded paths compared with a one-thread CPU
 * context. Every backend has every op (CUDA included), so a missing op
 * (ST_ENOTSUP) fails the test rather than skipping it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Fixture comparisons:
 * - data movement, selections and maxima compare exactly;
 * - single float ops and formulas evaluated as PyTorch does, to a few ulps;
 * - hard sigmoid / hard swish: alpha * x + beta cancels near the lower kink,
 *   so the error there is an ulp of beta (~6e-8), not of the result;
 * - sums in another order (softmax, averages, bilinear blends computed in
 *   double by the reference) to the brief's 1e-5. */
#define EXACT_TOL 0.0
#define ELT_RTOL 1e-6
#define KINK_ATOL 1e-6
#define SUM_RTOL 1e-5
#define SUM_ATOL 1e-7
/* PyTorch's bilinear resize takes source coordinates in float, off by up to
 * an ulp of the coordinate (~2e-6 at 37 pixels); times a neighbour
 * difference of a few units that moves a value by ~1e-5 absolute. The
 * specification references are computed in double and meet SUM_*. */
#define TORCH_COORD_ATOL 1e-5
/* Large inputs for the threading check: above the CPU's one-thread
 * cutoff. Every op computes each output on one thread, so contexts of any
 * team size agree to the last bit. */
#define BIG_N 2
#define BIG_C 8
#define BIG_H 67
#define BIG_W 81
#define BIG_THREADS 3
#define BIG_MIN_WORK 32768 /* ST_CPU_GRAPH_PARALLEL_MIN_ELEMS */

/* ---- helpers -------------------------------------------------------------- */

/* A fixture tensor copied to the backend. */
static st_tensor fx_dev(st_backend *be, const st_safetensors *fx,
                        const char *name) {
  st_tensor host = st_test_fixture_tensor(fx, name);
  st_tensor dev = st_test_to_backend(be, &host);
  st_tensor_free(&host);
  return dev;
}

static st_tensor dev_alloc(st_backend *be, st_dtype dt, int ndim,
                           const int64_t *shape) {
  st_tensor t;
  ST_ASSERT_OK(st_tensor_alloc(be, &t, dt, ndim, shape));
  return t;
}

/* Checks an op's status: any error, a missing op included, fails. */
static void op_ok(int rc, const char *what) {
  if (rc != ST_OK)
    fail_msg("%s -> %s: %s", what, st_strerror(rc), st_error_detail());
}
#define OP_OK(expr) op_ok((expr), #expr)

/* Compares a backend F32 tensor with fixture tensor `name`, shape included. */
static void expect_close(st_backend *be, const st_tensor *got,
                         const st_safetensors *fx, const char *name,
                         double rtol, double atol) {
  st_tensor want = st_test_fixture_tensor(fx, name);
  st_tensor host = st_test_to_host(be, got);
  char sg[96], sw[96];
  if (!st_tensor_same_shape(&host, &want))
    fail_msg("%s: shape %s, fixture %s", name,
             st_tensor_shape_str(&host, sg, sizeof sg),
             st_tensor_shape_str(&want, sw, sizeof sw));
  st_test_assert_close(host.data, want.data, (size_t)st_tensor_numel(&want),
                       rtol, atol, name);
  st_tensor_free(&host);
  st_tensor_free(&want);
}

/* Compares a backend I64 tensor with fixture tensor `name` exactly. */
static void expect_equal_i64(st_backend *be, const st_tensor *got,
                             const st_safetensors *fx, const char *name) {
  st_tensor want = st_test_fixture_tensor(fx, name);
  st_tensor host = st_test_to_host(be, got);
  assert_int_equal(want.dtype, ST_I64);
  assert_true(st_tensor_same_shape(&host, &want));
  const int64_t *g = host.data, *w = want.data;
  for (int64_t i = 0; i < st_tensor_numel(&want); i++)
    if (g[i] != w[i])
      fail_msg("%s: [%lld] got %lld want %lld", name, (long long)i,
               (long long)g[i], (long long)w[i]);
  st_tensor_free(&host);
  st_tensor_free(&want);
}

/* Small integer vectors stored as I64 fixture tensors. */
static void fx_ints(const st_safetensors *fx, const char *name, int64_t *out,
                    int64_t count) {
  st_tensor t = st_test_fixture_tensor(fx, name);
  assert_int_equal(t.dtype, ST_I64);
  assert_int_equal(st_tensor_numel(&t), count);
  memcpy(out, t.data, (size_t)count * sizeof *out);
  st_tensor_free(&t);
}

/* ---- unary and binary ----------------------------------------------------- */

static void test_unary_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("graph_ops_eltwise.safetensors");
  st_tensor x = fx_dev(be, fx, "un_x");
  st_tensor y = dev_alloc(be, ST_F32, x.ndim, x.shape);
  const struct {
    st_unary_kind kind;
    float alpha, beta;
    const char *want;
    double rtol, atol;
  } cases[] = {
      {ST_UNARY_RELU, 0.0f, 0.0f, "un_relu", EXACT_TOL, EXACT_TOL},
      {ST_UNARY_CLIP, -1.5f, 2.0f, "un_clip", EXACT_TOL, EXACT_TOL},
      /* PyTorch's export of hardsigmoid: alpha 1/6, beta 1/2. */
      {ST_UNARY_HARDSIGMOID, 1.0f / 6.0f, 0.5f, "un_hardsigmoid", ELT_RTOL,
       KINK_ATOL},
      /* The ONNX default alpha. */
      {ST_UNARY_HARDSIGMOID, 0.2f, 0.5f, "un_hardsigmoid_onnx", ELT_RTOL,
       KINK_ATOL},
      {ST_UNARY_HARDSWISH, 0.0f, 0.0f, "un_hardswish", ELT_RTOL, KINK_ATOL},
      {ST_UNARY_SIGMOID, 0.0f, 0.0f, "un_sigmoid", ELT_RTOL, EXACT_TOL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    OP_OK(st_unary(be, cases[i].kind, cases[i].alpha, cases[i].beta, &x, &y));
    expect_close(be, &y, fx, cases[i].want, cases[i].rtol, cases[i].atol);
  }
  /* In place gives the same values. */
  st_tensor z = fx_dev(be, fx, "un_x");
  OP_OK(st_unary(be, ST_UNARY_SIGMOID, 0.0f, 0.0f, &z, &z));
  expect_close(be, &z, fx, "un_sigmoid", ELT_RTOL, EXACT_TOL);
  st_tensor_free(&z);
  st_tensor_free(&x);
  st_tensor_free(&y);
  st_safetensors_free(fx);
}

#define BINARY_CASES 8
static const char *const binary_names[] = {"add", "sub", "mul", "div"};

static void test_binary_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("graph_ops_eltwise.safetensors");
  char name[64];
  for (int i = 0; i < BINARY_CASES; i++) {
    snprintf(name, sizeof name, "bin%d_a", i);
    st_tensor a = fx_dev(be, fx, name);
    snprintf(name, sizeof name, "bin%d_b", i);
    st_tensor b = fx_dev(be, fx, name);
    snprintf(name, sizeof name, "bin%d_add", i);
    st_tensor shape_of = st_test_fixture_tensor(fx, name);
    st_tensor y = dev_alloc(be, ST_F32, shape_of.ndim, shape_of.shape);
    st_tensor_free(&shape_of);
    for (int k = ST_BINARY_ADD; k <= ST_BINARY_DIV; k++) {
      OP_OK(st_binary(be, (st_binary_kind)k, &a, &b, &y));
      snprintf(name, sizeof name, "bin%d_%s", i, binary_names[k]);
      /* One float operation per element: exact, as PyTorch's. */
      expect_close(be, &y, fx, name, EXACT_TOL, EXACT_TOL);
    }
    /* In place over the operand that has the output's shape. */
    st_tensor *full = st_tensor_same_shape(&a, &y) ? &a : &b;
    if (st_tensor_same_shape(full, &y)) {
      OP_OK(st_binary(be, ST_BINARY_MUL, &a, &b, full));
      snprintf(name, sizeof name, "bin%d_mul", i);
      expect_close(be, full, fx, name, EXACT_TOL, EXACT_TOL);
    }
    st_tensor_free(&a);
    st_tensor_free(&b);
    st_tensor_free(&y);
  }
  st_safetensors_free(fx);
}

/* A 0-d operand (an ONNX scalar initializer) broadcasts against anything,
 * and two 0-d operands give a 0-d result. */
static void test_binary_rank0(void **state) {
  st_backend *be = st_test_backend(state);
  const int64_t shape[3] = {3, 5, 7};
  const float scalar_value = 2.5f;
  st_tensor ha, hs;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &ha, ST_F32, 3, shape));
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hs, ST_F32, 0, NULL));
  size_t n = (size_t)st_tensor_numel(&ha);
  st_test_fill_uniform(ha.data, n, 11, -2.0f, 2.0f);
  *(float *)hs.data = scalar_value;
  st_tensor a = st_test_to_backend(be, &ha), sc = st_test_to_backend(be, &hs);
  st_tensor y = dev_alloc(be, ST_F32, 3, shape);
  OP_OK(st_binary(be, ST_BINARY_SUB, &sc, &a, &y));
  st_tensor got = st_test_to_host(be, &y);
  float *want = malloc(n * sizeof *want);
  assert_non_null(want);
  for (size_t i = 0; i < n; i++)
    want[i] = scalar_value - ((const float *)ha.data)[i];
  st_test_assert_close(got.data, want, n, EXACT_TOL, EXACT_TOL, "2.5 - a");
  st_tensor y0 = dev_alloc(be, ST_F32, 0, NULL);
  OP_OK(st_binary(be, ST_BINARY_MUL, &sc, &sc, &y0));
  st_tensor got0 = st_test_to_host(be, &y0);
  const float square = scalar_value * scalar_value;
  st_test_assert_close(got0.data, &square, 1, EXACT_TOL, EXACT_TOL, "2.5^2");
  free(want);
  st_tensor *all[] = {&ha, &hs, &a, &sc, &y, &got, &y0, &got0};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    st_tensor_free(all[i]);
}

/* ---- pooling -------------------------------------------------------------- */

static const struct {
  st_pool_kind kind;
  int kernel[2], stride[2], pad_begin[2], pad_end[2], dilation[2];
  int count_include_pad;
} pool_cases[] = {
    /* The rows of POOL_CASES in gen_graph_ops.py; ceil_mode shows in the
     * fixture's output size. */
    {ST_POOL_MAX, {3, 3}, {2, 2}, {1, 1}, {1, 1}, {1, 1}, 1},
    {ST_POOL_MAX, {2, 2}, {2, 2}, {0, 0}, {0, 0}, {1, 1}, 1},
    {ST_POOL_MAX, {3, 3}, {3, 3}, {1, 1}, {1, 1}, {2, 2}, 1},
    {ST_POOL_MAX, {3, 3}, {3, 3}, {0, 0}, {0, 0}, {1, 1}, 1},
    {ST_POOL_MAX, {3, 3}, {2, 2}, {1, 0}, {0, 2}, {1, 1}, 1},
    {ST_POOL_AVG, {3, 3}, {2, 2}, {1, 1}, {1, 1}, {1, 1}, 1},
    {ST_POOL_AVG, {3, 3}, {2, 2}, {1, 1}, {1, 1}, {1, 1}, 0},
    {ST_POOL_AVG, {4, 4}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, 1},
    {ST_POOL_AVG, {4, 4}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, 0},
    {ST_POOL_AVG, {3, 5}, {2, 3}, {1, 2}, {1, 2}, {1, 1}, 0},
    {ST_POOL_AVG, {3, 3}, {2, 2}, {1, 0}, {0, 2}, {1, 1}, 1},
};

static st_pool2d_params pool_params(size_t i) {
  st_pool2d_params p = {.kind = pool_cases[i].kind,
                        .count_include_pad = pool_cases[i].count_include_pad};
  for (int a = 0; a < 2; a++) {
    p.kernel[a] = pool_cases[i].kernel[a];
    p.stride[a] = pool_cases[i].stride[a];
    p.pad_begin[a] = pool_cases[i].pad_begin[a];
    p.pad_end[a] = pool_cases[i].pad_end[a];
    p.dilation[a] = pool_cases[i].dilation[a];
  }
  return p;
}

static void test_pool_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("graph_ops_pool.safetensors");
  char name[64];
  int ceil_cases = 0;
  for (size_t i = 0; i < sizeof pool_cases / sizeof pool_cases[0]; i++) {
    st_pool2d_params p = pool_params(i);
    snprintf(name, sizeof name, "pool%zu_x", i);
    st_tensor x = fx_dev(be, fx, name);
    snprintf(name, sizeof name, "pool%zu_y", i);
    st_tensor want = st_test_fixture_tensor(fx, name);
    st_tensor y = dev_alloc(be, ST_F32, 4, want.shape);
    /* Count the cases whose output is the larger, ceil_mode size. */
    int64_t floor_h = (x.shape[2] + p.pad_begin[0] + p.pad_end[0] -
                       ((int64_t)(p.kernel[0] - 1) * p.dilation[0] + 1)) /
                          p.stride[0] + 1;
    ceil_cases += want.shape[2] > floor_h;
    st_tensor_free(&want);
    OP_OK(st_pool2d(be, &p, &x, &y));
    if (p.kind == ST_POOL_MAX)
      expect_close(be, &y, fx, name, EXACT_TOL, EXACT_TOL);
    else
      expect_close(be, &y, fx, name, SUM_RTOL, SUM_ATOL);
    st_tensor_free(&x);
    st_tensor_free(&y);
  }
  /* The fixture must exercise ceil_mode for both kinds. */
  assert_true(ceil_cases >= 3);
  for (int i = 0; i < 2; i++) {
    snprintf(name, sizeof name, "gap%d_x", i);
    st_tensor x = fx_dev(be, fx, name);
    st_tensor y;
    ST_ASSERT_OK(st_tensor_alloc4(be, &y, ST_F32, x.shape[0], x.shape[1], 1,
                                  1));
    OP_OK(st_global_avg_pool(be, &x, &y));
    snprintf(name, sizeof name, "gap%d_y", i);
    expect_close(be, &y, fx, name, SUM_RTOL, SUM_ATOL);
    st_tensor_free(&x);
    st_tensor_free(&y);
  }
  st_safetensors_free(fx);
}

/* ---- resize --------------------------------------------------------------- */

#define RESIZE_CASES 14

static void test_resize_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("graph_ops_resize.safetensors");
  char name[64];
  for (int i = 0; i < RESIZE_CASES; i++) {
    int64_t mode[3];
    snprintf(name, sizeof name, "rs%d_mode", i);
    fx_ints(fx, name, mode, 3);
    snprintf(name, sizeof name, "rs%d_scale", i);
    st_tensor scale = st_test_fixture_tensor(fx, name);
    snprintf(name, sizeof name, "rs%d_x", i);
    st_tensor x = fx_dev(be, fx, name);
    snprintf(name, sizeof name, "rs%d_y", i);
    st_tensor want = st_test_fixture_tensor(fx, name);
    st_tensor y = dev_alloc(be, ST_F32, 4, want.shape);
    st_resize_params p = {.mode = mode[0] ? ST_RESIZE_LINEAR
                                          : ST_RESIZE_NEAREST,
                          .coord = (st_resize_coord)mode[1],
                          .nearest = (st_nearest_mode)mode[2]};
    for (int a = 0; a < 2; a++) {
      float s = ((const float *)scale.data)[a];
      /* -1: the model gave sizes, so the scale is out / in. */
      p.scale[a] = s > 0.0f ? (double)s
                            : (double)want.shape[2 + a] / (double)x.shape[2 + a];
    }
    OP_OK(st_resize(be, &p, &x, &y));
    int from_torch = ((const float *)scale.data)[0] < 0.0f;
    if (p.mode == ST_RESIZE_NEAREST)
      expect_close(be, &y, fx, name, EXACT_TOL, EXACT_TOL);
    else
      expect_close(be, &y, fx, name, SUM_RTOL,
                   from_torch ? TORCH_COORD_ATOL : SUM_ATOL);
    st_tensor_free(&want);
    st_tensor_free(&scale);
    st_tensor_free(&x);
    st_tensor_free(&y);
  }
  st_safetensors_free(fx);
}

/* ---- softmax, transpose, concat, slice, argmax ------------------------------ */

static void test_softmax_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("graph_ops_layout.safetensors");
  st_tensor x = fx_dev(be, fx, "sm_x");
  st_tensor shifted = fx_dev(be, fx, "sm_xshift");
  st_tensor y = dev_alloc(be, ST_F32, x.ndim, x.shape);
  char name[64];
  for (int axis = 0; axis < 4; axis++) {
    snprintf(name, sizeof name, "sm_y%d", axis);
    OP_OK(st_softmax(be, axis, &x, &y));
    expect_close(be, &y, fx, name, SUM_RTOL, SUM_ATOL);
    /* Softmax is shift invariant; x + 100 overflows a naive exp. */
    OP_OK(st_softmax(be, axis, &shifted, &y));
    expect_close(be, &y, fx, name, SUM_RTOL, SUM_ATOL);
  }
  st_tensor_free(&x);
  st_tensor_free(&shifted);
  st_tensor_free(&y);
  st_safetensors_free(fx);
}

#define TRANSPOSE_CASES 4

static void test_transpose_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("graph_ops_layout.safetensors");
  st_tensor x = fx_dev(be, fx, "tr_x");
  char name[64];
  for (int i = 0; i < TRANSPOSE_CASES; i++) {
    int64_t perm64[4];
    snprintf(name, sizeof name, "tr%d_perm", i);
    fx_ints(fx, name, perm64, 4);
    int perm[4];
    int64_t shape[4];
    for (int d = 0; d < 4; d++) {
      perm[d] = (int)perm64[d];
      shape[d] = x.shape[perm[d]];
    }
    st_tensor y = dev_alloc(be, ST_F32, 4, shape);
    OP_OK(st_transpose(be, perm, &x, &y));
    snprintf(name, sizeof name, "tr%d_y", i);
    expect_close(be, &y, fx, name, EXACT_TOL, EXACT_TOL);
    st_tensor_free(&y);
  }
  st_tensor_free(&x);
  st_safetensors_free(fx);
}

static void test_concat_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("graph_ops_layout.safetensors");
  char name[64];
  enum { MAX_INPUTS = 3 };
  for (int axis = 0; axis < 4; axis++) {
    st_tensor in[MAX_INPUTS];
    const st_tensor *ptrs[MAX_INPUTS];
    int count = 0;
    for (; count < MAX_INPUTS; count++) {
      snprintf(name, sizeof name, "cat%d_in%d", axis, count);
      /* Cases have two or three inputs; the third may be absent. */
      st_tensor host;
      if (st_safetensors_read(fx, name, &host) != ST_OK)
        break;
      in[count] = st_test_to_backend(be, &host);
      st_tensor_free(&host);
      ptrs[count] = &in[count];
    }
    assert_true(count >= 2);
    snprintf(name, sizeof name, "cat%d_y", axis);
    st_tensor want = st_test_fixture_tensor(fx, name);
    st_tensor y = dev_alloc(be, ST_F32, 4, want.shape);
    st_tensor_free(&want);
    OP_OK(st_concat(be, axis, ptrs, count, &y));
    expect_close(be, &y, fx, name, EXACT_TOL, EXACT_TOL);
    for (int k = 0; k < count; k++)
      st_tensor_free(&in[k]);
    st_tensor_free(&y);
  }
  st_safetensors_free(fx);
}

#define SLICE_CASES 4

static void test_slice_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("graph_ops_layout.safetensors");
  st_tensor x = fx_dev(be, fx, "sl_x");
  char name[64];
  int negative = 0;
  for (int i = 0; i < SLICE_CASES; i++) {
    int64_t starts[4], steps[4];
    snprintf(name, sizeof name, "sl%d_starts", i);
    fx_ints(fx, name, starts, 4);
    snprintf(name, sizeof name, "sl%d_steps", i);
    fx_ints(fx, name, steps, 4);
    for (int d = 0; d < 4; d++)
      negative += steps[d] < 0;
    snprintf(name, sizeof name, "sl%d_y", i);
    st_tensor want = st_test_fixture_tensor(fx, name);
    st_tensor y = dev_alloc(be, ST_F32, 4, want.shape);
    st_tensor_free(&want);
    OP_OK(st_slice(be, starts, steps, &x, &y));
    expect_close(be, &y, fx, name, EXACT_TOL, EXACT_TOL);
    st_tensor_free(&y);
  }
  assert_true(negative > 0);
  st_tensor_free(&x);
  st_safetensors_free(fx);
}

static void test_argmax_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open("graph_ops_layout.safetensors");
  st_tensor x = fx_dev(be, fx, "am_x");
  char name[64];
  for (int axis = 0; axis < 4; axis++) {
    int64_t shape[4];
    memcpy(shape, x.shape, sizeof shape);
    shape[axis] = 1;
    st_tensor y = dev_alloc(be, ST_I64, 4, shape);
    OP_OK(st_argmax_axis(be, axis, &x, &y));
    snprintf(name, sizeof name, "am_y%d", axis);
    expect_equal_i64(be, &y, fx, name);
    st_tensor_free(&y);
  }
  st_tensor_free(&x);
  st_safetensors_free(fx);
}

/* ---- random shapes against naive references ------------------------------- */

/* The reduced-rank loops (axis dropping and merging) are the subtle part of
 * binary, transpose and slice; random shapes of ranks 1..5 with extent-1
 * axes compare them with index-by-index host references. */
#define RANDOM_TRIALS 60
#define RANDOM_MAX_RANK 5
#define RANDOM_MAX_EXTENT 5

static uint64_t rnd_state = 0x9E3779B97F4A7C15ull;
static int rnd(int n) {
  rnd_state ^= rnd_state << 13;
  rnd_state ^= rnd_state >> 7;
  rnd_state ^= rnd_state << 17;
  return (int)(rnd_state % (uint64_t)n);
}

/* Row-major offset of a multi-index in a shape, with broadcasting: axes of
 * extent 1 contribute nothing. `lead` is how many leading index entries the
 * shape lacks (ranks aligned on the right). */
static int64_t bcast_offset(const int64_t *idx, const st_tensor *t,
                            int lead) {
  int64_t off = 0;
  for (int d = 0; d < t->ndim; d++)
    off = off * t->shape[d] + (t->shape[d] == 1 ? 0 : idx[d + lead]);
  return off;
}

/* Advances a multi-index over `shape`; 0 when it wraps around. */
static int next_index(int64_t *idx, const int64_t *shape, int ndim) {
  for (int d = ndim - 1; d >= 0; d--) {
    if (++idx[d] < shape[d])
      return 1;
    idx[d] = 0;
  }
  return 0;
}

static st_tensor host_random(int ndim, const int64_t *shape, uint64_t seed) {
  st_tensor t;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &t, ST_F32, ndim, shape));
  st_test_fill_uniform(t.data, (size_t)st_tensor_numel(&t), seed, 0.5f, 2.0f);
  return t;
}

static void compare_host(st_backend *be, const st_tensor *got_dev,
                         const float *want, const char *what) {
  st_tensor got = st_test_to_host(be, got_dev);
  st_test_assert_close(got.data, want, (size_t)st_tensor_numel(&got),
                       EXACT_TOL, EXACT_TOL, what);
  st_tensor_free(&got);
}

static void test_random_shapes(void **state) {
  st_backend *be = st_test_backend(state);
  for (int trial = 0; trial < RANDOM_TRIALS; trial++) {
    int rank = 1 + rnd(RANDOM_MAX_RANK);
    int64_t full[ST_MAX_DIMS], sa[ST_MAX_DIMS], sb[ST_MAX_DIMS];
    for (int d = 0; d < rank; d++)
      full[d] = 1 + rnd(RANDOM_MAX_EXTENT);
    /* Binary: each operand keeps a random suffix of the axes and sets
     * random ones of them to 1. */
    int ra = 1 + rnd(rank), rb = rank - rnd(rank);
    for (int d = 0; d < ra; d++)
      sa[d] = rnd(2) ? full[rank - ra + d] : 1;
    for (int d = 0; d < rb; d++)
      sb[d] = rnd(3) ? full[rank - rb + d] : 1;
    /* The output has the larger rank and the broadcast extents, which may
     * drop to 1. */
    int yr = ra > rb ? ra : rb;
    int64_t ys[ST_MAX_DIMS];
    for (int d = 0; d < yr; d++) {
      int64_t ea = d >= yr - ra ? sa[d - (yr - ra)] : 1;
      int64_t eb = d >= yr - rb ? sb[d - (yr - rb)] : 1;
      ys[d] = ea > eb ? ea : eb;
    }
    st_tensor ha = host_random(ra, sa, 100 + trial);
    st_tensor hb = host_random(rb, sb, 200 + trial);
    st_tensor a = st_test_to_backend(be, &ha), b = st_test_to_backend(be, &hb);
    st_tensor y = dev_alloc(be, ST_F32, yr, ys);
    OP_OK(st_binary(be, ST_BINARY_DIV, &a, &b, &y));
    size_t n = (size_t)st_tensor_numel(&y);
    float *want = malloc(n * sizeof *want);
    assert_non_null(want);
    int64_t idx[ST_MAX_DIMS] = {0};
    size_t at = 0;
    do {
      want[at++] = ((const float *)ha.data)[bcast_offset(idx, &ha, yr - ra)] /
                   ((const float *)hb.data)[bcast_offset(idx, &hb, yr - rb)];
    } while (next_index(idx, ys, yr));
    assert_int_equal(at, n);
    compare_host(be, &y, want, "random broadcast");
    free(want);
    st_tensor_free(&a);
    st_tensor_free(&b);
    st_tensor_free(&y);
    st_tensor_free(&hb);

    /* Transpose of the full shape by a random permutation. */
    st_tensor hx = host_random(rank, full, 300 + trial);
    int perm[ST_MAX_DIMS];
    for (int d = 0; d < rank; d++)
      perm[d] = d;
    for (int d = rank - 1; d > 0; d--) {
      int k = rnd(d + 1), tmp = perm[d];
      perm[d] = perm[k];
      perm[k] = tmp;
    }
    int64_t ts[ST_MAX_DIMS], xstr[ST_MAX_DIMS];
    for (int d = 0; d < rank; d++)
      ts[d] = full[perm[d]];
    xstr[rank - 1] = 1;
    for (int d = rank - 2; d >= 0; d--)
      xstr[d] = xstr[d + 1] * full[d + 1];
    st_tensor x = st_test_to_backend(be, &hx);
    st_tensor t = dev_alloc(be, ST_F32, rank, ts);
    OP_OK(st_transpose(be, perm, &x, &t));
    n = (size_t)st_tensor_numel(&t);
    want = malloc(n * sizeof *want);
    assert_non_null(want);
    memset(idx, 0, sizeof idx);
    at = 0;
    do {
      int64_t off = 0;
      for (int d = 0; d < rank; d++)
        off += idx[d] * xstr[perm[d]];
      want[at++] = ((const float *)hx.data)[off];
    } while (next_index(idx, ts, rank));
    compare_host(be, &t, want, "random transpose");
    free(want);
    st_tensor_free(&t);

    /* Slice with random in-range starts, steps of either sign and the
     * largest extents that stay inside. */
    int64_t starts[ST_MAX_DIMS], steps[ST_MAX_DIMS], ss[ST_MAX_DIMS];
    for (int d = 0; d < rank; d++) {
      starts[d] = rnd((int)full[d]);
      steps[d] = (1 + rnd(2)) * (rnd(2) ? 1 : -1);
      ss[d] = steps[d] > 0 ? (full[d] - 1 - starts[d]) / steps[d] + 1
                           : starts[d] / -steps[d] + 1;
    }
    st_tensor sl = dev_alloc(be, ST_F32, rank, ss);
    OP_OK(st_slice(be, starts, steps, &x, &sl));
    n = (size_t)st_tensor_numel(&sl);
    want = malloc(n * sizeof *want);
    assert_non_null(want);
    memset(idx, 0, sizeof idx);
    at = 0;
    do {
      int64_t off = 0;
      for (int d = 0; d < rank; d++)
        off += (starts[d] + idx[d] * steps[d]) * xstr[d];
      want[at++] = ((const float *)hx.data)[off];
    } while (next_index(idx, ss, rank));
    compare_host(be, &sl, want, "random slice");
    free(want);
    st_tensor_free(&sl);
    st_tensor_free(&x);
    st_tensor_free(&hx);
    st_tensor_free(&ha);
  }
}

/* ---- multi-threaded paths ------------------------------------------------- */

/* Runs every op on a large input in `be` and returns the outputs (host
 * copies) concatenated in one buffer of *count floats (argmax indices
 * converted to float). */
static float *run_big(st_backend *be, size_t *count) {
  const int64_t shape[4] = {BIG_N, BIG_C, BIG_H, BIG_W};
  const int64_t chan[4] = {1, BIG_C, 1, 1};
  st_tensor hx, hc;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hx, ST_F32, 4, shape));
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hc, ST_F32, 4, chan));
  st_test_fill_uniform(hx.data, (size_t)st_tensor_numel(&hx), 7, -3.0f, 3.0f);
  st_test_fill_uniform(hc.data, (size_t)st_tensor_numel(&hc), 8, 0.5f, 2.0f);
  st_tensor x = st_test_to_backend(be, &hx), c = st_test_to_backend(be, &hc);
  st_tensor_free(&hx);
  st_tensor_free(&hc);

  /* The input is above the CPU's one-thread cutoff (32768 elements), so
   * every op below takes its team path. */
  assert_true(st_tensor_numel(&x) >= BIG_MIN_WORK);
  enum { OUTS = 11 };
  st_tensor outs[OUTS];
  int n = 0;
  outs[n] = dev_alloc(be, ST_F32, 4, shape);
  OP_OK(st_unary(be, ST_UNARY_HARDSWISH, 0, 0, &x, &outs[n++]));
  outs[n] = dev_alloc(be, ST_F32, 4, shape);
  OP_OK(st_binary(be, ST_BINARY_MUL, &c, &x, &outs[n++]));
  outs[n] = dev_alloc(be, ST_F32, 4, shape);
  OP_OK(st_softmax(be, 1, &x, &outs[n++]));
  const int64_t pooled[4] = {BIG_N, BIG_C, (BIG_H + 1) / 2, (BIG_W + 1) / 2};
  st_pool2d_params pp = {.kind = ST_POOL_AVG, .kernel = {3, 3},
                         .stride = {2, 2}, .pad_begin = {1, 1},
                         .pad_end = {1, 1}, .dilation = {1, 1}};
  outs[n] = dev_alloc(be, ST_F32, 4, pooled);
  OP_OK(st_pool2d(be, &pp, &x, &outs[n++]));
  const int64_t up[4] = {BIG_N, BIG_C, 2 * BIG_H + 1, 2 * BIG_W - 1};
  st_resize_params rp = {.mode = ST_RESIZE_LINEAR,
                         .coord = ST_COORD_HALF_PIXEL,
                         .scale = {(double)up[2] / BIG_H,
                                   (double)up[3] / BIG_W}};
  outs[n] = dev_alloc(be, ST_F32, 4, up);
  OP_OK(st_resize(be, &rp, &x, &outs[n++]));
  /* Rows wider than one CUDA block (256 columns), nearest, downsampled
   * along H. */
  const int64_t wide[4] = {BIG_N, BIG_C, BIG_H / 2, 4 * BIG_W};
  assert_true(wide[3] > 256);
  st_resize_params wp = {.mode = ST_RESIZE_NEAREST,
                         .coord = ST_COORD_ASYMMETRIC,
                         .nearest = ST_NEAREST_ROUND_PREFER_CEIL,
                         .scale = {(double)wide[2] / BIG_H, 4.0}};
  outs[n] = dev_alloc(be, ST_F32, 4, wide);
  OP_OK(st_resize(be, &wp, &x, &outs[n++]));
  const int nhwc[4] = {0, 2, 3, 1};
  const int64_t tshape[4] = {BIG_N, BIG_H, BIG_W, BIG_C};
  outs[n] = dev_alloc(be, ST_F32, 4, tshape);
  OP_OK(st_transpose(be, nhwc, &x, &outs[n++]));
  const int64_t starts[4] = {1, 0, BIG_H - 1, 0}, steps[4] = {-1, 1, -1, 2};
  const int64_t sshape[4] = {BIG_N, BIG_C, BIG_H, (BIG_W + 1) / 2};
  outs[n] = dev_alloc(be, ST_F32, 4, sshape);
  OP_OK(st_slice(be, starts, steps, &x, &outs[n++]));
  const st_tensor *pair[2] = {&x, &outs[0]};
  const int64_t cshape[4] = {BIG_N, 2 * BIG_C, BIG_H, BIG_W};
  outs[n] = dev_alloc(be, ST_F32, 4, cshape);
  OP_OK(st_concat(be, 1, pair, 2, &outs[n++]));
  const int64_t ashape[4] = {BIG_N, 1, BIG_H, BIG_W};
  st_tensor am = dev_alloc(be, ST_I64, 4, ashape);
  OP_OK(st_argmax_axis(be, 1, &x, &am));
  outs[n] = dev_alloc(be, ST_F32, 4, ashape);
  st_tensor ham = st_test_to_host(be, &am);
  st_tensor hamf;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &hamf, ST_F32, 4, ashape));
  for (int64_t i = 0; i < st_tensor_numel(&ham); i++)
    ((float *)hamf.data)[i] = (float)((const int64_t *)ham.data)[i];
  ST_ASSERT_OK(st_tensor_upload(be, &outs[n], hamf.data,
                                st_tensor_nbytes(&hamf)));
  n++;
  st_tensor_free(&ham);
  st_tensor_free(&hamf);
  st_tensor_free(&am);
  const int64_t gshape[4] = {BIG_N, BIG_C, 1, 1};
  outs[n] = dev_alloc(be, ST_F32, 4, gshape);
  OP_OK(st_global_avg_pool(be, &x, &outs[n]));
  n++;
  assert_int_equal(n, OUTS);

  size_t total = 0;
  for (int i = 0; i < n; i++)
    total += (size_t)st_tensor_numel(&outs[i]);
  float *all = malloc(total * sizeof *all);
  assert_non_null(all);
  size_t at = 0;
  for (int i = 0; i < n; i++) {
    st_tensor h = st_test_to_host(be, &outs[i]);
    memcpy(all + at, h.data, st_tensor_nbytes(&h));
    at += (size_t)st_tensor_numel(&h);
    st_tensor_free(&h);
    st_tensor_free(&outs[i]);
  }
  st_tensor_free(&x);
  st_tensor_free(&c);
  *count = total;
  return all;
}

static void test_threads_agree(void **state) {
  st_backend *be = st_test_backend(state);
  st_backend *one = NULL;
  st_backend_options opts = {.kind = ST_BACKEND_CPU, .threads = 1};
  ST_ASSERT_OK(st_backend_new(&opts, &one));
  size_t n_ref, n_got;
  float *want = run_big(one, &n_ref);
  st_backend_free(one);
  if (!st_test_on_gpu()) {
    /* Compare with a team of another size than the test's context. */
    opts.threads = BIG_THREADS;
    ST_ASSERT_OK(st_backend_new(&opts, &one));
    float *odd = run_big(one, &n_got);
    st_backend_free(one);
    assert_int_equal(n_got, n_ref);
    st_test_assert_close(odd, want, n_ref, EXACT_TOL, EXACT_TOL,
                         "3 threads vs 1");
    free(odd);
  }
  float *got = run_big(be, &n_got);
  assert_int_equal(n_got, n_ref);
  st_test_assert_close(got, want, n_ref, EXACT_TOL, EXACT_TOL,
                       "context vs 1 thread");
  free(got);
  free(want);
}

/* ---- argument checks ------------------------------------------------------ */

static void expect_refused(int rc, int want, const char *what) {
  if (rc != want)
    fail_msg("%s returned %s, expected %s", what, st_err_name(rc),
             st_err_name(want));
}
#define REFUSED(expr, want) expect_refused((expr), (want), #expr)

static void test_wrappers_refuse(void **state) {
  st_backend *be = st_test_backend(state);
  const int64_t nchw[4] = {2, 3, 5, 7}, other[4] = {2, 4, 5, 7};
  const int64_t chan[4] = {1, 3, 1, 1}, wrong_chan[4] = {1, 2, 1, 1};
  st_tensor x = dev_alloc(be, ST_F32, 4, nchw);
  st_tensor y = dev_alloc(be, ST_F32, 4, nchw);
  st_tensor z = dev_alloc(be, ST_F32, 4, other);
  st_tensor c = dev_alloc(be, ST_F32, 4, chan);
  st_tensor bad_c = dev_alloc(be, ST_F32, 4, wrong_chan);
  st_tensor i64 = dev_alloc(be, ST_I64, 4, nchw);

  /* unary: shape and dtype. */
  REFUSED(st_unary(be, ST_UNARY_RELU, 0, 0, &x, &z), ST_ESHAPE);
  REFUSED(st_unary(be, ST_UNARY_RELU, 0, 0, &i64, &y), ST_EDTYPE);
  /* binary: incompatible broadcast, y of the wrong shape, y aliasing a
   * broadcast operand. */
  REFUSED(st_binary(be, ST_BINARY_ADD, &x, &bad_c, &y), ST_ESHAPE);
  REFUSED(st_binary(be, ST_BINARY_ADD, &x, &z, &y), ST_ESHAPE);
  REFUSED(st_binary(be, ST_BINARY_ADD, &x, &c, &z), ST_ESHAPE);
  REFUSED(st_binary(be, ST_BINARY_ADD, &x, &c, &c), ST_ESHAPE);
  REFUSED(st_binary(be, ST_BINARY_ADD, &c, &c, &x), ST_ESHAPE);
  /* An output over c's storage would overwrite c while it is broadcast
   * (refused before anything is written). */
  st_tensor over_c = st_tensor_view(c.data, ST_F32, 4, nchw);
  REFUSED(st_binary(be, ST_BINARY_ADD, &x, &c, &over_c), ST_EINVAL);
  OP_OK(st_binary(be, ST_BINARY_ADD, &x, &c, &y));

  /* pool: output size, parameters. */
  st_pool2d_params p = {.kind = ST_POOL_MAX, .kernel = {3, 3},
                        .stride = {1, 1}, .pad_begin = {1, 1},
                        .pad_end = {1, 1}, .dilation = {1, 1}};
  OP_OK(st_pool2d(be, &p, &x, &y));
  REFUSED(st_pool2d(be, &p, &x, &z), ST_ESHAPE);
  p.stride[0] = 0;
  REFUSED(st_pool2d(be, &p, &x, &y), ST_EINVAL);
  p.stride[0] = 1;
  p.pad_begin[1] = 3; /* a window wholly in padding */
  REFUSED(st_pool2d(be, &p, &x, &y), ST_EINVAL);
  p.pad_begin[1] = 1;
  p.kind = ST_POOL_AVG;
  p.dilation[0] = 2;
  REFUSED(st_pool2d(be, &p, &x, &y), ST_EINVAL);
  REFUSED(st_global_avg_pool(be, &x, &y), ST_ESHAPE);

  /* resize: scale and mode. */
  st_resize_params rp = {.mode = ST_RESIZE_LINEAR,
                         .coord = ST_COORD_HALF_PIXEL,
                         .scale = {1.0, 0.0}};
  REFUSED(st_resize(be, &rp, &x, &y), ST_EINVAL);
  rp.scale[1] = 1.0;
  rp.coord = (st_resize_coord)7;
  REFUSED(st_resize(be, &rp, &x, &y), ST_EINVAL);
  REFUSED(st_resize(be, NULL, &x, &y), ST_EINVAL);

  /* softmax: axis. */
  REFUSED(st_softmax(be, 4, &x, &y), ST_EINVAL);
  REFUSED(st_softmax(be, -1, &x, &y), ST_EINVAL);

  /* transpose: not a permutation, wrong output extents. */
  const int dup[4] = {0, 1, 1, 3}, out_of_range[4] = {0, 1, 2, 4};
  const int swap[4] = {0, 1, 3, 2};
  REFUSED(st_transpose(be, dup, &x, &y), ST_EINVAL);
  REFUSED(st_transpose(be, out_of_range, &x, &y), ST_EINVAL);
  REFUSED(st_transpose(be, swap, &x, &y), ST_ESHAPE);

  /* concat: extents off the axis differ, the sum along it does not match. */
  const st_tensor *pair[2] = {&x, &z};
  const int64_t cat_shape[4] = {2, 7, 5, 7}, cat_wrong[4] = {2, 8, 5, 7};
  st_tensor cat = dev_alloc(be, ST_F32, 4, cat_shape);
  st_tensor cat_bad = dev_alloc(be, ST_F32, 4, cat_wrong);
  REFUSED(st_concat(be, 0, pair, 2, &cat), ST_ESHAPE);
  REFUSED(st_concat(be, 1, pair, 2, &cat_bad), ST_ESHAPE);
  REFUSED(st_concat(be, 4, pair, 2, &cat), ST_EINVAL);
  REFUSED(st_concat(be, 1, pair, 0, &cat), ST_EINVAL);
  OP_OK(st_concat(be, 1, pair, 2, &cat));

  /* slice: every index touched must lie inside x. */
  const int64_t sl_shape[4] = {1, 1, 3, 3};
  st_tensor sl = dev_alloc(be, ST_F32, 4, sl_shape);
  const int64_t ok_starts[4] = {1, 2, 4, 0}, ok_steps[4] = {1, 1, -2, 3};
  OP_OK(st_slice(be, ok_starts, ok_steps, &x, &sl));
  const int64_t past_end[4] = {1, 2, 4, 1}; /* w: 1, 4, 7 > 6 */
  REFUSED(st_slice(be, past_end, ok_steps, &x, &sl), ST_ERANGE);
  const int64_t below[4] = {1, 2, 3, 0}; /* h: 3, 1, -1 */
  REFUSED(st_slice(be, below, ok_steps, &x, &sl), ST_ERANGE);
  const int64_t negative_start[4] = {-1, 2, 4, 0};
  REFUSED(st_slice(be, negative_start, ok_steps, &x, &sl), ST_ERANGE);
  const int64_t zero_step[4] = {1, 1, 0, 3};
  REFUSED(st_slice(be, ok_starts, zero_step, &x, &sl), ST_EINVAL);

  /* argmax: output dtype and keepdims shape. */
  const int64_t am_shape[4] = {2, 1, 5, 7};
  st_tensor am = dev_alloc(be, ST_I64, 4, am_shape);
  st_tensor am_f32 = dev_alloc(be, ST_F32, 4, am_shape);
  REFUSED(st_argmax_axis(be, 1, &x, &am_f32), ST_EDTYPE);
  REFUSED(st_argmax_axis(be, 2, &x, &am), ST_ESHAPE);
  OP_OK(st_argmax_axis(be, 1, &x, &am));

  st_tensor *all[] = {&x, &y, &z, &c, &bad_c, &i64, &cat, &cat_bad, &sl, &am,
                      &am_f32};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    st_tensor_free(all[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unary_fixture),
      cmocka_unit_test(test_binary_fixture),
      cmocka_unit_test(test_binary_rank0),
      cmocka_unit_test(test_pool_fixture),
      cmocka_unit_test(test_resize_fixture),
      cmocka_unit_test(test_softmax_fixture),
      cmocka_unit_test(test_transpose_fixture),
      cmocka_unit_test(test_concat_fixture),
      cmocka_unit_test(test_slice_fixture),
      cmocka_unit_test(test_argmax_fixture),
      cmocka_unit_test(test_random_shapes),
      cmocka_unit_test(test_wrappers_refuse),
      cmocka_unit_test(test_threads_agree),
  };
  return st_test_run_on_backends("graph_ops", tests,
                                 sizeof tests / sizeof tests[0]);
}
