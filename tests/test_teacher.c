/* The teacher: its config (config/teacher-small.json read to the value,
 * every bad key and value refused with its message), the labelling chain on
 * the built-in small teacher against PyTorch's logits
 * (teacher_small_ref.safetensors), the resize path for frames of another
 * size, bare-model mode, and the `shadowtutor-model teacher` command end to
 * end. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "testutil.h"
#include "toolrun.h"

#include "models/onnx_exec.h"
#include "models/onnx_graph.h"
#include "models/teacher.h"

#ifndef ST_MODEL_TOOL
#error "ST_MODEL_TOOL must name the shadowtutor-model binary"
#endif

/* The reference grid of teacher_small_ref.safetensors (gen_teachers.py). */
enum { GRID_START = 8, GRID_STEP = 16 };
/* The built-in teacher's size and classes (config/teacher-small.json). */
enum { SMALL_H = 360, SMALL_W = 640, SMALL_CLASSES = 21, STUDENT_CLASSES = 9 };
/* The bare-mode fixture model: input [1,3,37,59], 6 output classes. */
#define BARE_ONNX "teacher_mnv3_lraspp_37x59_op11.onnx"
enum { BARE_H = 37, BARE_W = 59, BARE_CLASSES = 6 };
/* Logits agree with PyTorch to this relative tolerance (of the largest). */
#define LOGITS_RTOL 1e-4

static const char *repo_path(const char *rel) {
  static char buf[4][1024];
  static int next;
  char *p = buf[next++ % 4];
  snprintf(p, sizeof buf[0], "%s/../../%s", st_test_fixture_dir(), rel);
  return p;
}

#define SMALL_JSON repo_path("config/teacher-small.json")

/* ---- config ----------------------------------------------------------------- */

static void test_small_config_values(void **state) {
  (void)state;
  st_teacher_config *c = malloc(sizeof *c);
  ST_ASSERT_OK(st_teacher_config_load(SMALL_JSON, c));
  /* The model path is resolved against the config's folder. */
  char want_model[1100];
  snprintf(want_model, sizeof want_model, "%s/../../config/teacher-small.onnx",
           st_test_fixture_dir());
  assert_string_equal(c->model_path, want_model);
  assert_int_equal(c->width, 640);
  assert_int_equal(c->height, 360);
  assert_int_equal(c->channel_order[0], 0);
  assert_int_equal(c->channel_order[1], 1);
  assert_int_equal(c->channel_order[2], 2);
  assert_true(c->scale == 0.00392156862745098);
  const float mean[3] = {0.485f, 0.456f, 0.406f};
  const float std_[3] = {0.229f, 0.224f, 0.225f};
  for (int k = 0; k < 3; k++) {
    assert_true(c->mean[k] == mean[k]);
    assert_true(c->std[k] == std_[k]);
  }
  assert_string_equal(c->output, "out");
  assert_int_equal(c->classes, SMALL_CLASSES);
  const char *names[STUDENT_CLASSES] = {"background", "person", "bicycle",
                                        "auto",       "bird",   "dog",
                                        "horse",      "elephant", "giraffe"};
  assert_int_equal(c->student_classes, STUDENT_CLASSES);
  for (int i = 0; i < STUDENT_CLASSES; i++)
    assert_string_equal(c->student_class_names[i], names[i]);
  /* VOC -> student, written out: 2 bicycle, 3 bird, 6 bus and 7 car ->
   * auto, 12 dog, 13 horse, 15 person; everything else background. */
  const st_class_map *m = &c->class_map;
  assert_int_equal(m->teacher_classes, SMALL_CLASSES);
  assert_int_equal(m->student_classes, STUDENT_CLASSES);
  assert_int_equal(m->background, 0);
  const int want[SMALL_CLASSES] = {0, 0, 2, 4, 0, 0, 3, 3, 0, 0, 0,
                                   0, 5, 6, 0, 1, 0, 0, 0, 0, 0};
  for (int t = 0; t < SMALL_CLASSES; t++)
    assert_int_equal(m->to_student[t], want[t]);
  free(c);
}

/* A valid config to mutate; classes 4 keeps the class-map cases short. */
static const char base_json[] =
    "{\"model\": \"m.onnx\","
    " \"input\": {\"width\": 64, \"height\": 32, \"channel_order\": \"bgr\","
    "  \"scale\": 1, \"mean\": [103.53, 116.28, 123.675], \"std\": [1, 2, 4]},"
    " \"output\": \"logits\", \"classes\": 4,"
    " \"class_map\": {\"1\": \"person\", \"3\": \"auto\"},"
    " \"student_classes\": [\"person\", \"background\", \"auto\"]}";

static void test_config_parse_fields(void **state) {
  (void)state;
  st_teacher_config *c = malloc(sizeof *c);
  ST_ASSERT_OK(st_teacher_config_parse(base_json, "t.json", "/cfg/dir", c));
  assert_string_equal(c->model_path, "/cfg/dir/m.onnx");
  assert_int_equal(c->width, 64);
  assert_int_equal(c->height, 32);
  assert_int_equal(c->channel_order[0], 2);
  assert_int_equal(c->channel_order[1], 1);
  assert_int_equal(c->channel_order[2], 0);
  assert_true(c->scale == 1.0);
  assert_true(c->mean[0] == 103.53f && c->mean[1] == 116.28f &&
              c->mean[2] == 123.675f);
  assert_true(c->std[0] == 1.0f && c->std[1] == 2.0f && c->std[2] == 4.0f);
  assert_string_equal(c->output, "logits");
  assert_int_equal(c->classes, 4);
  assert_int_equal(c->student_classes, 3);
  /* Background is wherever the list puts it, here label 1. */
  assert_int_equal(c->class_map.background, 1);
  assert_int_equal(c->class_map.to_student[0], 1);
  assert_int_equal(c->class_map.to_student[1], 0);
  assert_int_equal(c->class_map.to_student[2], 1);
  assert_int_equal(c->class_map.to_student[3], 2);
  /* No base folder: the path stays as written; absolute paths always do. */
  ST_ASSERT_OK(st_teacher_config_parse(base_json, "t.json", NULL, c));
  assert_string_equal(c->model_path, "m.onnx");
  json_error_t err;
  json_t *root = json_loads(base_json, 0, &err);
  json_object_set_new(root, "model", json_string("/abs/t.onnx"));
  char *text = json_dumps(root, 0);
  ST_ASSERT_OK(st_teacher_config_parse(text, "t.json", "/cfg/dir", c));
  assert_string_equal(c->model_path, "/abs/t.onnx");
  free(text);
  json_decref(root);
  free(c);
}

typedef struct bad_case {
  const char *path;  /* key path to replace ("input.std"); "" = the root */
  const char *value; /* JSON text of the new value; NULL deletes the key */
  int rc;            /* expected status */
  const char *msg;   /* expected detail line */
} bad_case;

static const bad_case bad_cases[] = {
    {"", "[]", ST_EFORMAT, "t.json: top level must be an object"},
    {"foo", "1", ST_EFORMAT, "t.json: unknown key foo"},
    {"input.order", "\"rgb\"", ST_EFORMAT, "t.json: unknown key input.order"},
    {"output", NULL, ST_EFORMAT, "t.json: missing key output"},
    {"class_map", NULL, ST_EFORMAT, "t.json: missing key class_map"},
    {"input.scale", NULL, ST_EFORMAT, "t.json: missing key input.scale"},
    {"model", "3", ST_EFORMAT, "t.json: model must be a string"},
    {"model", "\"\"", ST_EINVAL, "t.json: model must not be empty"},
    {"input", "[]", ST_EFORMAT, "t.json: input must be an object"},
    {"input.width", "0", ST_EINVAL, "t.json: input.width must be in [1, 16384]"},
    {"input.width", "16385", ST_EINVAL,
     "t.json: input.width must be in [1, 16384]"},
    {"input.height", "1.5", ST_EFORMAT,
     "t.json: input.height must be an integer"},
    {"input.channel_order", "\"rbg\"", ST_EINVAL,
     "t.json: input.channel_order must be \"rgb\" or \"bgr\""},
    {"input.channel_order", "0", ST_EFORMAT,
     "t.json: input.channel_order must be a string"},
    {"input.scale", "0", ST_EINVAL,
     "t.json: input.scale must be a positive number"},
    {"input.scale", "-0.5", ST_EINVAL,
     "t.json: input.scale must be a positive number"},
    {"input.scale", "\"1/255\"", ST_EFORMAT,
     "t.json: input.scale must be a number"},
    {"input.mean", "[1, 2]", ST_EFORMAT,
     "t.json: input.mean must be an array of 3 numbers"},
    {"input.mean", "[1, \"a\", 3]", ST_EFORMAT,
     "t.json: input.mean[1] must be a number"},
    {"input.std", "[1, 0, 1]", ST_EINVAL, "t.json: input.std[1] must be non-zero"},
    {"input.std", "[1e300, 1, 1]", ST_EINVAL,
     "t.json: input.std[0] is too large for a float"},
    {"output", "5", ST_EFORMAT, "t.json: output must be a string"},
    {"classes", "0", ST_EINVAL, "t.json: classes must be in [1, 256]"},
    {"classes", "257", ST_EINVAL, "t.json: classes must be in [1, 256]"},
    {"classes", "\"4\"", ST_EFORMAT, "t.json: classes must be an integer"},
    {"class_map", "[]", ST_EFORMAT, "t.json: class_map must be an object"},
    {"class_map", "{\"4\": \"person\"}", ST_EINVAL,
     "t.json: class_map.4: teacher class must be below classes (4)"},
    {"class_map", "{\"01\": \"person\"}", ST_EINVAL,
     "t.json: class_map key '01' must be a teacher class index written in "
     "decimal"},
    {"class_map", "{\"-1\": \"person\"}", ST_EINVAL,
     "t.json: class_map key '-1' must be a teacher class index written in "
     "decimal"},
    {"class_map", "{\"2\": \"cat\"}", ST_EINVAL,
     "t.json: class_map.2: 'cat' is not in student_classes"},
    {"class_map", "{\"2\": 1}", ST_EFORMAT,
     "t.json: class_map.2 must be a student class name"},
    {"student_classes", "\"background\"", ST_EFORMAT,
     "t.json: student_classes must be an array of strings"},
    {"student_classes", "[]", ST_EINVAL,
     "t.json: student_classes must have 1 to 256 entries"},
    {"student_classes", "[\"person\", \"auto\"]", ST_EINVAL,
     "t.json: student_classes must contain \"background\""},
    {"student_classes", "[\"background\", \"person\", \"person\"]", ST_EINVAL,
     "t.json: student_classes[2]: 'person' is listed twice"},
    {"student_classes", "[\"background\", 3]", ST_EFORMAT,
     "t.json: student_classes[1] must be a string"},
};

/* base_json with one key path replaced or deleted. */
static char *mutate(const bad_case *bc) {
  json_error_t err;
  json_t *root = json_loads(base_json, 0, &err);
  assert_non_null(root);
  json_t *value = NULL;
  if (bc->value) {
    value = json_loads(bc->value, JSON_DECODE_ANY, &err);
    assert_non_null(value);
  }
  if (!*bc->path) {
    json_decref(root);
    root = value;
  } else {
    char head[64];
    const char *dot = strchr(bc->path, '.');
    json_t *obj = root;
    const char *key = bc->path;
    if (dot) {
      snprintf(head, sizeof head, "%.*s", (int)(dot - bc->path), bc->path);
      obj = json_object_get(root, head);
      key = dot + 1;
    }
    if (value)
      json_object_set_new(obj, key, value);
    else
      assert_int_equal(json_object_del(obj, key), 0);
  }
  char *text = json_dumps(root, JSON_ENCODE_ANY);
  json_decref(root);
  return text;
}

static void test_config_bad_values(void **state) {
  (void)state;
  st_teacher_config *c = malloc(sizeof *c), *untouched = malloc(sizeof *c);
  for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
    const bad_case *bc = &bad_cases[i];
    char *text = mutate(bc);
    memset(c, 0x5a, sizeof *c);
    memcpy(untouched, c, sizeof *c);
    st_error_clear();
    int rc = st_teacher_config_parse(text, "t.json", "/cfg", c);
    if (rc != bc->rc || strcmp(st_error_detail(), bc->msg) != 0)
      fail_msg("%s: got %s '%s', want %s '%s'", text, st_err_name(rc),
               st_error_detail(), st_err_name(bc->rc), bc->msg);
    /* Nothing is written on failure. */
    assert_memory_equal(c, untouched, sizeof *c);
    free(text);
  }
  free(c);
  free(untouched);
}

static void test_config_syntax_and_files(void **state) {
  (void)state;
  st_teacher_config *c = malloc(sizeof *c);
  assert_int_equal(st_teacher_config_parse("{\"model\": ", "t.json", NULL, c),
                   ST_EFORMAT);
  assert_true(strncmp(st_error_detail(), "t.json:1:", 9) == 0);
  /* JSON keys may repeat in the grammar; the config refuses it. */
  assert_int_equal(st_teacher_config_parse("{\"classes\": 2, \"classes\": 3}",
                                           "t.json", NULL, c),
                   ST_EFORMAT);
  assert_int_equal(
      st_teacher_config_load("/nonexistent/teacher.json", c), ST_ENOENT);
  assert_non_null(strstr(st_error_detail(), "/nonexistent/teacher.json"));
  free(c);
}

/* ---- running the teacher ----------------------------------------------------- */

/* Index of the first maximum over channels of logits [C,H,W] at pixel i. */
static int argmax_at(const float *logits, int64_t classes, int64_t plane,
                     int64_t i) {
  int best = 0;
  for (int64_t c = 1; c < classes; c++)
    if (logits[c * plane + i] > logits[best * plane + i])
      best = (int)c;
  return best;
}

/* Compares the model's logits at the reference grid with PyTorch's. */
static void assert_grid_matches(const float *logits, int64_t h, int64_t w) {
  st_safetensors *fx = st_test_fixture_open("teacher_small_ref.safetensors");
  st_tensor grid = st_test_fixture_tensor(fx, "logits_grid");
  assert_int_equal(grid.ndim, 3);
  const int64_t c = grid.shape[0], gr = grid.shape[1], gc = grid.shape[2];
  assert_int_equal(c, SMALL_CLASSES);
  float *got = malloc((size_t)st_tensor_numel(&grid) * sizeof *got);
  const float *want = grid.data;
  double scale = 0.0;
  for (int64_t k = 0; k < c; k++)
    for (int64_t i = 0; i < gr; i++)
      for (int64_t j = 0; j < gc; j++) {
        int64_t y = GRID_START + GRID_STEP * i, x = GRID_START + GRID_STEP * j;
        assert_true(y < h && x < w);
        size_t at = (size_t)((k * gr + i) * gc + j);
        got[at] = logits[(k * h + y) * w + x];
        scale = fmax(scale, fabs(want[at]));
      }
  /* A constant map would make the comparison weak: the reference varies. */
  assert_true(scale > 0.0);
  st_test_assert_close(got, want, (size_t)st_tensor_numel(&grid), LOGITS_RTOL,
                       LOGITS_RTOL * scale, "logits_grid");
  free(got);
  st_tensor_free(&grid);
  st_safetensors_free(fx);
}

/* weight must be st_loss_weights of label with the paper's defaults. */
static void assert_weights_of(const uint8_t *label, const float *weight,
                              int64_t h, int64_t w, int background) {
  float *want = malloc((size_t)(h * w) * sizeof *want);
  st_labels_scratch s;
  st_labels_scratch_init(&s);
  ST_ASSERT_OK(st_loss_weights(label, h, w, background, 5.0f, 0.15, want,
                               &s));
  st_labels_scratch_free(&s);
  int64_t boosted = 0;
  for (int64_t i = 0; i < h * w; i++) {
    if (weight[i] != want[i])
      fail_msg("weight[%lld] = %g, want %g", (long long)i, weight[i], want[i]);
    boosted += weight[i] == 5.0f;
  }
  /* The random teacher labels objects somewhere; otherwise this proves
   * little. */
  assert_true(boosted > 0);
  free(want);
}

/* Labels differ from the expected class only where the two best logits tie
 * within `margin`; at least two student classes appear. */
static void assert_label_is_mapped_argmax(const uint8_t *label,
                                          const float *logits, int64_t c,
                                          int64_t h, int64_t w,
                                          const st_class_map *m) {
  int seen[ST_LABELS_MAX_CLASSES] = {0}, distinct = 0;
  for (int64_t i = 0; i < h * w; i++) {
    int want = m->to_student[argmax_at(logits, c, h * w, i)];
    if (label[i] != want)
      fail_msg("label[%lld] = %d, want %d", (long long)i, label[i], want);
    distinct += !seen[label[i]]++;
  }
  assert_true(distinct >= 2);
}

static st_tensor read_image(void) {
  st_safetensors *fx = st_test_fixture_open("teacher_small_ref.safetensors");
  st_tensor image = st_test_fixture_tensor(fx, "image");
  st_safetensors_free(fx);
  assert_int_equal(image.dtype, ST_U8);
  assert_int_equal(image.ndim, 3);
  assert_int_equal(image.shape[0], SMALL_H);
  assert_int_equal(image.shape[1], SMALL_W);
  return image;
}

static void test_small_teacher_matches_reference(void **state) {
  st_backend *be = st_test_backend(state);
  st_teacher *t = NULL;
  ST_ASSERT_OK(st_teacher_open(be, SMALL_JSON, &t));
  st_tensor image = read_image();
  uint8_t *label = malloc(SMALL_H * SMALL_W);
  float *weight = malloc(SMALL_H * SMALL_W * sizeof *weight);
  const st_tensor *logits = NULL;
  ST_ASSERT_OK(st_teacher_label(t, &image, &logits, label, weight));
  assert_int_equal(logits->dtype, ST_F32);
  assert_int_equal(logits->ndim, 4);
  assert_int_equal(logits->shape[0], 1);
  assert_int_equal(logits->shape[1], SMALL_CLASSES);
  assert_int_equal(logits->shape[2], SMALL_H);
  assert_int_equal(logits->shape[3], SMALL_W);
  st_tensor host = st_test_to_host(be, logits);
  assert_grid_matches(host.data, SMALL_H, SMALL_W);
  /* The output is at the frame size already, so the label is the mapped
   * argmax of the logits themselves. */
  const st_teacher_config *cfg = st_teacher_get_config(t);
  assert_label_is_mapped_argmax(label, host.data, SMALL_CLASSES, SMALL_H,
                                SMALL_W, &cfg->class_map);
  assert_weights_of(label, weight, SMALL_H, SMALL_W, 0);
  st_tensor_free(&host);
  free(label);
  free(weight);
  st_tensor_free(&image);
  st_teacher_free(t);
}

/* A frame twice as tall as the model input, every row doubled: the bilinear
 * resize to 360x640 (align_corners=False, rows at 2o+0.5) averages two equal
 * rows, so the model sees exactly the reference input and its logits must
 * match PyTorch's; the label is the mapped argmax of the logits resized back
 * to 720x640. A second frame of the same size allocates nothing. */
static void test_frame_of_another_size(void **state) {
  st_backend *be = st_test_backend(state);
  st_teacher *t = NULL;
  ST_ASSERT_OK(st_teacher_open(be, SMALL_JSON, &t));
  st_tensor small = read_image();
  const int64_t h = 2 * SMALL_H, w = SMALL_W;
  const int64_t shape[3] = {h, w, 3};
  st_tensor image;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &image, ST_U8, 3, shape));
  const size_t row = (size_t)w * 3;
  for (int64_t y = 0; y < h; y++)
    memcpy((uint8_t *)image.data + y * row,
           (uint8_t *)small.data + (y / 2) * row, row);
  uint8_t *label = malloc((size_t)(h * w));
  float *weight = malloc((size_t)(h * w) * sizeof *weight);
  const st_tensor *logits = NULL;
  ST_ASSERT_OK(st_teacher_label(t, &image, &logits, label, weight));
  assert_int_equal(logits->shape[2], SMALL_H);
  assert_int_equal(logits->shape[3], SMALL_W);
  st_tensor host = st_test_to_host(be, logits);
  const float *lg = host.data;
  assert_grid_matches(lg, SMALL_H, SMALL_W);

  /* Expected label: rows resized 360 -> 720 in double (columns keep their
   * size, so they are copied), argmax, class map. Pixels whose two best
   * classes are closer than float rounding may go either way. */
  const st_teacher_config *cfg = st_teacher_get_config(t);
  const int64_t plane = SMALL_H * SMALL_W;
  int64_t ties = 0;
  double scores[SMALL_CLASSES];
  for (int64_t y = 0; y < h; y++) {
    double src = fmax((y + 0.5) * SMALL_H / (double)h - 0.5, 0.0);
    int64_t y0 = (int64_t)src, y1 = y0 + 1 < SMALL_H ? y0 + 1 : y0;
    double f = src - (double)y0;
    for (int64_t x = 0; x < w; x++) {
      int best = 0, second = -1;
      for (int c = 0; c < SMALL_CLASSES; c++) {
        scores[c] = (1.0 - f) * lg[c * plane + y0 * w + x] +
                    f * lg[c * plane + y1 * w + x];
        if (c > 0 && scores[c] > scores[best]) {
          second = best;
          best = c;
        } else if (c > 0 && (second < 0 || scores[c] > scores[second])) {
          second = c;
        }
      }
      int want = cfg->class_map.to_student[best];
      if (label[y * w + x] != want) {
        if (scores[best] - scores[second] < 1e-5 * fabs(scores[best]) + 1e-6) {
          ties++;
          continue;
        }
        fail_msg("label at (%lld,%lld) = %d, want %d", (long long)y,
                 (long long)x, label[y * w + x], want);
      }
    }
  }
  assert_true(ties < 16);
  assert_weights_of(label, weight, h, w, 0);

  /* Same size again: no new allocation, the same answer. */
  st_backend_stats before, after;
  st_backend_get_stats(be, &before);
  uint8_t *label2 = malloc((size_t)(h * w));
  float *weight2 = malloc((size_t)(h * w) * sizeof *weight2);
  ST_ASSERT_OK(st_teacher_label(t, &image, NULL, label2, weight2));
  st_backend_get_stats(be, &after);
  assert_int_equal(after.alloc_calls, before.alloc_calls);
  assert_memory_equal(label2, label, (size_t)(h * w));
  assert_memory_equal(weight2, weight, (size_t)(h * w) * sizeof *weight);
  free(label2);
  free(weight2);
  st_tensor_free(&host);
  free(label);
  free(weight);
  st_tensor_free(&image);
  st_tensor_free(&small);
  st_teacher_free(t);
}

/* A deterministic pseudo-random image. */
static void fill_image(st_tensor *image, int64_t h, int64_t w, uint32_t seed) {
  const int64_t shape[3] = {h, w, 3};
  ST_ASSERT_OK(st_tensor_alloc(NULL, image, ST_U8, 3, shape));
  uint8_t *px = image->data;
  uint32_t x = seed;
  for (int64_t i = 0; i < h * w * 3; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    px[i] = (uint8_t)(x >> 11);
  }
}

/* Bare mode: pixels / 255 into the model, identity map, last class is the
 * background. The expectation runs the executor directly on that input. */
static void test_bare_model(void **state) {
  st_backend *be = st_test_backend(state);
  const char *path = st_test_fixture_path(BARE_ONNX);
  st_teacher *t = NULL;
  ST_ASSERT_OK(st_teacher_open_bare(be, path, BARE_H, BARE_W, &t));
  const st_teacher_config *cfg = st_teacher_get_config(t);
  assert_int_equal(cfg->classes, BARE_CLASSES);
  assert_int_equal(cfg->student_classes, BARE_CLASSES);
  assert_int_equal(cfg->class_map.background, BARE_CLASSES - 1);
  for (int c = 0; c < BARE_CLASSES; c++)
    assert_int_equal(cfg->class_map.to_student[c], c);
  st_tensor image;
  fill_image(&image, BARE_H, BARE_W, 12345u);
  uint8_t label[BARE_H * BARE_W];
  float weight[BARE_H * BARE_W];
  const st_tensor *logits = NULL;
  ST_ASSERT_OK(st_teacher_label(t, &image, &logits, label, weight));
  st_tensor got = st_test_to_host(be, logits);

  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_onnx_model_load(st_test_fixture_path(BARE_ONNX), &m));
  const int64_t in_shape[4] = {1, 3, BARE_H, BARE_W};
  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new(be, m, in_shape, &plan));
  st_tensor x;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &x, ST_F32, 4, in_shape));
  const uint8_t *px = image.data;
  float *xv = x.data;
  for (int c = 0; c < 3; c++)
    for (int64_t i = 0; i < BARE_H * BARE_W; i++)
      xv[c * BARE_H * BARE_W + i] = (float)px[i * 3 + c] / 255.0f;
  st_tensor xd = st_test_to_backend(be, &x);
  const st_tensor *out = NULL;
  ST_ASSERT_OK(st_onnx_plan_run(plan, &xd, &out));
  st_tensor want = st_test_to_host(be, out);
  assert_int_equal(st_tensor_numel(&got), st_tensor_numel(&want));
  assert_int_equal(got.shape[1], BARE_CLASSES);
  st_test_assert_close(got.data, want.data, (size_t)st_tensor_numel(&want),
                       1e-5, 1e-6, "bare logits");
  assert_label_is_mapped_argmax(label, got.data, BARE_CLASSES, BARE_H, BARE_W,
                                &cfg->class_map);
  float want_w[BARE_H * BARE_W];
  st_labels_scratch s;
  st_labels_scratch_init(&s);
  ST_ASSERT_OK(st_loss_weights(label, BARE_H, BARE_W, BARE_CLASSES - 1, 5.0f,
                               0.15, want_w, &s));
  st_labels_scratch_free(&s);
  assert_memory_equal(weight, want_w, sizeof want_w);
  st_tensor_free(&want);
  st_tensor_free(&xd);
  st_tensor_free(&x);
  st_onnx_plan_free(plan);
  st_onnx_model_free(m);
  st_tensor_free(&got);
  st_tensor_free(&image);
  st_teacher_free(t);
}

/* A config whose class count disagrees with the model's output, and one
 * naming an output the model lacks. */
static void test_config_model_mismatch(void **state) {
  st_backend *be = st_test_backend(state);
  st_teacher *t = NULL;
  char dir[] = "/tmp/st_teacher_cfg_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[128], cmd[160];
  snprintf(path, sizeof path, "%s/t.json", dir);
  const char *onnx = repo_path("config/teacher-small.onnx");
  const struct {
    const char *output;
    int classes;
    int rc;
    const char *needle;
  } cases[] = {
      {"out", 20, ST_ESHAPE, "has 21 channels but the config says classes = 20"},
      {"aux", 21, ST_ENOENT, "the model has no output 'aux'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "{\"model\": \"%s\", \"input\": {\"width\": 640, \"height\": 360,"
            " \"channel_order\": \"rgb\", \"scale\": 1, \"mean\": [0, 0, 0],"
            " \"std\": [1, 1, 1]}, \"output\": \"%s\", \"classes\": %d,"
            " \"class_map\": {}, \"student_classes\": [\"background\"]}",
            onnx, cases[i].output, cases[i].classes);
    fclose(f);
    assert_int_equal(st_teacher_open(be, path, &t), cases[i].rc);
    assert_null(t);
    if (!strstr(st_error_detail(), cases[i].needle))
      fail_msg("detail '%s' lacks '%s'", st_error_detail(), cases[i].needle);
  }
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

/* ---- the tool ------------------------------------------------------------------ */

#define run_tool(r, ...) st_tool_run_args((r), ST_MODEL_TOOL, __VA_ARGS__)
#define work_path st_tool_work_path
#define fixture st_tool_fixture
#define assert_usage_error st_tool_assert_usage_error
typedef st_tool_run run_result;

/* Exit 0 and nothing on stderr. */
static void assert_success(const run_result *r) {
  if (r->exit_code != 0 || r->err[0])
    fail_msg("exit %d: %s", r->exit_code, r->err);
}

static st_tensor read_out(st_safetensors *f, const char *name, st_dtype dt,
                          int ndim) {
  st_tensor t;
  ST_ASSERT_OK(st_safetensors_read(f, name, &t));
  assert_int_equal(t.dtype, dt);
  assert_int_equal(t.ndim, ndim);
  return t;
}

static void test_tool_teacher_config(void **state) {
  (void)state;
  run_result *r = malloc(sizeof *r);
  const char *out = work_path("labels.safetensors");
  run_tool(r, "teacher", "--config", SMALL_JSON, "--input",
           fixture("teacher_small_ref.safetensors"), "--out", out, NULL);
  assert_success(r);
  st_safetensors *f = NULL;
  ST_ASSERT_OK(st_safetensors_open(out, &f));
  assert_int_equal(st_safetensors_count(f), 3);
  st_tensor logits = read_out(f, "logits", ST_F32, 4);
  st_tensor label = read_out(f, "label", ST_U8, 2);
  st_tensor weight = read_out(f, "weight", ST_F32, 2);
  const int64_t want_logits[4] = {1, SMALL_CLASSES, SMALL_H, SMALL_W};
  assert_memory_equal(logits.shape, want_logits, sizeof want_logits);
  assert_int_equal(label.shape[0], SMALL_H);
  assert_int_equal(label.shape[1], SMALL_W);
  assert_true(st_tensor_same_shape(&label, &weight));
  assert_grid_matches(logits.data, SMALL_H, SMALL_W);
  st_teacher_config *cfg = malloc(sizeof *cfg);
  ST_ASSERT_OK(st_teacher_config_load(SMALL_JSON, cfg));
  assert_label_is_mapped_argmax(label.data, logits.data, SMALL_CLASSES,
                                SMALL_H, SMALL_W, &cfg->class_map);
  assert_weights_of(label.data, weight.data, SMALL_H, SMALL_W, 0);
  free(cfg);
  st_tensor_free(&logits);
  st_tensor_free(&label);
  st_tensor_free(&weight);
  st_safetensors_free(f);
  free(r);
}

/* Writes IN.safetensors holding one tensor named `name`. */
static void write_input(const char *path, const char *name,
                        const st_tensor *t) {
  st_named_tensor named = {.name = name, .tensor = t};
  ST_ASSERT_OK(st_safetensors_write(path, &named, 1, NULL));
}

static void test_tool_teacher_bare(void **state) {
  (void)state;
  run_result *r = malloc(sizeof *r);
  st_tensor image;
  fill_image(&image, BARE_H, BARE_W, 777u);
  const char *in = work_path("bare_in.safetensors");
  const char *out = work_path("bare_out.safetensors");
  write_input(in, "image", &image);
  run_tool(r, "teacher", "--model", fixture(BARE_ONNX), "--input", in,
           "--out", out, NULL);
  assert_success(r);
  st_safetensors *f = NULL;
  ST_ASSERT_OK(st_safetensors_open(out, &f));
  st_tensor logits = read_out(f, "logits", ST_F32, 4);
  st_tensor label = read_out(f, "label", ST_U8, 2);
  st_tensor weight = read_out(f, "weight", ST_F32, 2);
  assert_int_equal(logits.shape[1], BARE_CLASSES);
  assert_int_equal(logits.shape[2], BARE_H);
  assert_int_equal(logits.shape[3], BARE_W);
  st_class_map id;
  ST_ASSERT_OK(st_class_map_identity(&id, BARE_CLASSES, BARE_CLASSES - 1));
  assert_label_is_mapped_argmax(label.data, logits.data, BARE_CLASSES, BARE_H,
                                BARE_W, &id);
  float want_w[BARE_H * BARE_W];
  st_labels_scratch s;
  st_labels_scratch_init(&s);
  ST_ASSERT_OK(st_loss_weights(label.data, BARE_H, BARE_W, BARE_CLASSES - 1,
                               5.0f, 0.15, want_w, &s));
  st_labels_scratch_free(&s);
  assert_memory_equal(weight.data, want_w, sizeof want_w);
  st_tensor_free(&logits);
  st_tensor_free(&label);
  st_tensor_free(&weight);
  st_safetensors_free(f);
  st_tensor_free(&image);
  free(r);
}

static void test_tool_teacher_refusals(void **state) {
  (void)state;
  run_result *r = malloc(sizeof *r);
  const char *img = fixture("teacher_small_ref.safetensors");
  const char *out = work_path("never.safetensors");
  const char *cfg = SMALL_JSON;

  run_tool(r, "teacher", "--input", img, "--out", out, NULL);
  assert_usage_error(r, "exactly one of --config and --model");
  run_tool(r, "teacher", "--config", cfg, "--model", fixture(BARE_ONNX),
           "--input", img, "--out", out, NULL);
  assert_usage_error(r, "exactly one of --config and --model");
  run_tool(r, "teacher", "--config", cfg, "--out", out, NULL);
  assert_usage_error(r, "--input is required");
  run_tool(r, "teacher", "--config", cfg, "--input", img, NULL);
  assert_usage_error(r, "--out is required");
  run_tool(r, "teacher", "--config", cfg, "--input", img, "--out", out,
           "--bogus", "1", NULL);
  assert_usage_error(r, "unknown flag '--bogus'");
  run_tool(r, "teacher", "--config", cfg, "--input",
           work_path("missing.safetensors"), "--out", out, NULL);
  assert_usage_error(r, "missing.safetensors");
  /* An input file without an image. */
  run_tool(r, "teacher", "--config", cfg, "--input",
           fixture("teacher_mnv3_lraspp_37x59_op11.safetensors"), "--out", out,
           NULL);
  assert_usage_error(r, "image");
  /* An image of the wrong dtype. */
  st_tensor fimg;
  const int64_t shape[3] = {4, 5, 3};
  ST_ASSERT_OK(st_tensor_alloc(NULL, &fimg, ST_F32, 3, shape));
  const char *bad_in = work_path("f32_image.safetensors");
  write_input(bad_in, "image", &fimg);
  st_tensor_free(&fimg);
  run_tool(r, "teacher", "--config", cfg, "--input", bad_in, "--out", out,
           NULL);
  assert_usage_error(r, "expected U8 [H,W,3]");
  /* Configs: missing, and one with an unknown key. */
  run_tool(r, "teacher", "--config", work_path("nope.json"), "--input", img,
           "--out", out, NULL);
  assert_usage_error(r, "nope.json");
  const char *bad_cfg = work_path("bad.json");
  FILE *f = fopen(bad_cfg, "w");
  assert_non_null(f);
  fputs("{\"modle\": \"x.onnx\"}", f);
  fclose(f);
  run_tool(r, "teacher", "--config", bad_cfg, "--input", img, "--out", out,
           NULL);
  assert_usage_error(r, "bad.json: unknown key modle");
  /* Models it cannot run: external data, and not ONNX at all. */
  run_tool(r, "teacher", "--model", fixture("onnx_bad_external.onnx"),
           "--input", img, "--out", out, NULL);
  assert_usage_error(r, "--model");
  run_tool(r, "teacher", "--model", cfg, "--input", img, "--out", out, NULL);
  assert_usage_error(r, "--model");
  /* Nothing was written by any of these. */
  assert_int_equal(access(out, F_OK), -1);
  free(r);
}

static int tool_setup(void **state) {
  (void)state;
  return st_tool_workdir_make("teacher");
}

static int tool_teardown(void **state) {
  (void)state;
  return st_tool_workdir_remove();
}

int main(void) {
  const struct CMUnitTest config_tests[] = {
      cmocka_unit_test(test_small_config_values),
      cmocka_unit_test(test_config_parse_fields),
      cmocka_unit_test(test_config_bad_values),
      cmocka_unit_test(test_config_syntax_and_files),
  };
  const struct CMUnitTest run_tests[] = {
      cmocka_unit_test(test_small_teacher_matches_reference),
      cmocka_unit_test(test_frame_of_another_size),
      cmocka_unit_test(test_bare_model),
      cmocka_unit_test(test_config_model_mismatch),
  };
  const struct CMUnitTest tool_tests[] = {
      cmocka_unit_test(test_tool_teacher_config),
      cmocka_unit_test(test_tool_teacher_bare),
      cmocka_unit_test(test_tool_teacher_refusals),
  };
  int failed = cmocka_run_group_tests_name("teacher_config", config_tests,
                                           NULL, NULL);
  failed += st_test_run_on_backends("teacher", run_tests,
                                    sizeof run_tests / sizeof run_tests[0]);
  failed += cmocka_run_group_tests_name("teacher_tool", tool_tests, tool_setup,
                                        tool_teardown);
  return failed ? 1 : 0;
}
