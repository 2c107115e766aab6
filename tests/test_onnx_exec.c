/* ONNX executor: the exported teacher fixtures (folded and raw exports,
 * opsets 11 and 17) against PyTorch's outputs, the built-in small teacher
 * against its reference logits, steady-state runs (no allocation, identical
 * output) and the one-line refusals of what the executor does not
 * implement (tests/fixtures/gen_onnx_exec.py). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "models/onnx_exec.h"
#include "models/onnx_graph.h"

/* Agreement with PyTorch, relative to the largest output magnitude: the
 * fixtures' own float64 interpreter agrees to 6e-6; fp32 summation order
 * differs between oneDNN and PyTorch. */
#define TEACHER_REL_TOL 1e-4
/* The small teacher's grid: rows/cols start, step (teachers.json). */
enum { GRID_START = 8, GRID_STEP = 16 };
enum { IMAGE_CHANNELS = 3 };

/* Runs a plan; any error fails the test. Every backend implements the ops
 * of imported graphs, so none of these runs may skip. */
static void run_plan(st_onnx_plan *plan, const st_tensor *x,
                     const st_tensor **y) {
  int rc = st_onnx_plan_run(plan, x, y);
  if (rc)
    fail_msg("st_onnx_plan_run: %s: %s", st_strerror(rc), st_error_detail());
}

static double max_abs(const float *x, size_t n) {
  double m = 0.0;
  for (size_t i = 0; i < n; i++)
    m = fmax(m, fabs(x[i]));
  return m;
}

/* Plans one teacher fixture, runs it twice and compares with PyTorch. */
static void check_teacher(void **state, const char *stem, int expect_bn) {
  st_backend *be = st_test_backend(state);
  char onnx_name[128], st_name[128];
  snprintf(onnx_name, sizeof onnx_name, "teacher_%s.onnx", stem);
  snprintf(st_name, sizeof st_name, "teacher_%s.safetensors", stem);
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_onnx_model_load(st_test_fixture_path(onnx_name), &m));
  st_safetensors *fx = st_test_fixture_open(st_name);
  st_tensor in_h = st_test_fixture_tensor(fx, "input");
  st_tensor want = st_test_fixture_tensor(fx, "output");

  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new(be, m, in_h.shape, &plan));
  st_onnx_plan_stats ps;
  st_onnx_plan_get_stats(plan, &ps);
  print_message("%s: %d steps, %d folded, %d BN and %d ReLU fused, %d views, "
                "%d buffers %lld bytes (one per value: %lld)\n",
                stem, ps.steps, ps.folded_nodes, ps.fused_batchnorms,
                ps.fused_relus, ps.views, ps.buffers,
                (long long)ps.buffer_bytes, (long long)ps.naive_bytes);
  /* Raw exports keep their BatchNormalization nodes (all after convs) and
   * the Cast/Unsqueeze shape arithmetic; folded ones have neither. */
  if (expect_bn)
    assert_true(ps.fused_batchnorms > 0);
  else
    assert_int_equal(ps.fused_batchnorms, 0);
  assert_true(ps.fused_relus > 0);
  assert_true(ps.folded_nodes > 0);
  assert_true(ps.buffer_bytes < ps.naive_bytes); /* buffers are reused */
  assert_int_equal(st_onnx_plan_n_outputs(plan), 1);
  assert_int_equal(st_onnx_plan_output_index(plan, "out"), 0);
  assert_int_equal(st_onnx_plan_output_index(plan, "nope"), -1);
  const st_tensor *planned = st_onnx_plan_output(plan, 0);
  assert_non_null(planned);
  assert_true(st_tensor_same_shape(planned, &want));

  st_tensor x = st_test_to_backend(be, &in_h);
  const st_tensor *y = NULL;
  run_plan(plan, &x, &y);
  assert_ptr_equal(y, planned);
  st_tensor got = st_test_to_host(be, y);
  size_t n = (size_t)st_tensor_numel(&want);
  double scale = max_abs(want.data, n);
  assert_true(scale > 0.1); /* a non-trivial reference */
  st_test_assert_close(got.data, want.data, n, TEACHER_REL_TOL,
                       TEACHER_REL_TOL * scale, stem);

  /* Steady state: nothing is allocated and the result is bit-identical. */
  st_backend_stats before, after;
  st_backend_get_stats(be, &before);
  run_plan(plan, &x, &y);
  ST_ASSERT_OK(st_backend_sync(be));
  st_backend_get_stats(be, &after);
  assert_int_equal(after.alloc_calls, before.alloc_calls);
  assert_int_equal(after.bytes_in_use, before.bytes_in_use);
  st_tensor again = st_test_to_host(be, y);
  assert_memory_equal(again.data, got.data, n * sizeof(float));

  st_tensor_free(&again);
  st_tensor_free(&got);
  st_tensor_free(&x);
  st_onnx_plan_free(plan);
  st_tensor_free(&want);
  st_tensor_free(&in_h);
  st_safetensors_free(fx);
  st_onnx_model_free(m);
}

static void test_mnv3_folded_op11(void **state) {
  check_teacher(state, "mnv3_lraspp_37x59_op11", 0);
}
static void test_mnv3_raw_op17(void **state) {
  check_teacher(state, "mnv3_lraspp_45x83_op17", 1);
}
static void test_resnet_folded_op17(void **state) {
  check_teacher(state, "resnet_aspp_37x59_op17", 0);
}
static void test_resnet_raw_op11(void **state) {
  check_teacher(state, "resnet_aspp_45x83_op11", 1);
}

static double json_num(json_t *obj, const char *key, size_t index) {
  json_t *v = json_object_get(obj, key);
  if (json_is_array(v))
    v = json_array_get(v, index);
  assert_true(json_is_number(v));
  return json_number_value(v);
}

/* The built-in teacher on a real-size frame, normalised per its config. */
static void test_small_teacher(void **state) {
  st_backend *be = st_test_backend(state);
  json_error_t jerr;
  char cfg_path[1024];
  snprintf(cfg_path, sizeof cfg_path, "%s/../../config/teacher-small.json",
           st_test_fixture_dir());
  json_t *cfg = json_load_file(cfg_path, 0, &jerr);
  if (!cfg)
    fail_msg("%s: %s", cfg_path, jerr.text);
  json_t *input = json_object_get(cfg, "input");
  assert_string_equal(json_string_value(json_object_get(input,
                                                        "channel_order")),
                      "rgb");
  double scale = json_num(input, "scale", 0);
  int64_t h = (int64_t)json_num(input, "height", 0);
  int64_t w = (int64_t)json_num(input, "width", 0);

  char model_path[1024];
  snprintf(model_path, sizeof model_path, "%s/../../config/%s",
           st_test_fixture_dir(),
           json_string_value(json_object_get(cfg, "model")));
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_onnx_model_load(model_path, &m));
  st_safetensors *fx = st_test_fixture_open("teacher_small_ref.safetensors");
  st_tensor image = st_test_fixture_tensor(fx, "image");
  st_tensor grid = st_test_fixture_tensor(fx, "logits_grid");
  assert_int_equal(image.shape[0], h);
  assert_int_equal(image.shape[1], w);

  int64_t shape[4] = {1, IMAGE_CHANNELS, h, w};
  st_tensor x_h;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &x_h, ST_F32, 4, shape));
  const uint8_t *px = image.data;
  float *xf = x_h.data;
  for (int c = 0; c < IMAGE_CHANNELS; c++) {
    double mean = json_num(input, "mean", (size_t)c);
    double std_ = json_num(input, "std", (size_t)c);
    for (int64_t i = 0; i < h * w; i++)
      xf[c * h * w + i] =
          (float)((px[i * IMAGE_CHANNELS + c] * scale - mean) / std_);
  }

  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new(be, m, shape, &plan));
  int oi = st_onnx_plan_output_index(
      plan, json_string_value(json_object_get(cfg, "output")));
  assert_int_equal(oi, 0);
  st_tensor x = st_test_to_backend(be, &x_h);
  const st_tensor *y = NULL;
  run_plan(plan, &x, &y);
  int64_t classes = (int64_t)json_num(cfg, "classes", 0);
  assert_int_equal(y->shape[1], classes);
  assert_int_equal(y->shape[2], h);
  assert_int_equal(y->shape[3], w);
  st_tensor got = st_test_to_host(be, y);

  /* Sample the full logits at the grid the reference kept. */
  int64_t gh = grid.shape[1], gw = grid.shape[2];
  assert_int_equal(grid.shape[0], classes);
  float *sampled = malloc((size_t)(classes * gh * gw) * sizeof *sampled);
  assert_non_null(sampled);
  const float *full = got.data;
  for (int64_t c = 0; c < classes; c++)
    for (int64_t i = 0; i < gh; i++)
      for (int64_t j = 0; j < gw; j++)
        sampled[(c * gh + i) * gw + j] =
            full[(c * h + GRID_START + i * GRID_STEP) * w + GRID_START +
                 j * GRID_STEP];
  size_t n = (size_t)st_tensor_numel(&grid);
  double mag = max_abs(grid.data, n);
  assert_true(mag > 0.1);
  st_test_assert_close(sampled, grid.data, n, TEACHER_REL_TOL,
                       TEACHER_REL_TOL * mag, "teacher-small");

  free(sampled);
  st_tensor_free(&got);
  st_tensor_free(&x);
  st_onnx_plan_free(plan);
  st_tensor_free(&x_h);
  st_tensor_free(&grid);
  st_tensor_free(&image);
  st_safetensors_free(fx);
  st_onnx_model_free(m);
  json_decref(cfg);
}

/* The ops and attribute values the teachers do not reach
 * (gen_onnx_exec.py lists them), at both opsets, with two outputs. */
#define MISC_RTOL 1e-5
#define MISC_ATOL 1e-6
static void check_misc(void **state, const char *stem) {
  st_backend *be = st_test_backend(state);
  char name[128];
  snprintf(name, sizeof name, "%s.onnx", stem);
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_onnx_model_load(st_test_fixture_path(name), &m));
  snprintf(name, sizeof name, "%s.safetensors", stem);
  st_safetensors *fx = st_test_fixture_open(name);
  st_tensor in_h = st_test_fixture_tensor(fx, "input");
  st_tensor probs = st_test_fixture_tensor(fx, "probs");
  st_tensor labels = st_test_fixture_tensor(fx, "labels");

  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new(be, m, in_h.shape, &plan));
  st_onnx_plan_stats ps;
  st_onnx_plan_get_stats(plan, &ps);
  /* the BatchNormalization reads the graph input: Mul and Add, not fused */
  assert_int_equal(ps.fused_batchnorms, 0);
  assert_true(ps.views >= 2); /* Reshape and Unsqueeze */
  assert_int_equal(st_onnx_plan_n_outputs(plan), 2);
  int ip = st_onnx_plan_output_index(plan, "probs");
  int il = st_onnx_plan_output_index(plan, "labels");
  assert_int_equal(ip, 0);
  assert_int_equal(il, 1);

  st_tensor x = st_test_to_backend(be, &in_h);
  const st_tensor *y = NULL;
  run_plan(plan, &x, &y);
  const st_tensor *yp = st_onnx_plan_output(plan, ip);
  const st_tensor *yl = st_onnx_plan_output(plan, il);
  assert_ptr_equal(y, yp);
  assert_null(st_onnx_plan_output(plan, 2));
  assert_true(st_tensor_same_shape(yp, &probs));
  assert_true(st_tensor_same_shape(yl, &labels));
  assert_int_equal(yl->dtype, ST_I64);
  st_tensor gp = st_test_to_host(be, yp), gl = st_test_to_host(be, yl);
  st_test_assert_close(gp.data, probs.data, (size_t)st_tensor_numel(&probs),
                       MISC_RTOL, MISC_ATOL, stem);
  assert_memory_equal(gl.data, labels.data, st_tensor_nbytes(&labels));

  st_tensor_free(&gp);
  st_tensor_free(&gl);
  st_tensor_free(&x);
  st_onnx_plan_free(plan);
  st_tensor_free(&labels);
  st_tensor_free(&probs);
  st_tensor_free(&in_h);
  st_safetensors_free(fx);
  st_onnx_model_free(m);
}

static void test_misc_op11(void **state) {
  check_misc(state, "onnx_exec_misc_op11");
}
static void test_misc_op17(void **state) {
  check_misc(state, "onnx_exec_misc_op17");
}

/* Convs padded unequally on the two sides of an axis (explicit pads,
 * SAME_UPPER with stride 2, SAME_LOWER with an even kernel): the extra side
 * is concatenated as zeros. */
static void test_asym_pads(void **state) {
  st_backend *be = st_test_backend(state);
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_onnx_model_load(
      st_test_fixture_path("onnx_exec_asym_pads.onnx"), &m));
  st_safetensors *fx = st_test_fixture_open("onnx_exec_asym_pads.safetensors");
  st_tensor in_h = st_test_fixture_tensor(fx, "input");
  st_tensor want = st_test_fixture_tensor(fx, "output");
  st_onnx_plan *plan = NULL;
  ST_ASSERT_OK(st_onnx_plan_new(be, m, in_h.shape, &plan));
  st_onnx_plan_stats ps;
  st_onnx_plan_get_stats(plan, &ps);
  /* 3 convs (the Relu fused); padding concats: conv_pads on H and W
   * (top 0/bottom 1 needs an H block; left/right 1/1 does not) = 1,
   * conv_same_upper on W = 1, conv_same_lower on H and W = 2 */
  enum { CONVS = 3, PAD_CONCATS = 4 };
  assert_int_equal(ps.steps, CONVS + PAD_CONCATS);
  assert_int_equal(ps.fused_relus, 1);
  st_tensor x = st_test_to_backend(be, &in_h);
  const st_tensor *y = NULL;
  run_plan(plan, &x, &y);
  assert_true(st_tensor_same_shape(y, &want));
  st_tensor got = st_test_to_host(be, y);
  st_test_assert_close(got.data, want.data, (size_t)st_tensor_numel(&want),
                       MISC_RTOL, MISC_ATOL, "asym pads");
  st_tensor_free(&got);
  st_tensor_free(&x);
  st_onnx_plan_free(plan);
  st_tensor_free(&want);
  st_tensor_free(&in_h);
  st_safetensors_free(fx);
  st_onnx_model_free(m);
}

/* A plan for the wrong input size, or a run with one, is an error. */
static void test_input_checks(void **state) {
  st_backend *be = st_test_backend(state);
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_onnx_model_load(
      st_test_fixture_path("teacher_mnv3_lraspp_37x59_op11.onnx"), &m));
  st_onnx_plan *plan = NULL;
  /* the exported input is fixed at 37x59 */
  int64_t wrong[4] = {1, 3, 38, 59};
  assert_int_equal(st_onnx_plan_new(be, m, wrong, &plan), ST_ESHAPE);
  assert_null(plan);
  int64_t right[4] = {1, 3, 37, 59};
  ST_ASSERT_OK(st_onnx_plan_new(be, m, right, &plan));
  st_tensor x;
  ST_ASSERT_OK(st_tensor_alloc(be, &x, ST_F32, 4, wrong));
  assert_int_equal(st_onnx_plan_run(plan, &x, NULL), ST_ESHAPE);
  st_tensor_free(&x);
  st_onnx_plan_free(plan);
  st_onnx_model_free(m);
}

/* Each fixture uses one thing the executor lacks: planning must refuse it
 * with ST_ENOTSUP and one line naming the model, node, op and reason. */
static void test_refusals(void **state) {
  st_backend *be = st_test_backend(state);
  static const struct {
    const char *file, *node, *op, *reason;
  } cases[] = {
      {"onnx_exec_refuse_op.onnx", "erf_unsupported", "Erf",
       "operator Erf is not supported"},
      {"onnx_exec_refuse_cubic.onnx", "resize_cubic", "Resize",
       "mode 'cubic' is not supported"},
      {"onnx_exec_refuse_crop.onnx", "resize_crop", "Resize",
       "coordinate_transformation_mode 'tf_crop_and_resize' is not "
       "supported"},
      {"onnx_exec_refuse_storage_order.onnx", "pool_colmajor", "MaxPool",
       "storage_order=1"},
      {"onnx_exec_refuse_argmax_last.onnx", "argmax_last", "ArgMax",
       "select_last_index=1"},
  };
  int64_t shape[4] = {1, 3, 8, 10};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    st_onnx_model *m = NULL;
    ST_ASSERT_OK(st_onnx_model_load(st_test_fixture_path(cases[i].file), &m));
    st_onnx_plan *plan = NULL;
    st_backend_stats before, after;
    st_backend_get_stats(be, &before);
    assert_int_equal(st_onnx_plan_new(be, m, shape, &plan), ST_ENOTSUP);
    assert_null(plan);
    st_backend_get_stats(be, &after);
    /* a refused plan leaves nothing allocated behind */
    assert_int_equal(after.bytes_in_use, before.bytes_in_use);
    char want[512];
    snprintf(want, sizeof want, "%s: node '%s' (%s): ", m->label,
             cases[i].node, cases[i].op);
    const char *detail = st_error_detail();
    if (strncmp(detail, want, strlen(want)) ||
        !strstr(detail, cases[i].reason) || strchr(detail, '\n'))
      fail_msg("%s: detail '%s', expected '%s...%s'", cases[i].file, detail,
               want, cases[i].reason);
    st_onnx_model_free(m);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mnv3_folded_op11),
      cmocka_unit_test(test_mnv3_raw_op17),
      cmocka_unit_test(test_resnet_folded_op17),
      cmocka_unit_test(test_resnet_raw_op11),
      cmocka_unit_test(test_small_teacher),
      cmocka_unit_test(test_misc_op11),
      cmocka_unit_test(test_misc_op17),
      cmocka_unit_test(test_asym_pads),
      cmocka_unit_test(test_input_checks),
      cmocka_unit_test(test_refusals),
  };
  return st_test_run_on_backends("onnx_exec", tests,
                                 sizeof tests / sizeof tests[0]);
}
