/* shadowtutor-teacher-bench: times the ONNX executor on one teacher model.
 *
 *   shadowtutor-teacher-bench --model FILE.onnx [--height 360 --width 640]
 *                             [--iters 5] [--threads 2] [--seed 0]
 *
 * Loads the model (st_onnx_model_load), plans it for a [1,3,H,W] input on
 * the CPU backend (st_onnx_plan_new: shape inference, constant folding,
 * weight upload, buffer planning), then runs one warm-up and --iters timed
 * st_onnx_plan_run calls on one random input drawn like a normalised image
 * (N(0,1)-like values, what a mean/std-normalised frame looks like to the
 * first convolution). Prints one human line and one JSON line with the keys
 * bench/torch_teacher_bench.py also prints, so bench/teacher_vs_pytorch.sh
 * can put the two side by side:
 *
 *   {"model":..., "height":..., "width":..., "threads":..., "iters":...,
 *    "run_ms_median":..., "run_ms_min":..., "plan_ms":...,
 *    "peak_rss_mb":...}
 *
 * It times the executor alone: `shadowtutor-model teacher` also loads the
 * model, plans it, converts the image and labels the output on every call,
 * which would drown a steady-state figure. Exit status 0 on success, 2 on a
 * usage error, 1 when the model cannot be loaded, planned or run (with the
 * executor's one-line reason on stderr).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "base/error.h"
#include "gpu/backend.h"
#include "gpu/tensor.h"
#include "models/onnx_exec.h"
#include "models/onnx_graph.h"

enum {
  EXIT_FAILED = 1,
  EXIT_USAGE = 2,
  DEFAULT_HEIGHT = 360, /* the teacher benchmark size */
  DEFAULT_WIDTH = 640,
  DEFAULT_ITERS = 5,
  DEFAULT_THREADS = 2,   /* the shared development machine's cores */
  MAX_SIDE = 8192,       /* larger frames are a typo, not a benchmark */
  MAX_ITERS = 10000,
  MAX_THREADS = 1024,
  TEACHER_CHANNELS = 3,  /* RGB */
};
static const double KIB_PER_MB = 1024.0; /* ru_maxrss is in KiB on Linux */

typedef struct options {
  const char *model; /* ONNX file */
  int height, width; /* planned input size */
  int iters;         /* timed runs after the warm-up */
  int threads;       /* CPU backend threads */
  unsigned seed;     /* of the random input */
} options;

static void usage(FILE *f) {
  fprintf(f,
          "usage: shadowtutor-teacher-bench --model FILE.onnx [--height %d] "
          "[--width %d] [--iters %d] [--threads %d] [--seed 0]\n",
          DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_ITERS, DEFAULT_THREADS);
}

static int parse_int(const char *flag, const char *s, long lo, long hi,
                     long *out) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < lo || v > hi) {
    fprintf(stderr, "teacher-bench: %s expects an integer in [%ld, %ld], "
            "got '%s'\n", flag, lo, hi, s);
    return -1;
  }
  *out = v;
  return 0;
}

static int parse_args(int argc, char **argv, options *o) {
  *o = (options){.height = DEFAULT_HEIGHT, .width = DEFAULT_WIDTH,
                 .iters = DEFAULT_ITERS, .threads = DEFAULT_THREADS};
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    if (!strcmp(flag, "-h") || !strcmp(flag, "--help")) {
      usage(stdout);
      exit(0);
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "teacher-bench: %s needs a value\n", flag);
      return -1;
    }
    const char *val = argv[++i];
    long v = 0;
    if (!strcmp(flag, "--model")) {
      o->model = val;
      continue;
    }
    if (!strcmp(flag, "--height")) {
      if (parse_int(flag, val, 1, MAX_SIDE, &v)) return -1;
      o->height = (int)v;
    } else if (!strcmp(flag, "--width")) {
      if (parse_int(flag, val, 1, MAX_SIDE, &v)) return -1;
      o->width = (int)v;
    } else if (!strcmp(flag, "--iters")) {
      if (parse_int(flag, val, 1, MAX_ITERS, &v)) return -1;
      o->iters = (int)v;
    } else if (!strcmp(flag, "--threads")) {
      if (parse_int(flag, val, 1, MAX_THREADS, &v)) return -1;
      o->threads = (int)v;
    } else if (!strcmp(flag, "--seed")) {
      if (parse_int(flag, val, 0, INT32_MAX, &v)) return -1;
      o->seed = (unsigned)v;
    } else {
      fprintf(stderr, "teacher-bench: unknown argument '%s'\n", flag);
      return -1;
    }
  }
  if (!o->model) {
    fprintf(stderr, "teacher-bench: --model is required\n");
    return -1;
  }
  return 0;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / KIB_PER_MB;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* xorshift32: a fixed, platform-independent stream, so a seed names the
 * same input everywhere (rand() differs between C libraries). */
static uint32_t xorshift32(uint32_t *state) {
  uint32_t x = *state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *state = x;
}

/* Fills x with approximately N(0,1) values: the sum of four uniforms on
 * [-sqrt(3), sqrt(3)] has variance 4 and is halved. Cheap and close enough
 * to what a normalised image feeds the first layer; the values matter only
 * in that they must not be degenerate (all zero would let ReLUs skip). */
static void fill_normalised(float *x, int64_t n, unsigned seed) {
  enum { TERMS = 4 };
  const double half_width = sqrt(3.0);
  uint32_t state = seed * 2654435761u + 1u; /* never the all-zero state */
  for (int64_t i = 0; i < n; i++) {
    double s = 0.0;
    for (int t = 0; t < TERMS; t++)
      s += (2.0 * (xorshift32(&state) / 4294967296.0) - 1.0) * half_width;
    x[i] = (float)(s / sqrt((double)TERMS));
  }
}

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

/* Prints the failure and its detail line; returns EXIT_FAILED. */
static int fail(const char *what, int rc) {
  const char *detail = st_error_detail();
  fprintf(stderr, "teacher-bench: %s: %s%s%s\n", what, st_strerror(rc),
          *detail ? ": " : "", detail);
  return EXIT_FAILED;
}

int main(int argc, char **argv) {
  options o;
  if (parse_args(argc, argv, &o)) {
    usage(stderr);
    return EXIT_USAGE;
  }
  st_backend *be = NULL;
  st_onnx_model *model = NULL;
  st_onnx_plan *plan = NULL;
  st_tensor host = {0}, input = {0};
  double *times = calloc((size_t)o.iters, sizeof *times);
  int status = 0, rc = 0;
  if (!times)
    return fail("timings", ST_ENOMEM);

  const st_backend_options bo = {.kind = ST_BACKEND_CPU, .threads = o.threads};
  if ((rc = st_backend_new(&bo, &be))) {
    status = fail("backend", rc);
    goto done;
  }
  if ((rc = st_onnx_model_load(o.model, &model))) {
    status = fail(o.model, rc);
    goto done;
  }
  const int64_t shape[4] = {1, TEACHER_CHANNELS, o.height, o.width};
  double t0 = now_ms();
  rc = st_onnx_plan_new(be, model, shape, &plan);
  const double plan_ms = now_ms() - t0;
  if (rc) {
    status = fail("plan", rc);
    goto done;
  }
  if ((rc = st_tensor_alloc(NULL, &host, ST_F32, 4, shape)) ||
      (rc = st_tensor_alloc(be, &input, ST_F32, 4, shape))) {
    status = fail("input", rc);
    goto done;
  }
  fill_normalised(host.data, st_tensor_numel(&host), o.seed);
  if ((rc = st_tensor_upload(be, &input, host.data, st_tensor_nbytes(&host)))) {
    status = fail("input", rc);
    goto done;
  }
  /* Warm-up: first-touch page faults of the planned buffers and oneDNN's
   * primitive creation belong to setup, not to the steady state. */
  const st_tensor *out = NULL;
  if ((rc = st_onnx_plan_run(plan, &input, &out)) ||
      (rc = st_backend_sync(be))) {
    status = fail("run", rc);
    goto done;
  }
  for (int i = 0; i < o.iters; i++) {
    t0 = now_ms();
    if ((rc = st_onnx_plan_run(plan, &input, &out)) ||
        (rc = st_backend_sync(be))) {
      status = fail("run", rc);
      goto done;
    }
    times[i] = now_ms() - t0;
  }
  qsort(times, (size_t)o.iters, sizeof *times, cmp_double);
  /* Median; the mean of the middle two for an even count. */
  const double median = (times[(o.iters - 1) / 2] + times[o.iters / 2]) / 2.0;
  const double rss = peak_rss_mb();
  char out_shape[64];
  st_tensor_shape_str(out, out_shape, sizeof out_shape);
  st_onnx_plan_stats stats;
  st_onnx_plan_get_stats(plan, &stats);
  printf("c onnx executor, %s, %dx%d, output %s, %d steps, %d iterations, "
         "%d threads: run median %.1f ms (min %.1f), plan %.1f ms, "
         "peak RSS %.1f MB\n",
         base_name(o.model), o.height, o.width, out_shape, stats.steps,
         o.iters, o.threads, median, times[0], plan_ms, rss);
  printf("{\"backend\": \"%s\", \"model\": \"%s\", \"height\": %d, "
         "\"width\": %d, \"threads\": %d, \"iters\": %d, "
         "\"run_ms_median\": %.3f, \"run_ms_min\": %.3f, \"plan_ms\": %.3f, "
         "\"peak_rss_mb\": %.1f}\n",
         st_backend_name(be), base_name(o.model), o.height, o.width,
         o.threads, o.iters, median, times[0], plan_ms, rss);

done:
  st_tensor_free(&input);
  st_tensor_free(&host);
  st_onnx_plan_free(plan);
  st_onnx_model_free(model);
  st_backend_free(be);
  free(times);
  return status;
}
