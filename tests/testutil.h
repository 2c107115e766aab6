/* Shared helpers for the cmocka tests: fixtures, value comparison,
 * finite differences, and running one test body on every backend.
 *
 * Backend-parameterised tests (as ggml's test-backend-ops): write the body
 * once taking `void **state`, get the backend with st_test_backend(state)
 * (which skips, with the reason, on a backend this machine lacks), and run
 * the table through st_test_run_on_backends(). */
#ifndef ST_TESTS_TESTUTIL_H
#define ST_TESTS_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/error.h"
#include "gpu/backend.h"
#include "models/safetensors.h"

/* The fixture folder: $ST_FIXTURE_DIR when set (tests run from a copied
 * tree, e.g. on a GPU machine), else the source tree's tests/fixtures. */
const char *st_test_fixture_dir(void);
/* Path of a file under the fixture folder (static buffer). */
const char *st_test_fixture_path(const char *name);
/* Opens tests/fixtures/<name>; fails the test when it cannot. */
st_safetensors *st_test_fixture_open(const char *name);
/* Reads one tensor of a fixture file into a new host tensor; fails the
 * test when it is missing. */
st_tensor st_test_fixture_tensor(const st_safetensors *fx, const char *name);

/* Asserts |got - want| <= atol + rtol * |want| elementwise; on failure
 * prints the worst element and fails. On a GPU backend the tolerances are
 * raised to at least ST_TEST_GPU_RTOL / ST_TEST_GPU_ATOL: fp32 kernels there
 * sum in other orders (TF32 stays off). */
#define ST_TEST_GPU_RTOL 1e-3
#define ST_TEST_GPU_ATOL 1e-5
void st_test_assert_close(const float *got, const float *want, size_t n,
                          double rtol, double atol, const char *what);
/* Asserts a call returned ST_OK, printing st_error_detail otherwise. */
#define ST_ASSERT_OK(expr)                                                     \
  do {                                                                         \
    int st__t_rc = (expr);                                                     \
    if (st__t_rc != ST_OK)                                                     \
      fail_msg("%s -> %s: %s", #expr, st_strerror(st__t_rc),                   \
               st_error_detail());                                             \
  } while (0)

/* Deterministic uniform floats in [lo, hi) from a 64-bit seed. */
void st_test_fill_uniform(float *x, size_t n, uint64_t seed, float lo,
                          float hi);

/* Backend of a parameterised test; calls skip() (with the reason printed)
 * when that backend is not available on this machine. Also selects the
 * tolerance floor of st_test_assert_close for that backend. */
st_backend *st_test_backend(void **state);
/* 1 while the running test is on a GPU backend. */
int st_test_on_gpu(void);
/* A host tensor copied to the backend (or the same tensor on the CPU). */
st_tensor st_test_to_backend(st_backend *be, const st_tensor *host);
/* A host copy of a backend tensor. */
st_tensor st_test_to_host(st_backend *be, const st_tensor *t);

/* Milliseconds on the monotonic clock, for the benchmarks some test
 * programs run on request. */
double st_test_now_ms(void);
/* The median of v[0..n) (n > 0), sorting v. */
double st_test_median(double *v, int n);

/* Runs each test once per backend kind (cpu, cuda), named "<kind>/<name>".
 * Returns the number of failed tests. */
int st_test_run_on_backends(const char *group, const struct CMUnitTest *tests,
                            size_t count);

#endif
