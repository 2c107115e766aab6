#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef ST_FIXTURE_DIR
#error "ST_FIXTURE_DIR must be defined by the build"
#endif

const char *st_test_fixture_dir(void) {
  const char *env = getenv("ST_FIXTURE_DIR");
  return env && *env ? env : ST_FIXTURE_DIR;
}

const char *st_test_fixture_path(const char *name) {
  static char path[1024];
  snprintf(path, sizeof path, "%s/%s", st_test_fixture_dir(), name);
  return path;
}

/* Tolerance floors of the backend the current test runs on. */
static double rtol_floor, atol_floor;
static int on_gpu;

int st_test_on_gpu(void) { return on_gpu; }

st_safetensors *st_test_fixture_open(const char *name) {
  st_safetensors *fx = NULL;
  int rc = st_safetensors_open(st_test_fixture_path(name), &fx);
  if (rc)
    fail_msg("fixture %s: %s", name, st_error_detail());
  return fx;
}

st_tensor st_test_fixture_tensor(const st_safetensors *fx, const char *name) {
  st_tensor t;
  int rc = st_safetensors_read(fx, name, &t);
  if (rc)
    fail_msg("fixture tensor %s: %s", name, st_error_detail());
  return t;
}

void st_test_assert_close(const float *got, const float *want, size_t n,
                          double rtol, double atol, const char *what) {
  size_t worst = 0;
  double worst_excess = -1.0;
  rtol = rtol > rtol_floor ? rtol : rtol_floor;
  atol = atol > atol_floor ? atol : atol_floor;
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    double g = got[i], w = want[i];
    double tol = atol + rtol * fabs(w);
    double err = fabs(g - w);
    if (!(err <= tol)) { /* also catches NaN */
      bad++;
      double excess = isnan(err) ? INFINITY : err - tol;
      if (excess > worst_excess) {
        worst_excess = excess;
        worst = i;
      }
    }
  }
  if (bad)
    fail_msg("%s: %zu of %zu elements differ; worst [%zu] got %.9g want %.9g "
             "(rtol %g, atol %g)",
             what, bad, n, worst, (double)got[worst], (double)want[worst],
             rtol, atol);
}

void st_test_fill_uniform(float *x, size_t n, uint64_t seed, float lo,
                          float hi) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    double u = (double)(s >> 11) / 9007199254740992.0;
    x[i] = lo + (float)u * (hi - lo);
  }
}

typedef struct backend_slot {
  st_backend_kind kind;
  st_backend *be;    /* NULL when unavailable */
  char reason[256];  /* why it is unavailable */
} backend_slot;

static backend_slot slots[2] = {{ST_BACKEND_CPU, NULL, ""},
                                {ST_BACKEND_CUDA, NULL, ""}};

st_backend *st_test_backend(void **state) {
  backend_slot *slot = *state;
  on_gpu = slot->kind == ST_BACKEND_CUDA;
  rtol_floor = on_gpu ? ST_TEST_GPU_RTOL : 0.0;
  atol_floor = on_gpu ? ST_TEST_GPU_ATOL : 0.0;
  if (!slot->be) {
    print_message("[  SKIPPED ] %s backend: %s\n",
                  slot->kind == ST_BACKEND_CUDA ? "cuda" : "cpu", slot->reason);
    skip();
  }
  return slot->be;
}

st_tensor st_test_to_backend(st_backend *be, const st_tensor *host) {
  st_tensor t;
  ST_ASSERT_OK(st_tensor_alloc(be, &t, host->dtype, host->ndim, host->shape));
  ST_ASSERT_OK(st_tensor_upload(be, &t, host->data, st_tensor_nbytes(host)));
  return t;
}

st_tensor st_test_to_host(st_backend *be, const st_tensor *t) {
  st_tensor h;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &h, t->dtype, t->ndim, t->shape));
  ST_ASSERT_OK(st_backend_sync(be));
  ST_ASSERT_OK(st_tensor_download(be, t, h.data, st_tensor_nbytes(t)));
  return h;
}

static int slot_setup(void **state) {
  (void)state;
  return 0;
}

int st_test_run_on_backends(const char *group, const struct CMUnitTest *tests,
                            size_t count) {
  int failed = 0;
  for (size_t k = 0; k < sizeof slots / sizeof slots[0]; k++) {
    backend_slot *slot = &slots[k];
    st_backend_options opts = {.kind = slot->kind, .deterministic = 1};
    if (st_backend_new(&opts, &slot->be) != ST_OK) {
      slot->be = NULL;
      snprintf(slot->reason, sizeof slot->reason, "%s", st_error_detail());
    }
    const char *kname = slot->kind == ST_BACKEND_CUDA ? "cuda" : "cpu";
    struct CMUnitTest *copy = calloc(count, sizeof *copy);
    char **names = calloc(count, sizeof *names);
    for (size_t i = 0; i < count; i++) {
      copy[i] = tests[i];
      size_t len = strlen(kname) + strlen(tests[i].name) + 2;
      names[i] = malloc(len);
      snprintf(names[i], len, "%s/%s", kname, tests[i].name);
      copy[i].name = names[i];
      copy[i].initial_state = slot;
      if (!copy[i].setup_func)
        copy[i].setup_func = slot_setup;
    }
    char gname[128];
    snprintf(gname, sizeof gname, "%s[%s]", group, kname);
    failed += _cmocka_run_group_tests(gname, copy, count, NULL, NULL);
    for (size_t i = 0; i < count; i++)
      free(names[i]);
    free(names);
    free(copy);
    st_backend_free(slot->be);
    slot->be = NULL;
  }
  return failed;
}

double st_test_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double st_test_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
