/* Labels and loss weights (src/models/labels.c).
 *
 * - The class map: construction, the VOC -> 9 map of the paper against the
 *   fixture's, every range error.
 * - st_loss_weights against the reference's loss_weights() on crafted maps
 *   (tests/fixtures/gen_labels.py -> labels_weights.safetensors): touching
 *   objects, borders and corners, single pixels, one big object, empty and
 *   full maps, a background other than 0, odd sizes, random blobs, other
 *   dilations and factors. Weights must match exactly, and so must the
 *   component count ndimage.label found.
 * - Full-HD-ish frames with known answers: a serpentine one pixel wide
 *   (a recursive fill would overflow the stack), a checkerboard that
 *   8-connectivity joins into one component, a grid of isolated pixels;
 *   the scratch is reused without reallocating.
 * - st_labels_from_logits on every backend against PyTorch (resize,
 *   argmax, class map; labels_logits.safetensors), exact, with its argument
 *   checks.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "models/labels.h"
#include "testutil.h"

#define WEIGHTS_FIXTURE "labels_weights.safetensors"
#define LOGITS_FIXTURE "labels_logits.safetensors"

/* Every case gen_labels.py writes; the test also checks the file holds no
 * case this list forgets. */
static const char *const weight_cases[] = {
    "touching",        "borders",          "single_pixel",
    "corner_pixels",   "big",              "empty",
    "empty_bg7",       "full",             "spiral",
    "ring_dot",        "checker",          "checker_inv",
    "isolated",        "bg8_37x59",        "blobs_37x59",
    "blobs_50x77",     "blobs_61x97_d50",  "blobs_45x83_d100",
    "blobs_40x64_d0",  "blobs_90x160_d33",
};
#define WEIGHT_CASE_COUNT (sizeof weight_cases / sizeof weight_cases[0])

/* The paper's student classes (background last) and torchvision's VOC
 * classes, as gen_labels.py names them. */
enum {
  STUDENT_PERSON = 0,
  STUDENT_BICYCLE,
  STUDENT_AUTO,
  STUDENT_BIRD,
  STUDENT_DOG,
  STUDENT_HORSE,
  STUDENT_ELEPHANT,
  STUDENT_GIRAFFE,
  STUDENT_BACKGROUND,
  STUDENT_CLASSES
};
enum {
  VOC_BICYCLE = 2,
  VOC_BIRD = 3,
  VOC_BUS = 6,
  VOC_CAR = 7,
  VOC_DOG = 12,
  VOC_HORSE = 13,
  VOC_PERSON = 15,
  VOC_CLASSES = 21
};

static const char *const logits_cases[] = {"voc_61x97", "voc_90x160",
                                           "voc_21x33", "voc_13x19"};
#define LOGITS_CASE_COUNT (sizeof logits_cases / sizeof logits_cases[0])

/* A frame the size of the server's usual input. */
#define BIG_H 720
#define BIG_W 1280

/* Written into outputs before a call, so an element left unwritten (or
 * written on a failing call) shows. */
#define SENTINEL_WEIGHT -7.0f
#define SENTINEL_LABEL 0xEE

/* ---- helpers -------------------------------------------------------------- */

static st_tensor fx_get(const st_safetensors *fx, const char *name,
                        const char *field) {
  char full[128];
  snprintf(full, sizeof full, "%s.%s", name, field);
  return st_test_fixture_tensor(fx, full);
}

/* Exact equality of float maps, naming the first differing pixel. */
static void expect_same_weights(const float *got, const float *want,
                                int64_t h, int64_t w, const char *what) {
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < h * w; i++)
    if (!(got[i] == want[i])) {
      if (first < 0)
        first = i;
      bad++;
    }
  if (bad)
    fail_msg("%s: %lld of %lld weights differ; first at (%lld,%lld): got %g "
             "want %g",
             what, (long long)bad, (long long)(h * w), (long long)(first / w),
             (long long)(first % w), (double)got[first], (double)want[first]);
}

static void expect_same_labels(const uint8_t *got, const uint8_t *want,
                               int64_t h, int64_t w, const char *what) {
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < h * w; i++)
    if (got[i] != want[i]) {
      if (first < 0)
        first = i;
      bad++;
    }
  if (bad)
    fail_msg("%s: %lld of %lld labels differ; first at (%lld,%lld): got %d "
             "want %d",
             what, (long long)bad, (long long)(h * w), (long long)(first / w),
             (long long)(first % w), got[first], want[first]);
}

static void fill_weights(float *w, int64_t n, float v) {
  for (int64_t i = 0; i < n; i++)
    w[i] = v;
}

static int64_t count_equal(const float *w, int64_t n, float v) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; i++)
    c += w[i] == v;
  return c;
}

/* The VOC -> 9 map of the issue: person, bicycle, auto = car + bus (VOC has
 * no truck), bird, dog, horse; everything else is background. */
static void voc_class_map(st_class_map *m) {
  ST_ASSERT_OK(st_class_map_init(m, VOC_CLASSES, STUDENT_CLASSES,
                                 STUDENT_BACKGROUND));
  ST_ASSERT_OK(st_class_map_set(m, VOC_PERSON, STUDENT_PERSON));
  ST_ASSERT_OK(st_class_map_set(m, VOC_BICYCLE, STUDENT_BICYCLE));
  ST_ASSERT_OK(st_class_map_set(m, VOC_CAR, STUDENT_AUTO));
  ST_ASSERT_OK(st_class_map_set(m, VOC_BUS, STUDENT_AUTO));
  ST_ASSERT_OK(st_class_map_set(m, VOC_BIRD, STUDENT_BIRD));
  ST_ASSERT_OK(st_class_map_set(m, VOC_DOG, STUDENT_DOG));
  ST_ASSERT_OK(st_class_map_set(m, VOC_HORSE, STUDENT_HORSE));
}

/* ---- class map ------------------------------------------------------------ */

static void test_class_map_voc(void **state) {
  (void)state;
  st_class_map m;
  voc_class_map(&m);
  ST_ASSERT_OK(st_class_map_check(&m));
  assert_int_equal(m.teacher_classes, VOC_CLASSES);
  assert_int_equal(m.student_classes, STUDENT_CLASSES);
  assert_int_equal(m.background, STUDENT_BACKGROUND);

  /* The same map as the fixture's labels were made with. */
  st_safetensors *fx = st_test_fixture_open(LOGITS_FIXTURE);
  st_tensor want = st_test_fixture_tensor(fx, "voc_map");
  assert_int_equal(want.dtype, ST_I32);
  assert_int_equal(st_tensor_numel(&want), VOC_CLASSES);
  int mapped = 0;
  for (int t = 0; t < VOC_CLASSES; t++) {
    assert_int_equal(m.to_student[t], ((const int32_t *)want.data)[t]);
    mapped += m.to_student[t] != STUDENT_BACKGROUND;
  }
  assert_int_equal(mapped, 7);
  st_tensor_free(&want);
  st_safetensors_free(fx);

  /* A later set replaces an earlier one; mapping back to the background is
   * allowed. */
  ST_ASSERT_OK(st_class_map_set(&m, VOC_BUS, STUDENT_BACKGROUND));
  assert_int_equal(m.to_student[VOC_BUS], STUDENT_BACKGROUND);
  assert_int_equal(m.to_student[VOC_CAR], STUDENT_AUTO);

  /* Identity: the bare-model map, background last. */
  st_class_map id;
  ST_ASSERT_OK(st_class_map_identity(&id, VOC_CLASSES, VOC_CLASSES - 1));
  for (int t = 0; t < VOC_CLASSES; t++)
    assert_int_equal(id.to_student[t], t);
  assert_int_equal(id.background, VOC_CLASSES - 1);

  /* The largest maps labels allow. */
  ST_ASSERT_OK(st_class_map_identity(&id, ST_LABELS_MAX_CLASSES, 0));
  assert_int_equal(id.to_student[ST_LABELS_MAX_CLASSES - 1],
                   ST_LABELS_MAX_CLASSES - 1);
}

static void test_class_map_errors(void **state) {
  (void)state;
  st_class_map m;
  assert_int_equal(st_class_map_init(NULL, 2, 2, 0), ST_EINVAL);
  assert_int_equal(st_class_map_init(&m, 0, 9, 8), ST_ERANGE);
  assert_int_equal(m.teacher_classes, 0);
  assert_int_equal(st_class_map_set(&m, 0, 0), ST_EINVAL);
  assert_int_equal(st_class_map_check(&m), ST_EINVAL);
  assert_int_equal(st_class_map_init(&m, ST_LABELS_MAX_CLASSES + 1, 9, 8),
                   ST_ERANGE);
  assert_int_equal(st_class_map_init(&m, 21, 0, 0), ST_ERANGE);
  assert_int_equal(st_class_map_init(&m, 21, ST_LABELS_MAX_CLASSES + 1, 0),
                   ST_ERANGE);
  assert_int_equal(st_class_map_init(&m, 21, 9, -1), ST_ERANGE);
  assert_int_equal(st_class_map_init(&m, 21, 9, 9), ST_ERANGE);
  assert_non_null(strstr(st_error_detail(), "background class 9"));
  assert_int_equal(st_class_map_identity(&m, 21, 21), ST_ERANGE);

  voc_class_map(&m);
  st_class_map before = m;
  assert_int_equal(st_class_map_set(&m, -1, 0), ST_ERANGE);
  assert_int_equal(st_class_map_set(&m, VOC_CLASSES, 0), ST_ERANGE);
  assert_non_null(strstr(st_error_detail(), "teacher class 21"));
  assert_int_equal(st_class_map_set(&m, 0, -1), ST_ERANGE);
  assert_int_equal(st_class_map_set(&m, 0, STUDENT_CLASSES), ST_ERANGE);
  assert_non_null(strstr(st_error_detail(), "student class 9"));
  assert_memory_equal(&m, &before, sizeof m);
  assert_int_equal(st_class_map_set(NULL, 0, 0), ST_EINVAL);
  assert_int_equal(st_class_map_check(NULL), ST_EINVAL);

  /* A map edited by hand into an inconsistent state is caught. */
  m.to_student[4] = STUDENT_CLASSES;
  assert_int_equal(st_class_map_check(&m), ST_ERANGE);
  m = before;
  m.background = STUDENT_CLASSES;
  assert_int_equal(st_class_map_check(&m), ST_ERANGE);
}

/* ---- loss weights: fixtures ------------------------------------------------- */

static void test_loss_weights_fixtures(void **state) {
  (void)state;
  st_safetensors *fx = st_test_fixture_open(WEIGHTS_FIXTURE);
  /* Each case is five tensors; the file holds no case this test skips. */
  assert_int_equal(st_safetensors_count(fx), 5 * WEIGHT_CASE_COUNT);

  /* One scratch for every case, sizes going up and down, as a session's
   * would be. */
  st_labels_scratch scratch;
  st_labels_scratch_init(&scratch);
  int64_t boosted_total = 0, multi_component_cases = 0;
  for (size_t k = 0; k < WEIGHT_CASE_COUNT; k++) {
    const char *name = weight_cases[k];
    st_tensor label = fx_get(fx, name, "label");
    st_tensor want = fx_get(fx, name, "weight");
    st_tensor params = fx_get(fx, name, "params");
    st_tensor factor_t = fx_get(fx, name, "factor");
    st_tensor comps = fx_get(fx, name, "components");
    assert_int_equal(label.dtype, ST_U8);
    assert_int_equal(label.ndim, 2);
    assert_true(st_tensor_same_shape(&label, &want));
    const int64_t h = label.shape[0], w = label.shape[1];
    const int64_t *p = params.data;
    const int background = (int)p[0];
    /* The double Python computed as num / den. */
    const double dilate = (double)p[1] / (double)p[2];
    const float factor = ((const float *)factor_t.data)[0];

    float *got = malloc((size_t)(h * w) * sizeof *got);
    assert_non_null(got);
    /* Twice: the second call must not depend on what the first left in
     * the output or the scratch. */
    for (int run = 0; run < 2; run++) {
      fill_weights(got, h * w, run ? factor : SENTINEL_WEIGHT);
      ST_ASSERT_OK(st_loss_weights(label.data, h, w, background, factor,
                                   dilate, got, &scratch));
      expect_same_weights(got, want.data, h, w, name);
      assert_int_equal(scratch.components, ((const int64_t *)comps.data)[0]);
    }
    boosted_total += count_equal(want.data, h * w, factor);
    multi_component_cases += scratch.components > 1;
    free(got);
    st_tensor_free(&label);
    st_tensor_free(&want);
    st_tensor_free(&params);
    st_tensor_free(&factor_t);
    st_tensor_free(&comps);
  }
  /* The fixtures are not degenerate. */
  assert_true(boosted_total > 10000);
  assert_true(multi_component_cases >= 10);
  st_labels_scratch_free(&scratch);
  st_safetensors_free(fx);
}

/* The reference's arithmetic worked by hand on one object. */
static void test_loss_weights_by_hand(void **state) {
  (void)state;
  enum { H = 12, W = 10 };
  uint8_t label[H * W];
  float out[H * W];
  memset(label, 0, sizeof label);
  /* A vertical bar rows 2..9 in column 3, and one diagonal neighbour of
   * its bottom end in column 4, row 10: one component, rows 2..10, columns
   * 3..4. */
  for (int r = 2; r <= 9; r++)
    label[r * W + 3] = 1;
  label[10 * W + 4] = 2;
  st_labels_scratch s;
  st_labels_scratch_init(&s);

  /* dilate 0.15: gy = 8 * 0.15 / 2 = 0.6 -> rows int(1.4) = 1 ..
   * int(10.6) = 10; gx = 1 * 0.15 / 2 = 0.075 -> columns int(2.925) = 2 ..
   * int(4.075) = 4. */
  ST_ASSERT_OK(st_loss_weights(label, H, W, 0, 5.0f, 0.15, out, &s));
  assert_int_equal(s.components, 1);
  for (int r = 0; r < H; r++)
    for (int c = 0; c < W; c++) {
      const int inside = r >= 1 && r <= 10 && c >= 2 && c <= 4;
      assert_true(out[r * W + c] == (inside ? 5.0f : 1.0f));
    }

  /* dilate 1: gy = 4 -> rows int(-2) clipped to 0 .. int(14) clipped to
   * 11; gx = 0.5 -> columns int(2.5) = 2 .. int(4.5) = 4. Factor 2.5. */
  ST_ASSERT_OK(st_loss_weights(label, H, W, 0, 2.5f, 1.0, out, &s));
  for (int r = 0; r < H; r++)
    for (int c = 0; c < W; c++)
      assert_true(out[r * W + c] == (c >= 2 && c <= 4 ? 2.5f : 1.0f));

  /* The same map with background 1: the bar is now the background and
   * the zeros the object, one component around the bar (the lone 2 touches
   * it) whose box is the whole frame. */
  ST_ASSERT_OK(st_loss_weights(label, H, W, 1, 5.0f, 0.0, out, &s));
  assert_int_equal(s.components, 1);
  assert_int_equal(count_equal(out, H * W, 5.0f), H * W);
  st_labels_scratch_free(&s);
}

/* ---- loss weights: large frames -------------------------------------------- */

/* A one-pixel-wide serpentine in rows [r0, r1] x columns [c0, c1]: every
 * other row filled, consecutive rows joined by one pixel at alternating
 * ends. r1 - r0 must be even. */
static void draw_serpentine(uint8_t *label, int64_t w, int64_t r0, int64_t r1,
                            int64_t c0, int64_t c1) {
  for (int64_t r = r0; r <= r1; r += 2) {
    for (int64_t c = c0; c <= c1; c++)
      label[r * w + c] = 1;
    if (r + 1 < r1)
      label[(r + 1) * w + (((r - r0) / 2) % 2 ? c0 : c1)] = 1;
  }
}

static void test_loss_weights_big_frames(void **state) {
  (void)state;
  const int64_t h = BIG_H, w = BIG_W, n = h * w;
  uint8_t *label = calloc((size_t)n, 1);
  float *out = malloc((size_t)n * sizeof *out);
  assert_non_null(label);
  assert_non_null(out);
  st_labels_scratch s;
  st_labels_scratch_init(&s);

  /* Serpentine rows 100..618, columns 200..1079: one component of ~230k
   * pixels in a single path. Box rows 100..618: gy = 518 * 0.15 / 2 =
   * 38.85 -> rows int(61.15) = 61 .. int(656.85) = 656; columns: gx = 879
   * * 0.15 / 2 = 65.925 -> int(134.075) = 134 .. int(1144.925) = 1144. */
  draw_serpentine(label, w, 100, 618, 200, 1079);
  double t0 = st_test_now_ms();
  ST_ASSERT_OK(st_loss_weights(label, h, w, 0, ST_LOSS_WEIGHT_DEFAULT_FACTOR,
                               ST_LOSS_WEIGHT_DEFAULT_DILATE, out, &s));
  double serpentine_ms = st_test_now_ms() - t0;
  assert_int_equal(s.components, 1);
  for (int64_t r = 0; r < h; r++)
    for (int64_t c = 0; c < w; c++) {
      const int inside = r >= 61 && r <= 656 && c >= 134 && c <= 1144;
      if (out[r * w + c] != (inside ? ST_LOSS_WEIGHT_DEFAULT_FACTOR : 1.0f))
        fail_msg("serpentine: weight %g at (%lld,%lld)",
                 (double)out[r * w + c], (long long)r, (long long)c);
    }
  const uint8_t *seen_buf = s.seen;
  const int32_t *pending_buf = s.pending;
  const int64_t capacity = s.capacity;
  assert_int_equal(capacity, n);

  /* Checkerboard: only diagonal contacts, which 8-connectivity follows, so
   * one component covering the frame. */
  for (int64_t r = 0; r < h; r++)
    for (int64_t c = 0; c < w; c++)
      label[r * w + c] = (uint8_t)((r + c) % 2);
  ST_ASSERT_OK(st_loss_weights(label, h, w, 0, 3.0f, 0.15, out, &s));
  assert_int_equal(s.components, 1);
  assert_int_equal(count_equal(out, n, 3.0f), n);

  /* Pixels on a grid of pitch 2: no two touch, each is its own box. */
  memset(label, 0, (size_t)n);
  for (int64_t r = 1; r < h; r += 2)
    for (int64_t c = 0; c < w; c += 2)
      label[r * w + c] = 4;
  t0 = st_test_now_ms();
  ST_ASSERT_OK(st_loss_weights(label, h, w, 0, 5.0f, 0.15, out, &s));
  double grid_ms = st_test_now_ms() - t0;
  assert_int_equal(s.components, (h / 2) * (w / 2));
  for (int64_t i = 0; i < n; i++)
    assert_true(out[i] == (label[i] ? 5.0f : 1.0f));

  /* Steady state: same and smaller frames reuse the buffers. */
  ST_ASSERT_OK(st_loss_weights(label, h / 2, w, 0, 5.0f, 0.15, out, &s));
  assert_ptr_equal(s.seen, seen_buf);
  assert_ptr_equal(s.pending, pending_buf);
  assert_int_equal(s.capacity, capacity);

  print_message("loss weights %lldx%lld on the host: serpentine (1 "
                "component) %.2f ms, grid (%lld components) %.2f ms\n",
                (long long)h, (long long)w, serpentine_ms,
                (long long)((h / 2) * (w / 2)), grid_ms);
  st_labels_scratch_free(&s);
  st_labels_scratch_free(&s); /* a freed scratch frees again harmlessly */
  st_labels_scratch_free(NULL);
  free(label);
  free(out);
}

static void test_loss_weights_errors(void **state) {
  (void)state;
  enum { H = 4, W = 5 };
  uint8_t label[H * W] = {0};
  label[7] = 1;
  float out[H * W];
  st_labels_scratch s;
  st_labels_scratch_init(&s);
  fill_weights(out, H * W, SENTINEL_WEIGHT);
  const float f = 5.0f;
  const double d = 0.15;

  assert_int_equal(st_loss_weights(NULL, H, W, 0, f, d, out, &s), ST_EINVAL);
  assert_int_equal(st_loss_weights(label, H, W, 0, f, d, NULL, &s), ST_EINVAL);
  assert_int_equal(st_loss_weights(label, H, W, 0, f, d, out, NULL),
                   ST_EINVAL);
  assert_int_equal(st_loss_weights(label, 0, W, 0, f, d, out, &s), ST_EINVAL);
  assert_int_equal(st_loss_weights(label, H, -1, 0, f, d, out, &s),
                   ST_EINVAL);
  assert_int_equal(st_loss_weights(label, H, W, -1, f, d, out, &s),
                   ST_EINVAL);
  assert_int_equal(st_loss_weights(label, H, W, 256, f, d, out, &s),
                   ST_EINVAL);
  assert_int_equal(st_loss_weights(label, H, W, 0, f, -0.1, out, &s),
                   ST_EINVAL);
  assert_int_equal(st_loss_weights(label, H, W, 0, f, NAN, out, &s),
                   ST_EINVAL);
  assert_int_equal(st_loss_weights(label, H, W, 0, f, INFINITY, out, &s),
                   ST_EINVAL);
  assert_int_equal(st_loss_weights(label, H, W, 0, NAN, d, out, &s),
                   ST_EINVAL);
  assert_int_equal(st_loss_weights(label, H, W, 0, INFINITY, d, out, &s),
                   ST_EINVAL);
  /* Too many pixels for 32-bit indices: refused before allocating. */
  assert_int_equal(st_labels_scratch_reserve(&s, 65536, 65536), ST_ERANGE);
  assert_int_equal(st_loss_weights(label, 65536, 65536, 0, f, d, out, &s),
                   ST_ERANGE);
  assert_null(s.seen);
  assert_int_equal(s.capacity, 0);
  assert_int_equal(count_equal(out, H * W, SENTINEL_WEIGHT), H * W);

  /* And the same arguments, made valid, work. */
  ST_ASSERT_OK(st_loss_weights(label, H, W, 0, f, d, out, &s));
  assert_int_equal(count_equal(out, H * W, f), 1);
  st_labels_scratch_free(&s);
}

/* ---- labels from logits, on every backend ------------------------------------ */

typedef struct logits_case {
  st_tensor logits;         /* host, F32 [1,21,h,w] */
  st_tensor label;          /* host, U8 [H,W]: student label */
  st_tensor teacher_argmax; /* host, U8 [H,W] */
  st_tensor weight;         /* host, F32 [H,W] */
  int64_t h, w;             /* frame size */
} logits_case;

static logits_case load_logits_case(const st_safetensors *fx,
                                    const char *name) {
  logits_case c;
  c.logits = fx_get(fx, name, "logits");
  c.label = fx_get(fx, name, "label");
  c.teacher_argmax = fx_get(fx, name, "teacher_argmax");
  c.weight = fx_get(fx, name, "weight");
  assert_int_equal(c.logits.ndim, 4);
  assert_int_equal(c.logits.shape[1], VOC_CLASSES);
  assert_int_equal(c.label.ndim, 2);
  c.h = c.label.shape[0];
  c.w = c.label.shape[1];
  return c;
}

static void free_logits_case(logits_case *c) {
  st_tensor_free(&c->logits);
  st_tensor_free(&c->label);
  st_tensor_free(&c->teacher_argmax);
  st_tensor_free(&c->weight);
}

static void test_labels_from_logits_fixture(void **state) {
  st_backend *be = st_test_backend(state);
  st_safetensors *fx = st_test_fixture_open(LOGITS_FIXTURE);
  st_class_map voc, identity;
  voc_class_map(&voc);
  ST_ASSERT_OK(st_class_map_identity(&identity, VOC_CLASSES, 0));
  st_labels_scratch scratch;
  st_labels_scratch_init(&scratch);
  int resized_cases = 0;

  for (size_t k = 0; k < LOGITS_CASE_COUNT; k++) {
    const char *name = logits_cases[k];
    logits_case c = load_logits_case(fx, name);
    const int64_t pixels = c.h * c.w;
    st_tensor logits = st_test_to_backend(be, &c.logits);
    const int same_size =
        c.logits.shape[2] == c.h && c.logits.shape[3] == c.w;
    resized_cases += !same_size;
    st_tensor label;
    const int64_t label_shape[3] = {1, c.h, c.w};
    ST_ASSERT_OK(st_tensor_alloc(be, &label, ST_U8, 3, label_shape));
    uint8_t *host_label = malloc((size_t)pixels);
    float *weight = malloc((size_t)pixels * sizeof *weight);
    assert_non_null(host_label);
    assert_non_null(weight);
    char what[96];

    /* The identity map leaves the teacher's own argmax: PyTorch's resize
     * and argmax before any mapping. */
    memset(host_label, SENTINEL_LABEL, (size_t)pixels);
    ST_ASSERT_OK(
        st_labels_from_logits(be, &logits, &identity, &label, host_label));
    snprintf(what, sizeof what, "%s teacher argmax", name);
    expect_same_labels(host_label, c.teacher_argmax.data, c.h, c.w, what);

    /* The VOC map, twice on the same buffers (the steady state allocates
     * no tensor). Both the host copy and the backend tensor hold the
     * student label. */
    st_backend_stats before, after;
    for (int run = 0; run < 2; run++) {
      memset(host_label, SENTINEL_LABEL, (size_t)pixels);
      st_backend_get_stats(be, &before);
      ST_ASSERT_OK(
          st_labels_from_logits(be, &logits, &voc, &label, host_label));
      st_backend_get_stats(be, &after);
      assert_int_equal(after.alloc_calls, before.alloc_calls);
      snprintf(what, sizeof what, "%s student label (host)", name);
      expect_same_labels(host_label, c.label.data, c.h, c.w, what);
      st_tensor back = st_test_to_host(be, &label);
      snprintf(what, sizeof what, "%s student label (backend)", name);
      expect_same_labels(back.data, c.label.data, c.h, c.w, what);
      st_tensor_free(&back);
    }

    /* The weights the server derives from that label. */
    ST_ASSERT_OK(st_loss_weights(host_label, c.h, c.w, STUDENT_BACKGROUND,
                                 ST_LOSS_WEIGHT_DEFAULT_FACTOR,
                                 ST_LOSS_WEIGHT_DEFAULT_DILATE, weight,
                                 &scratch));
    assert_true(scratch.components > 0);
    snprintf(what, sizeof what, "%s weights", name);
    expect_same_weights(weight, c.weight.data, c.h, c.w, what);

    /* On a host backend the host label may be the tensor's own bytes. */
    if (st_backend_is_host(be)) {
      memset(label.data, SENTINEL_LABEL, (size_t)pixels);
      ST_ASSERT_OK(
          st_labels_from_logits(be, &logits, &voc, &label, label.data));
      snprintf(what, sizeof what, "%s student label (in place)", name);
      expect_same_labels(label.data, c.label.data, c.h, c.w, what);
    }

    free(host_label);
    free(weight);
    st_tensor_free(&label);
    st_tensor_free(&logits);
    free_logits_case(&c);
  }
  assert_int_equal(resized_cases, 3);
  st_labels_scratch_free(&scratch);
  st_safetensors_free(fx);
}

static void test_labels_from_logits_errors(void **state) {
  st_backend *be = st_test_backend(state);
  enum { T = 5, LH = 3, LW = 4, H = 6, W = 7 };
  st_class_map m;
  ST_ASSERT_OK(st_class_map_identity(&m, T, T - 1));
  st_tensor logits, label, wrong;
  ST_ASSERT_OK(st_tensor_alloc4(be, &logits, ST_F32, 1, T, LH, LW));
  const int64_t label_shape[3] = {1, H, W};
  ST_ASSERT_OK(st_tensor_alloc(be, &label, ST_U8, 3, label_shape));
  uint8_t host[H * W];
  memset(host, SENTINEL_LABEL, sizeof host);

  /* Class count of the logits against the map's teacher classes. */
  st_class_map other;
  ST_ASSERT_OK(st_class_map_identity(&other, T + 1, T));
  assert_int_equal(st_labels_from_logits(be, &logits, &other, &label, host),
                   ST_ESHAPE);
  /* An uninitialised or inconsistent map. */
  st_class_map blank = {0};
  assert_int_equal(st_labels_from_logits(be, &logits, &blank, &label, host),
                   ST_EINVAL);
  st_class_map broken = m;
  broken.to_student[2] = T;
  assert_int_equal(st_labels_from_logits(be, &logits, &broken, &label, host),
                   ST_ERANGE);
  /* Missing pieces. */
  assert_int_equal(st_labels_from_logits(be, &logits, &m, &label, NULL),
                   ST_EINVAL);
  assert_int_equal(st_labels_from_logits(be, NULL, &m, &label, host),
                   ST_EINVAL);
  assert_int_equal(st_labels_from_logits(be, &logits, &m, NULL, host),
                   ST_EINVAL);

  /* Batch of two. */
  ST_ASSERT_OK(st_tensor_alloc4(be, &wrong, ST_F32, 2, T, LH, LW));
  assert_int_equal(st_labels_from_logits(be, &wrong, &m, &label, host),
                   ST_ESHAPE);
  st_tensor_free(&wrong);
  /* Logits of the wrong dtype. */
  ST_ASSERT_OK(st_tensor_alloc4(be, &wrong, ST_U8, 1, T, LH, LW));
  assert_int_equal(st_labels_from_logits(be, &wrong, &m, &label, host),
                   ST_EDTYPE);
  st_tensor_free(&wrong);
  /* Label of the wrong dtype or shape. */
  ST_ASSERT_OK(st_tensor_alloc(be, &wrong, ST_F32, 3, label_shape));
  assert_int_equal(st_labels_from_logits(be, &logits, &m, &wrong, host),
                   ST_EDTYPE);
  st_tensor_free(&wrong);
  ST_ASSERT_OK(st_tensor_alloc4(be, &wrong, ST_U8, 1, 1, H, W));
  assert_int_equal(st_labels_from_logits(be, &logits, &m, &wrong, host),
                   ST_ESHAPE);
  st_tensor_free(&wrong);
  const int64_t batch2[3] = {2, H, W};
  ST_ASSERT_OK(st_tensor_alloc(be, &wrong, ST_U8, 3, batch2));
  assert_int_equal(st_labels_from_logits(be, &logits, &m, &wrong, host),
                   ST_ESHAPE);
  st_tensor_free(&wrong);
  /* Nothing reached the host label on any of those. */
  for (size_t i = 0; i < sizeof host; i++)
    assert_int_equal(host[i], SENTINEL_LABEL);

  /* The same call with valid arguments goes through: every logit 0 ties
   * everywhere, the first class wins, and the identity keeps it. */
  ST_ASSERT_OK(st_labels_from_logits(be, &logits, &m, &label, host));
  for (size_t i = 0; i < sizeof host; i++)
    assert_int_equal(host[i], 0);

  st_tensor_free(&label);
  st_tensor_free(&logits);
}

int main(void) {
  const struct CMUnitTest host_tests[] = {
      cmocka_unit_test(test_class_map_voc),
      cmocka_unit_test(test_class_map_errors),
      cmocka_unit_test(test_loss_weights_fixtures),
      cmocka_unit_test(test_loss_weights_by_hand),
      cmocka_unit_test(test_loss_weights_big_frames),
      cmocka_unit_test(test_loss_weights_errors),
  };
  const struct CMUnitTest backend_tests[] = {
      cmocka_unit_test(test_labels_from_logits_fixture),
      cmocka_unit_test(test_labels_from_logits_errors),
  };
  int failed = cmocka_run_group_tests_name("labels", host_tests, NULL, NULL);
  failed += st_test_run_on_backends(
      "labels_from_logits", backend_tests,
      sizeof backend_tests / sizeof backend_tests[0]);
  return failed;
}
