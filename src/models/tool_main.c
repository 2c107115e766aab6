/* shadowtutor-model: the command-line face of the compute core.
 *
 *   forward --config C --weights W --input IN --out OUT
 *   distill --config C --weights W --input IN [--labels L] --steps N
 *           [--lr X] [--full]
 *           --out W2
 *   bench   --config C [--height H --width W] [--iters N]
 *   teacher --config TEACHER.json | --model FILE.onnx --input IN --out OUT
 * Common: [--backend cpu|cuda|auto] [--threads N]
 *         [--conv-search heuristic|exhaustive] (CUDA algorithm choice)
 *         [--no-graphs] (CUDA: launch every op on its own, no recordings).
 *
 * A bad file, flag or shape prints one line on stderr and exits with 2. */
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "base/error.h"
#include "models/config.h"
#include "models/safetensors.h"
#include "models/student.h"
#include "models/teacher.h"

enum { EXIT_USAGE = 2, BENCH_DEFAULT_ITERS = 5, BENCH_MAX_ITERS = 1000 };
enum { BENCH_DEFAULT_HEIGHT = 720, BENCH_DEFAULT_WIDTH = 1280 };
/* The largest frame the tool accepts on each side, in pixels. */
enum { MAX_FRAME_SIDE = 8192, MAX_STEPS = 100000 };

typedef struct options {
  const char *command;
  const char *config, *weights, *input, *out, *backend, *conv_search;
  const char *labels; /* distill: label and weight from this file */
  const char *model; /* teacher: a bare ONNX model instead of --config */
  int steps, iters, height, width, threads, full, no_graphs;
  double lr; /* < 0: from the config */
} options;

static void usage(FILE *f) {
  fputs("usage:\n"
        "  shadowtutor-model forward --config STUDENT.json --weights "
        "W.safetensors --input IN.safetensors --out OUT.safetensors\n"
        "  shadowtutor-model distill --config STUDENT.json --weights "
        "W.safetensors --input IN.safetensors [--labels L.safetensors] "
        "--steps N [--lr 0.01] [--full] --out W2.safetensors\n"
        "  shadowtutor-model bench --config STUDENT.json [--height 720 "
        "--width 1280] [--iters N]\n"
        "  shadowtutor-model teacher (--config TEACHER.json | --model "
        "FILE.onnx) --input IN.safetensors --out OUT.safetensors\n"
        "options for every command: [--backend cpu|cuda|auto] [--threads N] "
        "[--conv-search heuristic|exhaustive] [--no-graphs]\n",
        f);
}

static int fail(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("shadowtutor-model: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return code;
}

/* One line for a failed library call, with its detail. */
static int fail_status(int rc, const char *what) {
  const char *detail = st_error_detail();
  return fail(rc == ST_ENOMEM || rc == ST_EBACKEND ? 1 : EXIT_USAGE,
              "%s: %s%s%s", what, st_strerror(rc), *detail ? ": " : "",
              detail);
}

static int parse_int(const char *flag, const char *text, int lo, int hi,
                     int *out) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno || *end || end == text || v < lo || v > hi)
    return fail(EXIT_USAGE, "%s expects an integer in [%d, %d], got '%s'",
                flag, lo, hi, text);
  *out = (int)v;
  return 0;
}

static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->lr = -1.0;
  o->steps = -1;
  o->iters = BENCH_DEFAULT_ITERS;
  o->height = BENCH_DEFAULT_HEIGHT;
  o->width = BENCH_DEFAULT_WIDTH;
  o->backend = "cpu";
  o->conv_search = "heuristic";
  if (argc < 2) {
    usage(stderr);
    return EXIT_USAGE;
  }
  o->command = argv[1];
  if (!strcmp(o->command, "-h") || !strcmp(o->command, "--help")) {
    usage(stdout);
    exit(0);
  }
  for (int i = 2; i < argc; i++) {
    const char *flag = argv[i];
    if (!strcmp(flag, "--full")) {
      o->full = 1;
      continue;
    }
    if (!strcmp(flag, "--no-graphs")) {
      o->no_graphs = 1;
      continue;
    }
    if (i + 1 >= argc)
      return fail(EXIT_USAGE, "%s needs a value (or unknown flag)", flag);
    const char *val = argv[++i];
    int rc = 0;
    if (!strcmp(flag, "--config"))
      o->config = val;
    else if (!strcmp(flag, "--model"))
      o->model = val;
    else if (!strcmp(flag, "--weights"))
      o->weights = val;
    else if (!strcmp(flag, "--input"))
      o->input = val;
    else if (!strcmp(flag, "--labels"))
      o->labels = val;
    else if (!strcmp(flag, "--out"))
      o->out = val;
    else if (!strcmp(flag, "--backend"))
      o->backend = val;
    else if (!strcmp(flag, "--conv-search")) {
      if (strcmp(val, "heuristic") && strcmp(val, "exhaustive"))
        return fail(EXIT_USAGE,
                    "--conv-search expects heuristic or exhaustive, got '%s'",
                    val);
      o->conv_search = val;
    }
    else if (!strcmp(flag, "--steps"))
      rc = parse_int(flag, val, 0, MAX_STEPS, &o->steps);
    else if (!strcmp(flag, "--iters"))
      rc = parse_int(flag, val, 1, BENCH_MAX_ITERS, &o->iters);
    else if (!strcmp(flag, "--height"))
      rc = parse_int(flag, val, 1, MAX_FRAME_SIDE, &o->height);
    else if (!strcmp(flag, "--width"))
      rc = parse_int(flag, val, 1, MAX_FRAME_SIDE, &o->width);
    else if (!strcmp(flag, "--threads"))
      rc = parse_int(flag, val, 0, 1024, &o->threads);
    else if (!strcmp(flag, "--lr")) {
      char *end;
      errno = 0;
      o->lr = strtod(val, &end);
      if (errno || *end || end == val || !(o->lr > 0.0) || !isfinite(o->lr))
        return fail(EXIT_USAGE, "--lr expects a positive number, got '%s'",
                    val);
    } else
      return fail(EXIT_USAGE, "unknown flag '%s' (try --help)", flag);
    if (rc)
      return rc;
  }
  return 0;
}

static int need(const char *value, const char *flag) {
  if (value)
    return 0;
  return fail(EXIT_USAGE, "%s is required", flag);
}

/* Everything a command works with; freed by session_close. */
typedef struct session {
  st_student_config cfg;
  st_backend *be;
  st_student *student;
  st_safetensors *input;
  st_safetensors *labels; /* distill --labels */
  st_teacher *teacher;
} session;

static void session_close(session *s) {
  st_safetensors_free(s->input);
  st_safetensors_free(s->labels);
  st_teacher_free(s->teacher);
  st_student_free(s->student);
  st_backend_free(s->be);
}

/* The compute backend the common flags ask for. */
static int backend_open(const options *o, st_backend **be) {
  st_backend_options bo = {
      .threads = o->threads,
      .conv_exhaustive = !strcmp(o->conv_search, "exhaustive"),
      .graphs_off = o->no_graphs};
  int rc;
  if ((rc = st_backend_kind_from_name(o->backend, &bo.kind)))
    return fail_status(rc, "--backend");
  if ((rc = st_backend_new(&bo, be)))
    return fail_status(rc, "backend");
  return 0;
}

static int session_open(const options *o, session *s, int need_weights) {
  memset(s, 0, sizeof *s);
  int rc;
  if ((rc = need(o->config, "--config")))
    return rc;
  if (need_weights && (rc = need(o->weights, "--weights")))
    return rc;
  if ((rc = st_student_config_load(o->config, &s->cfg)))
    return fail_status(rc, "config");
  if (o->lr > 0.0)
    s->cfg.lr = o->lr;
  if (o->full) {
    s->cfg.trainable_full = 1;
    s->cfg.trainable_count = 0;
  }
  if ((rc = backend_open(o, &s->be)))
    return rc;
  if ((rc = st_student_new_from_config(s->be, &s->cfg, &s->student)))
    return fail_status(rc, "student");
  if (o->weights) {
    st_safetensors *w = NULL;
    if ((rc = st_safetensors_open(o->weights, &w)))
      return fail_status(rc, "--weights");
    rc = st_student_load(s->student, w, o->weights);
    st_safetensors_free(w);
    if (rc)
      return fail_status(rc, "--weights");
  }
  return 0;
}

/* Reads a tensor of the input file with the expected dtype and rank. */
/* Reads a tensor of an opened file with the expected dtype and rank. */
static int file_tensor(const st_safetensors *file, const char *path,
                       const char *name, st_dtype dt, int ndim,
                       st_tensor *out) {
  int rc = st_safetensors_read(file, name, out);
  if (rc)
    return fail_status(rc, path);
  if (out->dtype != dt || out->ndim != ndim ||
      (ndim == 3 && out->shape[2] != 3)) {
    char shape[96];
    fail(EXIT_USAGE, "%s: tensor '%s' is %s %s, expected %s %s", path,
         name, st_dtype_name(out->dtype),
         st_tensor_shape_str(out, shape, sizeof shape), st_dtype_name(dt),
         ndim == 3 ? "[H,W,3]" : "[H,W]");
    st_tensor_free(out);
    return EXIT_USAGE;
  }
  return 0;
}

static int input_tensor(session *s, const options *o, const char *name,
                        st_dtype dt, int ndim, st_tensor *out) {
  return file_tensor(s->input, o->input, name, dt, ndim, out);
}

static int cmd_forward(const options *o) {
  session s;
  st_tensor image = {0}, logits_host = {0};
  int rc = session_open(o, &s, 1);
  if (!rc)
    rc = need(o->input, "--input");
  if (!rc)
    rc = need(o->out, "--out");
  if (!rc && (rc = st_safetensors_open(o->input, &s.input)))
    rc = fail_status(rc, "--input");
  if (!rc)
    rc = input_tensor(&s, o, "image", ST_U8, 3, &image);
  const st_tensor *logits = NULL;
  if (!rc && (rc = st_student_forward(s.student, &image, &logits)))
    rc = fail_status(rc, "forward");
  if (!rc) {
    /* Written as [C,H,W]: the batch of one is implicit. */
    const int64_t shape[3] = {logits->shape[1], logits->shape[2],
                              logits->shape[3]};
    if ((rc = st_tensor_alloc(NULL, &logits_host, ST_F32, 3, shape)) ||
        (rc = st_backend_sync(s.be)) ||
        (rc = st_tensor_download(s.be, logits, logits_host.data,
                                 st_tensor_nbytes(&logits_host))))
      rc = fail_status(rc, "forward");
  }
  if (!rc) {
    st_named_tensor named = {.name = "logits", .tensor = &logits_host};
    if ((rc = st_safetensors_write(o->out, &named, 1, NULL)))
      rc = fail_status(rc, "--out");
  }
  st_tensor_free(&image);
  st_tensor_free(&logits_host);
  session_close(&s);
  return rc;
}

static int cmd_distill(const options *o) {
  session s;
  st_tensor image = {0}, label = {0}, weight = {0};
  int rc = session_open(o, &s, 1);
  if (!rc)
    rc = need(o->input, "--input");
  if (!rc)
    rc = need(o->out, "--out");
  if (!rc && o->steps < 0)
    rc = fail(EXIT_USAGE, "--steps is required");
  if (!rc && (rc = st_safetensors_open(o->input, &s.input)))
    rc = fail_status(rc, "--input");
  if (!rc)
    rc = input_tensor(&s, o, "image", ST_U8, 3, &image);
  /* The teacher's output (`shadowtutor-model teacher --out`) can serve as
   * --labels for a frame kept in --input. */
  const st_safetensors *maps = s.input;
  const char *maps_path = o->input;
  if (!rc && o->labels) {
    if ((rc = st_safetensors_open(o->labels, &s.labels)))
      rc = fail_status(rc, "--labels");
    maps = s.labels;
    maps_path = o->labels;
  }
  if (!rc)
    rc = file_tensor(maps, maps_path, "label", ST_U8, 2, &label);
  if (!rc)
    rc = file_tensor(maps, maps_path, "weight", ST_F32, 2, &weight);
  if (!rc && (label.shape[0] != image.shape[0] ||
              label.shape[1] != image.shape[1] ||
              !st_tensor_same_shape(&label, &weight)))
    rc = fail(EXIT_USAGE, "%s: image, label and weight sizes differ",
              o->input);
  if (!rc && (rc = st_student_set_example(s.student, &image, &label, &weight)))
    rc = fail_status(rc, "--input");
  for (int k = 1; !rc && k <= o->steps; k++) {
    float loss;
    double miou;
    if ((rc = st_student_train_step(s.student, &loss, &miou))) {
      rc = fail_status(rc, "distill");
      break;
    }
    printf("{\"step\":%d,\"loss\":%.9g,\"miou\":%.9g}\n", k, (double)loss,
           miou);
    fflush(stdout);
  }
  if (!rc && (rc = st_student_save(s.student, o->out)))
    rc = fail_status(rc, "--out");
  st_tensor_free(&image);
  st_tensor_free(&label);
  st_tensor_free(&weight);
  session_close(&s);
  return rc;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0; /* ru_maxrss is in KiB on Linux */
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* What a timed bench iteration works on. */
typedef struct bench_ctx {
  st_student *student;
  st_backend *be;
  const st_tensor *image;
  st_tensor *labels; /* host U8 [H,W]: the class map */
} bench_ctx;

/* What a device does with every frame: the class map, on the host. */
static int bench_predict(bench_ctx *b) {
  return st_student_predict(b->student, b->image, b->labels);
}

static int bench_forward(bench_ctx *b) {
  const st_tensor *logits;
  int rc = st_student_forward(b->student, b->image, &logits);
  return rc ? rc : st_backend_sync(b->be);
}

/* Each step runs its own forward: the previous step changed the weights. */
static int bench_step(bench_ctx *b) {
  float loss;
  int rc = st_student_train_step(b->student, &loss, NULL);
  return rc ? rc : st_backend_sync(b->be);
}

/* One warm-up call (plans buffers, builds primitives), then `iters` timed
 * calls; the median in *ms. */
static int time_median(int (*fn)(bench_ctx *), bench_ctx *b, int iters,
                       double *times, double *ms) {
  int rc = fn(b);
  for (int i = 0; !rc && i < iters; i++) {
    double t0 = now_ms();
    rc = fn(b);
    times[i] = now_ms() - t0;
  }
  if (!rc)
    *ms = median(times, iters);
  return rc;
}

/* `iters` rounds of one reuse step then one recompute step (after one
 * warm-up step of each); the medians of each kind. `times` holds 2 x iters. */
static int time_alternating(bench_ctx *b, int iters, double *times,
                            double *reuse_ms, double *recompute_ms) {
  int rc = ST_OK;
  for (int i = -1; !rc && i < iters; i++)
    for (int recompute = 0; !rc && recompute < 2; recompute++) {
      st_student_recompute_frozen(b->student, recompute);
      double t0 = now_ms();
      rc = bench_step(b);
      if (i >= 0)
        times[recompute * iters + i] = now_ms() - t0;
    }
  st_student_recompute_frozen(b->student, 0);
  if (!rc) {
    *reuse_ms = median(times, iters);
    *recompute_ms = median(times + iters, iters);
  }
  return rc;
}

static int cmd_bench(const options *o) {
  session s;
  st_tensor image = {0}, label = {0}, weight = {0}, pred = {0};
  double *times = NULL;
  int rc = session_open(o, &s, 0);
  const int64_t h = o->height, w = o->width;
  const int64_t img_shape[3] = {h, w, 3}, map_shape[2] = {h, w};
  if (!rc && ((rc = st_tensor_alloc(NULL, &image, ST_U8, 3, img_shape)) ||
              (rc = st_tensor_alloc(NULL, &label, ST_U8, 2, map_shape)) ||
              (rc = st_tensor_alloc(NULL, &pred, ST_U8, 2, map_shape)) ||
              (rc = st_tensor_alloc(NULL, &weight, ST_F32, 2, map_shape))))
    rc = fail_status(rc, "bench");
  if (!rc && !(times = calloc(2 * (size_t)o->iters, sizeof *times)))
    rc = fail(1, "bench: out of memory");
  if (rc)
    goto done;
  /* A deterministic pseudo-random frame and label map. */
  uint32_t x = 2463534242u;
  uint8_t *px = image.data, *lb = label.data;
  float *wt = weight.data;
  for (int64_t i = 0; i < h * w * 3; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    px[i] = (uint8_t)x;
  }
  for (int64_t i = 0; i < h * w; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    lb[i] = (uint8_t)(x % (uint32_t)s.cfg.num_classes);
    wt[i] = (x >> 8) % 10 < 3 ? 5.0f : 1.0f;
  }
  bench_ctx bc = {
      .student = s.student, .be = s.be, .image = &image, .labels = &pred};
  /* The class map first: its peak is that of a device, which never holds
   * frame-sized logits; the forward to those logits (what PyTorch's
   * forward returns) comes next. */
  double predict_ms, infer_ms, step_ms;
  if ((rc = time_median(bench_predict, &bc, o->iters, times, &predict_ms))) {
    rc = fail_status(rc, "bench predict");
    goto done;
  }
  double predict_rss = peak_rss_mb();
  if ((rc = time_median(bench_forward, &bc, o->iters, times, &infer_ms))) {
    rc = fail_status(rc, "bench forward");
    goto done;
  }
  double infer_rss = peak_rss_mb();
  /* Partial distillation times reuse steps alternately with steps that
   * recompute the frozen modules every time, as the reference (and so the
   * PyTorch comparison) does: the baseline of the reuse, under the same
   * machine noise. Full distillation has no frozen module. */
  double recompute_ms = 0.0;
  if ((rc = st_student_set_example(s.student, &image, &label, &weight)) ||
      (rc = s.cfg.trainable_full
                ? time_median(bench_step, &bc, o->iters, times, &step_ms)
                : time_alternating(&bc, o->iters, times, &step_ms,
                                   &recompute_ms))) {
    rc = fail_status(rc, "bench distill");
    goto done;
  }
  if (s.cfg.trainable_full)
    recompute_ms = step_ms;
  double step_rss = peak_rss_mb();
  /* The CPU's kernel table, in words and as a JSON value. */
  const char *isa = st_backend_cpu_isa(s.be);
  char isa_words[32] = "", isa_json[16] = "null";
  if (isa) {
    snprintf(isa_words, sizeof isa_words, " (%s kernels)", isa);
    snprintf(isa_json, sizeof isa_json, "\"%s\"", isa);
  }
  printf("backend %s%s, %lldx%lld, %d iterations, %lld trainable of %lld "
         "parameters, op recordings %s\n",
         st_backend_name(s.be), isa_words, (long long)h, (long long)w, o->iters,
         (long long)st_student_param_count(s.student, 1),
         (long long)st_student_param_count(s.student, 0),
         o->no_graphs ? "off" : "where the backend records (CUDA)");
  printf("class map          median %8.1f ms   peak RSS %7.1f MB\n", predict_ms,
         predict_rss);
  printf("inference          median %8.1f ms   peak RSS %7.1f MB\n", infer_ms,
         infer_rss);
  printf("distillation step  median %8.1f ms   peak RSS %7.1f MB\n", step_ms,
         step_rss);
  printf("  frozen recomputed median %8.1f ms   reuse / recompute %.3f\n",
         recompute_ms, step_ms / recompute_ms);
  printf("{\"backend\":\"%s\",\"cpu_isa\":%s,\"height\":%lld,\"width\":%lld,"
         "\"iters\":%d,"
         "\"predict_ms_median\":%.3f,\"predict_peak_rss_mb\":%.1f,"
         "\"infer_ms_median\":%.3f,\"infer_peak_rss_mb\":%.1f,"
         "\"distill_step_ms_median\":%.3f,\"distill_peak_rss_mb\":%.1f,"
         "\"distill_step_recompute_ms_median\":%.3f,\"graphs\":%s,"
         "\"full\":%s}\n",
         st_backend_name(s.be), isa_json, (long long)h, (long long)w, o->iters,
         predict_ms, predict_rss, infer_ms, infer_rss, step_ms, step_rss,
         recompute_ms, o->no_graphs ? "false" : "true",
         s.cfg.trainable_full ? "true" : "false");
done:
  free(times);
  st_tensor_free(&image);
  st_tensor_free(&label);
  st_tensor_free(&weight);
  st_tensor_free(&pred);
  session_close(&s);
  return rc;
}

/* A host copy of a backend tensor, same dtype and shape. */
static int download_copy(st_backend *be, const st_tensor *src,
                         st_tensor *dst) {
  int rc = st_tensor_alloc(NULL, dst, src->dtype, src->ndim, src->shape);
  if (!rc)
    rc = st_backend_sync(be);
  if (!rc)
    rc = st_tensor_download(be, src, dst->data, st_tensor_nbytes(dst));
  return rc;
}

/* Labels one frame with a teacher: OUT gets the model's logits as they come
 * out, the student label and the loss weights. */
static int cmd_teacher(const options *o) {
  session s;
  memset(&s, 0, sizeof s);
  st_tensor image = {0}, label = {0}, weight = {0}, logits_host = {0};
  int rc = 0;
  if (!!o->config == !!o->model)
    rc = fail(EXIT_USAGE, "teacher needs exactly one of --config and --model");
  if (!rc)
    rc = need(o->input, "--input");
  if (!rc)
    rc = need(o->out, "--out");
  if (!rc && (rc = st_safetensors_open(o->input, &s.input)))
    rc = fail_status(rc, "--input");
  if (!rc)
    rc = input_tensor(&s, o, "image", ST_U8, 3, &image);
  if (!rc && (image.shape[0] < 1 || image.shape[1] < 1 ||
              image.shape[0] > MAX_FRAME_SIDE ||
              image.shape[1] > MAX_FRAME_SIDE))
    rc = fail(EXIT_USAGE, "%s: image is %lldx%lld, each side must be in "
              "[1, %d]", o->input, (long long)image.shape[0],
              (long long)image.shape[1], MAX_FRAME_SIDE);
  if (!rc)
    rc = backend_open(o, &s.be);
  if (!rc && o->config &&
      (rc = st_teacher_open(s.be, o->config, &s.teacher)))
    rc = fail_status(rc, "--config");
  /* A bare model runs at the image's own size. */
  if (!rc && o->model &&
      (rc = st_teacher_open_bare(s.be, o->model, image.shape[0],
                                 image.shape[1], &s.teacher)))
    rc = fail_status(rc, "--model");
  const int64_t map_shape[2] = {image.shape[0], image.shape[1]};
  if (!rc && ((rc = st_tensor_alloc(NULL, &label, ST_U8, 2, map_shape)) ||
              (rc = st_tensor_alloc(NULL, &weight, ST_F32, 2, map_shape))))
    rc = fail_status(rc, "teacher");
  const st_tensor *logits = NULL;
  if (!rc && ((rc = st_teacher_label(s.teacher, &image, &logits, label.data,
                                     weight.data)) ||
              (rc = download_copy(s.be, logits, &logits_host))))
    rc = fail_status(rc, "teacher");
  if (!rc) {
    const st_named_tensor named[3] = {
        {.name = "logits", .tensor = &logits_host},
        {.name = "label", .tensor = &label},
        {.name = "weight", .tensor = &weight}};
    if ((rc = st_safetensors_write(o->out, named, 3, NULL)))
      rc = fail_status(rc, "--out");
  }
  st_tensor_free(&image);
  st_tensor_free(&label);
  st_tensor_free(&weight);
  st_tensor_free(&logits_host);
  session_close(&s);
  return rc;
}

int main(int argc, char **argv) {
  options o;
  int rc = parse_args(argc, argv, &o);
  if (rc)
    return rc;
  if (!strcmp(o.command, "forward"))
    return cmd_forward(&o);
  if (!strcmp(o.command, "distill"))
    return cmd_distill(&o);
  if (!strcmp(o.command, "bench"))
    return cmd_bench(&o);
  if (!strcmp(o.command, "teacher"))
    return cmd_teacher(&o);
  return fail(EXIT_USAGE,
              "unknown command '%s' (forward, distill, bench, teacher)",
              o.command);
}
