/* shadowtutor-model end to end: the real binary on fixture files, its
 * outputs checked against the PyTorch reference, and every kind of bad
 * input answered with one stderr line and exit code 2. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "toolrun.h"

#ifndef ST_MODEL_TOOL
#error "ST_MODEL_TOOL must name the shadowtutor-model binary"
#endif

/* The binary this build made (toolrun lets $ST_MODEL_TOOL override it). */
#define run_tool(r, ...) st_tool_run_args((r), ST_MODEL_TOOL, __VA_ARGS__)
#define work_path st_tool_work_path
#define fixture st_tool_fixture
#define count_lines st_tool_count_lines
#define assert_usage_error st_tool_assert_usage_error
typedef st_tool_run run_result;

static int setup(void **state) {
  (void)state;
  return st_tool_workdir_make("tool");
}

static int teardown(void **state) {
  (void)state;
  return st_tool_workdir_remove();
}

static const char *config_path(void) {
  static char p[512];
  snprintf(p, sizeof p, "%s/../../config/student.json", st_test_fixture_dir());
  return p;
}

static void assert_file_tensor_close(const char *path, const char *name,
                                     const char *fixture, const char *key,
                                     double rtol) {
  st_safetensors *got_f = NULL;
  ST_ASSERT_OK(st_safetensors_open(path, &got_f));
  st_safetensors *want_f = st_test_fixture_open(fixture);
  st_tensor got, want = st_test_fixture_tensor(want_f, key);
  ST_ASSERT_OK(st_safetensors_read(got_f, name, &got));
  assert_int_equal(st_tensor_numel(&got), st_tensor_numel(&want));
  double scale = 0.0;
  const float *w = want.data;
  for (int64_t i = 0; i < st_tensor_numel(&want); i++)
    scale = fmax(scale, fabs(w[i]));
  st_test_assert_close(got.data, want.data, (size_t)st_tensor_numel(&want),
                       rtol, rtol * scale, key);
  st_tensor_free(&got);
  st_tensor_free(&want);
  st_safetensors_free(got_f);
  st_safetensors_free(want_f);
}

static void test_forward_matches_reference(void **state) {
  (void)state;
  run_result *r = malloc(sizeof *r);
  const char *out = work_path("logits.safetensors");
  run_tool(r, "forward", "--config", config_path(), "--weights",
           fixture("student_weights.safetensors"), "--input",
           fixture("student_37x59.safetensors"), "--out", out,
           NULL);
  assert_int_equal(r->exit_code, 0);
  st_safetensors *f = NULL;
  ST_ASSERT_OK(st_safetensors_open(out, &f));
  st_dtype dt;
  int ndim;
  int64_t shape[ST_MAX_DIMS];
  ST_ASSERT_OK(st_safetensors_info(f, "logits", &dt, &ndim, shape));
  assert_int_equal(ndim, 3);
  assert_int_equal(shape[0], 9);
  assert_int_equal(shape[1], 37);
  assert_int_equal(shape[2], 59);
  st_safetensors_free(f);
  assert_file_tensor_close(out, "logits", "student_37x59.safetensors",
                           "logits", 1e-4);
  free(r);
}

/* Parses the per-step JSON lines and checks them against reference losses. */
static void assert_step_lines(const char *out, const char *fixture,
                              const char *key, int steps) {
  st_safetensors *fx = st_test_fixture_open(fixture);
  st_tensor want = st_test_fixture_tensor(fx, key);
  assert_int_equal(count_lines(out), steps);
  const char *line = out;
  for (int k = 1; k <= steps; k++) {
    int step;
    float loss;
    double miou;
    assert_int_equal(sscanf(line, "{\"step\":%d,\"loss\":%g,\"miou\":%lg}",
                            &step, &loss, &miou),
                     3);
    assert_int_equal(step, k);
    assert_true(miou >= 0.0 && miou <= 1.0);
    st_test_assert_close(&loss, (float *)want.data + k - 1, 1, 1e-4, 0.0,
                         key);
    line = strchr(line, '\n') + 1;
  }
  st_tensor_free(&want);
  st_safetensors_free(fx);
}

static void test_distill_matches_reference(void **state) {
  (void)state;
  run_result *r = malloc(sizeof *r);
  const char *w2 = work_path("distilled.safetensors");
  const char *input = fixture("student_45x83.safetensors");
  run_tool(r, "distill", "--config", config_path(), "--weights",
           fixture("student_weights.safetensors"), "--input",
           input, "--steps", "2", "--out", w2, NULL);
  assert_int_equal(r->exit_code, 0);
  assert_step_lines(r->out, "student_45x83.safetensors", "losses", 2);
  /* The distilled weights, judged by their effect. */
  const char *logits = work_path("after.safetensors");
  run_tool(r, "forward", "--config", config_path(), "--weights", w2,
           "--input", input, "--out", logits, NULL);
  assert_int_equal(r->exit_code, 0);
  assert_file_tensor_close(logits, "logits", "student_45x83.safetensors",
                           "logits_after", 1e-3);
  /* --full trains everything. */
  run_tool(r, "distill", "--config", config_path(), "--weights",
           fixture("student_weights.safetensors"), "--input",
           fixture("student_37x59.safetensors"), "--steps", "2",
           "--full", "--lr", "0.01", "--out", w2, NULL);
  assert_int_equal(r->exit_code, 0);
  assert_step_lines(r->out, "student_37x59.safetensors", "full_losses", 2);
  free(r);
}

/* The teacher's output feeds a distillation of the frame it labelled. */
static void test_distill_on_teacher_labels(void **state) {
  (void)state;
  run_result *r = malloc(sizeof *r);
  const char *frame = fixture("teacher_small_ref.safetensors");
  const char *labels = work_path("teacher.safetensors");
  const char *w2 = work_path("w2.safetensors");
  char teacher_cfg[600];
  snprintf(teacher_cfg, sizeof teacher_cfg, "%s/../../config/teacher-small.json",
           st_test_fixture_dir());
  run_tool(r, "teacher", "--config", teacher_cfg, "--input", frame, "--out",
           labels, NULL);
  assert_int_equal(r->exit_code, 0);
  run_tool(r, "distill", "--config", config_path(), "--weights",
           fixture("student_weights.safetensors"), "--input", frame,
           "--labels", labels, "--steps", "2", "--out", w2, NULL);
  assert_int_equal(r->exit_code, 0);
  assert_int_equal(count_lines(r->out), 2);
  assert_non_null(strstr(r->out, "{\"step\":2,\"loss\":"));
  /* Every student tensor was written. */
  st_safetensors *f = NULL, *w0 = st_test_fixture_open("student_weights.safetensors");
  ST_ASSERT_OK(st_safetensors_open(w2, &f));
  assert_int_equal(st_safetensors_count(f), st_safetensors_count(w0));
  st_safetensors_free(f);
  st_safetensors_free(w0);
  /* Labels of another frame size, and a missing labels file. */
  run_tool(r, "distill", "--config", config_path(), "--weights",
           fixture("student_weights.safetensors"), "--input",
           fixture("student_37x59.safetensors"), "--labels", labels,
           "--steps", "1", "--out", w2, NULL);
  assert_usage_error(r, "sizes differ");
  run_tool(r, "distill", "--config", config_path(), "--weights",
           fixture("student_weights.safetensors"), "--input", frame,
           "--labels", work_path("none.safetensors"), "--steps", "1", "--out",
           w2, NULL);
  assert_usage_error(r, "--labels");
  free(r);
}

static void test_bench_reports(void **state) {
  (void)state;
  run_result *r = malloc(sizeof *r);
  run_tool(r, "bench", "--config", config_path(), "--height", "41",
           "--width", "67", "--iters", "2", "--threads", "1", NULL);
  assert_int_equal(r->exit_code, 0);
  const char *json = strstr(r->out, "{\"backend\":\"cpu\",\"cpu_isa\":\"");
  assert_non_null(json);
  char isa[16] = "";
  assert_int_equal(
      sscanf(json, "{\"backend\":\"cpu\",\"cpu_isa\":\"%15[a-z0-9]", isa), 1);
  assert_true(!strcmp(isa, "baseline") || !strcmp(isa, "avx2") ||
              !strcmp(isa, "avx512"));
  assert_non_null(
      strstr(json, "\",\"height\":41,\"width\":67,\"iters\":2,"));
  char human[48];
  snprintf(human, sizeof human, "backend cpu (%s kernels), 41x67", isa);
  assert_non_null(strstr(r->out, human));
  double infer = -1.0, step = -1.0, recompute = -1.0;
  const char *a = strstr(json, "\"infer_ms_median\":");
  const char *b = strstr(json, "\"distill_step_ms_median\":");
  const char *c = strstr(json, "\"distill_step_recompute_ms_median\":");
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(c);
  assert_int_equal(sscanf(a, "\"infer_ms_median\":%lf", &infer), 1);
  assert_int_equal(sscanf(b, "\"distill_step_ms_median\":%lf", &step), 1);
  assert_int_equal(
      sscanf(c, "\"distill_step_recompute_ms_median\":%lf", &recompute), 1);
  assert_true(infer > 0.0 && step > 0.0 && recompute > 0.0);
  double predict = -1.0;
  const char *d = strstr(json, "\"predict_ms_median\":");
  assert_non_null(d);
  assert_int_equal(sscanf(d, "\"predict_ms_median\":%lf", &predict), 1);
  assert_true(predict > 0.0);
  assert_non_null(strstr(json, "\"predict_peak_rss_mb\":"));
  assert_non_null(strstr(r->out, "reuse / recompute"));
  free(r);
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void test_bad_input_exits_2(void **state) {
  (void)state;
  run_result *r = malloc(sizeof *r);
  const char *cfg = config_path();
  const char *weights = fixture("student_weights.safetensors");
  const char *input = fixture("student_37x59.safetensors");
  const char *out = work_path("o.safetensors");

  run_tool(r, NULL);
  assert_int_equal(r->exit_code, 2);
  run_tool(r, "train", NULL);
  assert_usage_error(r, "unknown command 'train'");
  run_tool(r, "forward", "--bogus", "1", NULL);
  assert_usage_error(r, "unknown flag '--bogus'");
  run_tool(r, "forward", "--weights", weights, "--input", input, "--out", out,
           NULL);
  assert_usage_error(r, "--config is required");
  run_tool(r, "forward", "--config", cfg, "--input", input, "--out", out,
           NULL);
  assert_usage_error(r, "--weights is required");
  run_tool(r, "distill", "--config", cfg, "--weights", weights, "--input",
           input, "--steps", "two", "--out", out, NULL);
  assert_usage_error(r, "--steps expects an integer");
  run_tool(r, "distill", "--config", cfg, "--weights", weights, "--input",
           input, "--out", out, NULL);
  assert_usage_error(r, "--steps is required");
  run_tool(r, "distill", "--config", cfg, "--weights", weights, "--input",
           input, "--steps", "1", "--lr", "-1", "--out", out, NULL);
  assert_usage_error(r, "--lr expects a positive number");
  run_tool(r, "forward", "--config", cfg, "--weights", weights, "--input",
           input, "--out", out, "--backend", "tpu", NULL);
  assert_usage_error(r, "unknown backend 'tpu'");
  run_tool(r, "bench", "--config", cfg, "--height", "0", NULL);
  assert_usage_error(r, "--height expects an integer");
  run_tool(r, "forward", "--config", cfg, "--weights", weights, "--input",
           input, "--out", NULL);
  assert_usage_error(r, "--out needs a value");

  /* Files that are missing, not safetensors, or hold the wrong tensors. */
  run_tool(r, "forward", "--config", cfg, "--weights",
           work_path("missing.safetensors"), "--input", input, "--out", out,
           NULL);
  assert_usage_error(r, "missing.safetensors");
  run_tool(r, "forward", "--config", cfg, "--weights", cfg, "--input", input,
           "--out", out, NULL);
  assert_usage_error(r, "--weights");
  run_tool(r, "forward", "--config", cfg, "--weights", input, "--input",
           input, "--out", out, NULL);
  assert_usage_error(r, "not a student tensor");
  run_tool(r, "forward", "--config", cfg, "--weights", weights, "--input",
           weights, "--out", out, NULL);
  assert_usage_error(r, "'image'");
  /* An image of the wrong dtype and a label of the wrong size. */
  float pixels[2 * 3 * 3] = {0};
  uint8_t label[2 * 2] = {0};
  float weight[2 * 3] = {0};
  const int64_t img_shape[3] = {2, 3, 3}, lab_shape[2] = {2, 2},
                w_shape[2] = {2, 3};
  st_tensor img = st_tensor_view(pixels, ST_F32, 3, img_shape);
  st_tensor lab = st_tensor_view(label, ST_U8, 2, lab_shape);
  st_tensor wt = st_tensor_view(weight, ST_F32, 2, w_shape);
  st_named_tensor bad_img[1] = {{"image", &img}};
  const char *bad = work_path("bad.safetensors");
  ST_ASSERT_OK(st_safetensors_write(bad, bad_img, 1, NULL));
  run_tool(r, "forward", "--config", cfg, "--weights", weights, "--input",
           bad, "--out", out, NULL);
  assert_usage_error(r, "expected U8 [H,W,3]");
  uint8_t rgb[2 * 3 * 3] = {0};
  st_tensor img8 = st_tensor_view(rgb, ST_U8, 3, img_shape);
  st_named_tensor bad_lab[3] = {
      {"image", &img8}, {"label", &lab}, {"weight", &wt}};
  ST_ASSERT_OK(st_safetensors_write(bad, bad_lab, 3, NULL));
  run_tool(r, "distill", "--config", cfg, "--weights", weights, "--input",
           bad, "--steps", "1", "--out", out, NULL);
  assert_usage_error(r, "sizes differ");
  /* A config that is not valid. */
  const char *bad_cfg = work_path("bad.json");
  write_text(bad_cfg, "{\"num_classes\": 1}");
  run_tool(r, "bench", "--config", bad_cfg, NULL);
  assert_usage_error(r, "num_classes");
  /* An output that cannot be written. */
  run_tool(r, "forward", "--config", cfg, "--weights", weights, "--input",
           input, "--out", work_path("no/such/dir/o.safetensors"), NULL);
  assert_usage_error(r, "--out");
  free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_matches_reference),
      cmocka_unit_test(test_distill_matches_reference),
      cmocka_unit_test(test_distill_on_teacher_labels),
      cmocka_unit_test(test_bench_reports),
      cmocka_unit_test(test_bad_input_exits_2),
  };
  return cmocka_run_group_tests_name("shadowtutor-model", tests, setup,
                                     teardown);
}
