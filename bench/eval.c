/* shadowtutor-eval: the accuracy half of bench/eval.sh.
 *
 *   shadowtutor-eval label --teacher TEACHER.json --input VIDEO --out FILE
 *       [--size WxH] [--max-frames N] [--backend cpu|cuda|auto]
 *       [--threads N]
 *   shadowtutor-eval score --labels FILE --masks DIR [--csv FILE]
 *       [--json FILE]
 *   shadowtutor-eval pretrain --student STUDENT.json --teacher TEACHER.json
 *       --input VIDEO [--input VIDEO ...] --out W.safetensors
 *       [--size WxH] [--max-frames N] [--epochs E] [--lr X] [--seed S]
 *       [--backend ...] [--threads N]
 *
 * `label` decodes the video exactly as the client does (client/video_in:
 * the same scaling to the same size) and labels EVERY frame with the
 * teacher, in order, carrying a recurrent teacher's state from frame to
 * frame as a server session does. The label maps go into one file:
 *
 *   "STLABELS" | u32 width | u32 height | u32 classes | u32 0 |
 *   u64 frames | frames * width * height class indices (u8, row-major)
 *
 * (little-endian; `frames` is written last, so a cut file says 0).
 *
 * `score` reads the client's class maps (`--masks DIR`: frame_%08d.png,
 * 8-bit paletted or grey, pixel value = class) and scores frame i against
 * label map i with the reference's miou(): mean IoU over the classes whose
 * union is non-empty, 1.0 when none is. It prints a JSON summary on stdout
 * (and into --json), and one `frame,miou` line per frame into --csv. A
 * frame without a map is counted as missing (scored over the frames that
 * have one); a map of the wrong size or with a class >= classes is an
 * error.
 *
 * `pretrain` makes a base student, as the paper starts from one: the
 * teacher labels every frame of the input videos (which should not be the
 * videos evaluated), then the whole student (every layer) is trained on
 * them with Adam for E epochs, one frame per step in a seeded random order,
 * each frame flipped left-right with probability 1/2. The weights go to a
 * safetensors file the server (`student.weights`) and the client
 * (`--weights`) load; with them the server skips its bootstrap.
 *
 * Errors print one line on stderr; exit 2 for usage, 1 for the rest. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavutil/error.h>
#include <libavutil/log.h>
#include <libavutil/pixfmt.h>

#include "base/error.h"
#include "base/file.h"
#include "gpu/backend.h"
#include "models/config.h"
#include "models/student.h"
#include "models/teacher.h"
#include "video_in.h"

enum { EXIT_USAGE = 2, MAX_SIDE = 8192, MAX_CLASSES = 256 };
enum { HEADER_BYTES = 32, MASK_PATH_BYTES = 4096 };
/* A class map PNG is at most this large (an 8192^2 map stored). */
#define MAX_MASK_FILE_BYTES ((size_t)MAX_SIDE * MAX_SIDE + (1u << 20))
/* Frames waiting between the decoder and the teacher. */
#define LABEL_QUEUE_FRAMES 4
/* How long `label` waits for a frame before it calls the input dead. */
#define FRAME_WAIT_MS 60000
static const char MAGIC[8] = {'S', 'T', 'L', 'A', 'B', 'E', 'L', 'S'};

static int fail(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("shadowtutor-eval: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return code;
}

/* A library failure: its name and detail line. */
static int fail_status(int rc, const char *what) {
  const char *d = st_error_detail();
  return fail(1, "%s: %s%s%s", what, st_strerror(rc), d && *d ? ": " : "",
              d ? d : "");
}

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}
static uint64_t get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static void header_fill(uint8_t *h, uint32_t w, uint32_t hgt, uint32_t classes,
                        uint64_t frames) {
  memcpy(h, MAGIC, sizeof MAGIC);
  put_u32(h + 8, w);
  put_u32(h + 12, hgt);
  put_u32(h + 16, classes);
  put_u32(h + 20, 0);
  put_u64(h + 24, frames);
}

/* ---- label ---------------------------------------------------------------- */

enum { MAX_INPUTS = 16, DEFAULT_EPOCHS = 4 };
#define DEFAULT_PRETRAIN_LR 0.001

typedef struct options {
  const char *teacher, *input, *out, *backend, *labels, *masks, *csv, *json;
  const char *student;
  const char *inputs[MAX_INPUTS];
  int input_count;
  int width, height, threads, epochs;
  int64_t max_frames;
  double lr;
  uint64_t seed;
} options;

static int parse_size(const char *s, int *w, int *h) {
  char *end;
  long a = strtol(s, &end, 10);
  if (*end != 'x')
    return -1;
  long b = strtol(end + 1, &end, 10);
  if (*end || a < 1 || b < 1 || a > MAX_SIDE || b > MAX_SIDE)
    return -1;
  *w = (int)a;
  *h = (int)b;
  return 0;
}

/* What happens to each labelled frame. */
typedef int (*frame_fn)(void *ctx, const uint8_t *rgb, const uint8_t *label,
                        const float *weight, const st_video_info *info);

/* Decodes `path` exactly as the client does (client/video_in, the same
 * scaling to the same size) and labels every frame in order with the
 * teacher, carrying a recurrent teacher's state from frame to frame as a
 * server session does; hands each frame to fn. *info: the stream's.
 * 0, or 1 with a line on stderr. */
static int label_each_frame(const options *o, const char *path,
                            st_teacher *t, frame_fn fn, void *ctx,
                            st_video_info *info) {
  st_teacher_state *state = NULL;
  st_video_in *in = NULL;
  uint8_t *label = NULL;
  float *weight = NULL;
  st_video_in_options vo = {.input = path,
                            .rtsp_transport = "tcp",
                            .width = o->width,
                            .height = o->height,
                            .loops = 1,
                            .max_frames = o->max_frames,
                            .decode_threads = 1,
                            .queue_frames = LABEL_QUEUE_FRAMES};
  int rc, code = 1;
  if ((rc = st_teacher_state_new(t, &state)) ||
      (rc = st_video_in_open(&vo, &in))) {
    code = fail_status(rc, path);
    goto done;
  }
  st_video_in_get_info(in, info);
  const size_t px = (size_t)info->width * (size_t)info->height;
  label = malloc(px);
  weight = malloc(px * sizeof *weight);
  if (!label || !weight) {
    code = fail(1, "%s: out of memory", path);
    goto done;
  }
  if ((rc = st_video_in_start(in))) {
    code = fail_status(rc, path);
    goto done;
  }
  for (;;) {
    st_video_frame *fr = NULL;
    if ((rc = st_video_in_next(in, FRAME_WAIT_MS, &fr))) {
      code = fail_status(rc, path);
      goto done;
    }
    if (!fr)
      break;
    const int64_t shape[3] = {info->height, info->width, 3};
    st_tensor image = st_tensor_view(fr->rgb, ST_U8, 3, shape);
    rc = st_teacher_label_session(t, state, &image, NULL, label, weight);
    if (rc) {
      st_video_in_release(in, fr);
      code = fail_status(rc, "teacher");
      goto done;
    }
    rc = fn(ctx, fr->rgb, label, weight, info);
    st_video_in_release(in, fr);
    if (rc)
      goto done;
  }
  code = 0;
done:
  free(label);
  free(weight);
  st_video_in_free(in);
  st_teacher_state_free(state);
  return code;
}

typedef struct label_sink {
  FILE *f;
  const char *path;
  uint64_t frames;
} label_sink;

static int write_label(void *ctx, const uint8_t *rgb, const uint8_t *label,
                       const float *weight, const st_video_info *info) {
  (void)rgb;
  (void)weight;
  label_sink *k = ctx;
  const size_t px = (size_t)info->width * (size_t)info->height;
  if (fwrite(label, 1, px, k->f) != px)
    return fail(1, "%s: write failed", k->path);
  k->frames++;
  return 0;
}

static int cmd_label(const options *o) {
  if (!o->teacher || !o->input || !o->out)
    return fail(EXIT_USAGE, "label needs --teacher, --input and --out");
  st_backend *be = NULL;
  st_teacher *teacher = NULL;
  label_sink sink = {.path = o->out};
  int rc, code = 1;
  st_backend_options bo = {.threads = o->threads};
  if (st_backend_kind_from_name(o->backend, &bo.kind))
    return fail(EXIT_USAGE, "--backend: %s", o->backend);
  if ((rc = st_backend_new(&bo, &be)) ||
      (rc = st_teacher_open(be, o->teacher, &teacher))) {
    code = fail_status(rc, "label");
    goto done;
  }
  /* The header's counts are written last, so a cut file says 0 frames. */
  uint8_t header[HEADER_BYTES] = {0};
  if (!(sink.f = fopen(o->out, "wb")) ||
      fwrite(header, 1, sizeof header, sink.f) != sizeof header) {
    code = fail(1, "%s: %s", o->out, strerror(errno));
    goto done;
  }
  st_video_info info;
  if (label_each_frame(o, o->input, teacher, write_label, &sink, &info))
    goto done;
  const int classes = st_teacher_get_config(teacher)->student_classes;
  header_fill(header, (uint32_t)info.width, (uint32_t)info.height,
              (uint32_t)classes, sink.frames);
  if (fseek(sink.f, 0, SEEK_SET) ||
      fwrite(header, 1, sizeof header, sink.f) != sizeof header) {
    code = fail(1, "%s: write failed", o->out);
    goto done;
  }
  FILE *f = sink.f;
  sink.f = NULL;
  if (fclose(f)) {
    code = fail(1, "%s: %s", o->out, strerror(errno));
    goto done;
  }
  printf("{\"frames\":%" PRIu64 ",\"width\":%d,\"height\":%d,"
         "\"classes\":%d}\n",
         sink.frames, info.width, info.height, classes);
  code = 0;
done:
  if (sink.f)
    fclose(sink.f);
  st_teacher_free(teacher);
  st_backend_free(be);
  return code;
}

/* ---- score ---------------------------------------------------------------- */

/* The PNG decoder's reusable frame and packet. A decoder context lives for
 * one file only: FFmpeg 5.1's png decoder, reused, filters the first rows
 * of an image against the previous image's (measured: class indices of
 * consecutive maps summed up). */
typedef struct png_reader {
  const AVCodec *codec;
  AVFrame *frame;
  AVPacket *pkt;
} png_reader;

static void png_close(png_reader *r) {
  av_frame_free(&r->frame);
  av_packet_free(&r->pkt);
}

static int png_open(png_reader *r) {
  memset(r, 0, sizeof *r);
  if (!(r->codec = avcodec_find_decoder(AV_CODEC_ID_PNG)))
    return fail(1, "this libavcodec has no png decoder");
  r->frame = av_frame_alloc();
  r->pkt = av_packet_alloc();
  if (!r->frame || !r->pkt) {
    png_close(r);
    return fail(1, "score: out of memory");
  }
  return 0;
}

/* Decodes one class map into `out` (w*h bytes). 0, or 1 with a line on
 * stderr. */
static int png_read(png_reader *r, const char *path, int w, int h,
                    uint8_t *out) {
  uint8_t *buf = NULL;
  size_t len = 0;
  int rc = st_read_file(path, MAX_MASK_FILE_BYTES, ST_ERANGE, &buf, &len);
  if (rc)
    return fail_status(rc, path);
  AVCodecContext *ctx = avcodec_alloc_context3(r->codec);
  int ret = ctx ? avcodec_open2(ctx, r->codec, NULL) : AVERROR(ENOMEM);
  /* libavcodec wants its padding after the data. */
  if (ret >= 0 && (ret = av_new_packet(r->pkt, (int)len)) >= 0) {
    memcpy(r->pkt->data, buf, len);
    ret = avcodec_send_packet(ctx, r->pkt);
  }
  free(buf);
  av_packet_unref(r->pkt);
  if (ret >= 0)
    ret = avcodec_receive_frame(ctx, r->frame);
  avcodec_free_context(&ctx);
  if (ret < 0) {
    char msg[AV_ERROR_MAX_STRING_SIZE];
    av_strerror(ret, msg, sizeof msg);
    return fail(1, "%s: not a decodable PNG (%s)", path, msg);
  }
  int code = 0;
  if (r->frame->width != w || r->frame->height != h)
    code = fail(1, "%s: %dx%d, the labels are %dx%d", path, r->frame->width,
                r->frame->height, w, h);
  else if (r->frame->format != AV_PIX_FMT_PAL8 &&
           r->frame->format != AV_PIX_FMT_GRAY8)
    code = fail(1, "%s: not an 8-bit paletted or grey PNG", path);
  else
    for (int y = 0; y < h; y++)
      memcpy(out + (size_t)y * (size_t)w,
             r->frame->data[0] + (size_t)y * (size_t)r->frame->linesize[0],
             (size_t)w);
  av_frame_unref(r->frame);
  return code;
}

/* The reference's miou() for one frame, with the confusion counts kept in
 * `counts` (classes^2, zeroed here). -1 when a class is out of range. */
static double frame_miou(const uint8_t *pred, const uint8_t *label, size_t px,
                         int classes, int64_t *counts) {
  memset(counts, 0, sizeof *counts * (size_t)classes * (size_t)classes);
  for (size_t i = 0; i < px; i++) {
    if (pred[i] >= classes || label[i] >= classes)
      return -1.0;
    counts[label[i] * classes + pred[i]]++;
  }
  return st_miou_from_counts(counts, classes);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int cmd_score(const options *o) {
  if (!o->labels || !o->masks)
    return fail(EXIT_USAGE, "score needs --labels and --masks");
  FILE *lf = NULL, *csv = NULL;
  uint8_t *label = NULL, *pred = NULL;
  int64_t *counts = NULL;
  double *scores = NULL;
  png_reader png = {0};
  int code = 1;
  uint8_t h[HEADER_BYTES];
  if (!(lf = fopen(o->labels, "rb")))
    return fail(1, "%s: %s", o->labels, strerror(errno));
  if (fread(h, 1, sizeof h, lf) != sizeof h || memcmp(h, MAGIC, sizeof MAGIC)) {
    fclose(lf);
    return fail(1, "%s: not a label file", o->labels);
  }
  const uint32_t w = get_u32(h + 8), hgt = get_u32(h + 12),
                 classes = get_u32(h + 16);
  const uint64_t frames = get_u64(h + 24);
  if (w < 1 || hgt < 1 || w > MAX_SIDE || hgt > MAX_SIDE || classes < 1 ||
      classes > MAX_CLASSES || frames > (uint64_t)INT32_MAX) {
    fclose(lf);
    return fail(1, "%s: bad header (%ux%u, %u classes, %" PRIu64 " frames)",
                o->labels, w, hgt, classes, frames);
  }
  const size_t px = (size_t)w * hgt;
  label = malloc(px);
  pred = malloc(px);
  counts = malloc(sizeof *counts * classes * classes);
  scores = malloc(sizeof *scores * (frames ? frames : 1));
  if (!label || !pred || !counts || !scores) {
    code = fail(1, "score: out of memory");
    goto done;
  }
  if (o->csv && !(csv = fopen(o->csv, "w"))) {
    code = fail(1, "%s: %s", o->csv, strerror(errno));
    goto done;
  }
  if (csv)
    fputs("frame,miou\n", csv);
  if (png_open(&png))
    goto done;
  uint64_t scored = 0, missing = 0;
  double sum = 0.0;
  for (uint64_t i = 0; i < frames; i++) {
    if (fread(label, 1, px, lf) != px) {
      code = fail(1, "%s: cut short at frame %" PRIu64, o->labels, i);
      goto done;
    }
    char path[MASK_PATH_BYTES];
    snprintf(path, sizeof path, "%s/frame_%08" PRIu64 ".png", o->masks, i);
    FILE *probe = fopen(path, "rb");
    if (!probe) {
      missing++;
      continue;
    }
    fclose(probe);
    if (png_read(&png, path, (int)w, (int)hgt, pred))
      goto done;
    double m = frame_miou(pred, label, px, (int)classes, counts);
    if (m < 0) {
      code = fail(1, "%s: a class >= %u", path, classes);
      goto done;
    }
    scores[scored++] = m;
    sum += m;
    if (csv)
      fprintf(csv, "%" PRIu64 ",%.6f\n", i, m);
  }
  if (!scored) {
    code = fail(1, "%s: no class map for any of the %" PRIu64 " frames",
                o->masks, frames);
    goto done;
  }
  double mean = sum / (double)scored;
  qsort(scores, scored, sizeof *scores, cmp_double);
  char line[512];
  snprintf(line, sizeof line,
           "{\"frames\":%" PRIu64 ",\"scored\":%" PRIu64 ",\"missing\":%" PRIu64
           ",\"width\":%u,\"height\":%u,\"classes\":%u,\"miou_mean\":%.6f,"
           "\"miou_min\":%.6f,\"miou_p10\":%.6f,\"miou_median\":%.6f}\n",
           frames, scored, missing, w, hgt, classes, mean, scores[0],
           scores[scored / 10], scores[scored / 2]);
  fputs(line, stdout);
  if (o->json) {
    FILE *j = fopen(o->json, "w");
    if (!j || fputs(line, j) < 0 || fclose(j)) {
      code = fail(1, "%s: cannot write", o->json);
      goto done;
    }
  }
  code = 0;
done:
  if (csv && fclose(csv) && !code)
    code = fail(1, "%s: write failed", o->csv);
  png_close(&png);
  fclose(lf);
  free(label);
  free(pred);
  free(counts);
  free(scores);
  return code;
}

/* ---- pretrain ------------------------------------------------------------- */

/* One labelled training frame. */
typedef struct example {
  uint8_t *rgb;   /* H*W*3 */
  uint8_t *label; /* H*W */
  float *weight;  /* H*W */
  int width, height;
} example;

/* xorshift64*: a seeded order and flips, the same on every machine. */
static uint64_t rng_next(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}

static void flip_rows(uint8_t *p, int w, int h, size_t elem) {
  uint8_t tmp[16];
  for (int y = 0; y < h; y++) {
    uint8_t *row = p + (size_t)y * (size_t)w * elem;
    for (int a = 0, b = w - 1; a < b; a++, b--) {
      memcpy(tmp, row + (size_t)a * elem, elem);
      memcpy(row + (size_t)a * elem, row + (size_t)b * elem, elem);
      memcpy(row + (size_t)b * elem, tmp, elem);
    }
  }
}

static void flip_example(example *e) {
  flip_rows(e->rgb, e->width, e->height, 3);
  flip_rows(e->label, e->width, e->height, 1);
  flip_rows((uint8_t *)e->weight, e->width, e->height, sizeof(float));
}

/* The training set: every labelled frame, copied. */
typedef struct example_set {
  example *ex;
  size_t count, cap;
} example_set;

static int keep_example(void *ctx, const uint8_t *rgb, const uint8_t *label,
                        const float *weight, const st_video_info *info) {
  example_set *set = ctx;
  if (set->count == set->cap) {
    size_t ncap = set->cap ? 2 * set->cap : 64;
    example *p = realloc(set->ex, ncap * sizeof *p);
    if (!p)
      return fail(1, "pretrain: out of memory");
    set->ex = p;
    set->cap = ncap;
  }
  const size_t px = (size_t)info->width * (size_t)info->height;
  example *e = &set->ex[set->count++]; /* freed by the caller, complete or
                                           not */
  *e = (example){.rgb = malloc(px * 3), .label = malloc(px),
                 .weight = malloc(px * sizeof(float)),
                 .width = info->width, .height = info->height};
  if (!e->rgb || !e->label || !e->weight)
    return fail(1, "pretrain: out of memory");
  memcpy(e->rgb, rgb, px * 3);
  memcpy(e->label, label, px);
  memcpy(e->weight, weight, px * sizeof(float));
  return 0;
}

static int cmd_pretrain(const options *o) {
  if (!o->student || !o->teacher || !o->input_count || !o->out)
    return fail(EXIT_USAGE,
                "pretrain needs --student, --teacher, --input and --out");
  st_backend *be = NULL;
  st_teacher *teacher = NULL;
  st_student *student = NULL;
  example_set set = {0};
  size_t *order = NULL;
  int code = 1, rc;
  st_student_config cfg;
  st_backend_options bo = {.threads = o->threads};
  if (st_backend_kind_from_name(o->backend, &bo.kind))
    return fail(EXIT_USAGE, "--backend: %s", o->backend);
  if ((rc = st_student_config_load(o->student, &cfg)))
    return fail_status(rc, o->student);
  cfg.trainable_full = 1;
  cfg.trainable_count = 0;
  cfg.lr = o->lr;
  if ((rc = st_backend_new(&bo, &be)) ||
      (rc = st_teacher_open(be, o->teacher, &teacher)) ||
      (rc = st_student_new_from_config(be, &cfg, &student))) {
    code = fail_status(rc, "pretrain");
    goto done;
  }
  if (st_teacher_get_config(teacher)->student_classes !=
      st_student_num_classes(student)) {
    code = fail(1, "pretrain: the teacher labels %d classes, the student "
                   "has %d",
                st_teacher_get_config(teacher)->student_classes,
                st_student_num_classes(student));
    goto done;
  }
  for (int i = 0; i < o->input_count; i++) {
    st_video_info info;
    if (label_each_frame(o, o->inputs[i], teacher, keep_example, &set, &info))
      goto done;
  }
  example *ex = set.ex;
  const size_t count = set.count;
  if (!count) {
    code = fail(1, "pretrain: the inputs have no frames");
    goto done;
  }
  if (!(order = malloc(count * sizeof *order))) {
    code = fail(1, "pretrain: out of memory");
    goto done;
  }
  for (size_t i = 0; i < count; i++)
    order[i] = i;
  uint64_t rng = o->seed * 2654435761u + 88172645463325252ull;
  for (int epoch = 0; epoch < o->epochs; epoch++) {
    for (size_t i = count - 1; i > 0; i--) {
      size_t j = (size_t)(rng_next(&rng) % (i + 1));
      size_t t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
    double loss_sum = 0.0, miou_sum = 0.0;
    for (size_t k = 0; k < count; k++) {
      example *e = &ex[order[k]];
      int flip = (int)(rng_next(&rng) >> 63);
      if (flip)
        flip_example(e);
      const int64_t shape[3] = {e->height, e->width, 3};
      const int64_t mshape[2] = {e->height, e->width};
      st_tensor image = st_tensor_view(e->rgb, ST_U8, 3, shape);
      st_tensor lab = st_tensor_view(e->label, ST_U8, 2, mshape);
      st_tensor wt = st_tensor_view(e->weight, ST_F32, 2, mshape);
      float loss = 0;
      double miou = 0;
      rc = st_student_set_example(student, &image, &lab, &wt);
      if (!rc)
        rc = st_student_train_step(student, &loss, &miou);
      if (flip)
        flip_example(e);
      if (rc) {
        code = fail_status(rc, "pretrain");
        goto done;
      }
      loss_sum += loss;
      miou_sum += miou;
    }
    fprintf(stderr, "pretrain: epoch %d/%d: %zu frames, mean loss %.4f, "
                    "mean mIoU %.4f\n",
            epoch + 1, o->epochs, count, loss_sum / (double)count,
            miou_sum / (double)count);
  }
  if ((rc = st_student_save(student, o->out))) {
    code = fail_status(rc, o->out);
    goto done;
  }
  printf("{\"frames\":%zu,\"epochs\":%d,\"out\":\"%s\"}\n", count,
         o->epochs, o->out);
  code = 0;
done:
  for (size_t i = 0; i < set.count; i++) {
    free(set.ex[i].rgb);
    free(set.ex[i].label);
    free(set.ex[i].weight);
  }
  free(set.ex);
  free(order);
  st_student_free(student);
  st_teacher_free(teacher);
  st_backend_free(be);
  return code;
}

/* ---- command line --------------------------------------------------------- */

static void usage(FILE *f) {
  fputs("usage:\n"
        "  shadowtutor-eval label --teacher TEACHER.json --input VIDEO --out "
        "LABELS [--size WxH] [--max-frames N] [--backend cpu|cuda|auto] "
        "[--threads N]\n"
        "  shadowtutor-eval score --labels LABELS --masks DIR [--csv FILE] "
        "[--json FILE]\n"
        "  shadowtutor-eval pretrain --student STUDENT.json --teacher "
        "TEACHER.json --input VIDEO [--input VIDEO ...] --out W.safetensors "
        "[--size WxH] [--max-frames N (per video)] [--epochs 4] "
        "[--lr 0.001] [--seed 0] [--backend ...] [--threads N]\n",
        f);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return EXIT_USAGE;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage(stdout);
    return 0;
  }
  /* Failures are reported here, in one line each, not by FFmpeg. */
  av_log_set_level(AV_LOG_QUIET);
  options o = {.backend = "cpu",
               .epochs = DEFAULT_EPOCHS,
               .lr = DEFAULT_PRETRAIN_LR};
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 >= argc)
      return fail(EXIT_USAGE, "%s needs a value", a);
    const char *v = argv[++i];
    char *end = NULL;
    if (!strcmp(a, "--teacher"))
      o.teacher = v;
    else if (!strcmp(a, "--input")) {
      if (o.input_count == MAX_INPUTS)
        return fail(EXIT_USAGE, "at most %d --input", MAX_INPUTS);
      o.input = o.inputs[o.input_count++] = v;
    } else if (!strcmp(a, "--student"))
      o.student = v;
    else if (!strcmp(a, "--out"))
      o.out = v;
    else if (!strcmp(a, "--backend"))
      o.backend = v;
    else if (!strcmp(a, "--labels"))
      o.labels = v;
    else if (!strcmp(a, "--masks"))
      o.masks = v;
    else if (!strcmp(a, "--csv"))
      o.csv = v;
    else if (!strcmp(a, "--json"))
      o.json = v;
    else if (!strcmp(a, "--size")) {
      if (parse_size(v, &o.width, &o.height))
        return fail(EXIT_USAGE, "--size: expected WxH, got '%s'", v);
    } else if (!strcmp(a, "--max-frames")) {
      o.max_frames = strtoll(v, &end, 10);
      if (*end || o.max_frames < 0)
        return fail(EXIT_USAGE, "--max-frames: '%s'", v);
    } else if (!strcmp(a, "--epochs")) {
      long e = strtol(v, &end, 10);
      if (*end || e < 1 || e > 10000)
        return fail(EXIT_USAGE, "--epochs: '%s'", v);
      o.epochs = (int)e;
    } else if (!strcmp(a, "--lr")) {
      o.lr = strtod(v, &end);
      if (*end || !(o.lr > 0.0) || o.lr > 1.0)
        return fail(EXIT_USAGE, "--lr: '%s'", v);
    } else if (!strcmp(a, "--seed")) {
      o.seed = strtoull(v, &end, 10);
      if (*end)
        return fail(EXIT_USAGE, "--seed: '%s'", v);
    } else if (!strcmp(a, "--threads")) {
      long t = strtol(v, &end, 10);
      if (*end || t < 0 || t > 1024)
        return fail(EXIT_USAGE, "--threads: '%s'", v);
      o.threads = (int)t;
    } else
      return fail(EXIT_USAGE, "unknown option %s", a);
  }
  if (!strcmp(argv[1], "label"))
    return cmd_label(&o);
  if (!strcmp(argv[1], "score"))
    return cmd_score(&o);
  if (!strcmp(argv[1], "pretrain"))
    return cmd_pretrain(&o);
  usage(stderr);
  return EXIT_USAGE;
}
