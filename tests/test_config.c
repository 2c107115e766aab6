/* The student config: defaults, the shipped config/student.json, every
 * field read from JSON, and every rejected value with its message.
 * No compute backend is involved, so these tests run once. */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "models/config.h"

/* The repository's config/student.json, found from the fixture folder. */
#define STUDENT_JSON_PATH st_test_fixture_path("../../config/student.json")

enum { JSON_TEXT_BYTES = 1024 };

/* Test JSON is written with single quotes for readability; this turns them
 * into double quotes (static buffer). */
static const char *q(const char *text) {
  static char buf[JSON_TEXT_BYTES];
  size_t n = strlen(text);
  assert_true(n < sizeof buf);
  for (size_t i = 0; i <= n; i++)
    buf[i] = text[i] == '\'' ? '"' : text[i];
  return buf;
}

static void assert_config_equal(const st_student_config *a,
                                const st_student_config *b) {
  assert_int_equal(a->num_classes, b->num_classes);
  assert_memory_equal(a->channel_order, b->channel_order,
                      sizeof a->channel_order);
  for (int i = 0; i < 3; i++) {
    assert_true(a->mean[i] == b->mean[i]);
    assert_true(a->std[i] == b->std[i]);
  }
  assert_true(a->threshold == b->threshold);
  assert_int_equal(a->min_stride, b->min_stride);
  assert_int_equal(a->max_stride, b->max_stride);
  assert_int_equal(a->max_updates, b->max_updates);
  assert_true(a->lr == b->lr);
  assert_int_equal(a->trainable_full, b->trainable_full);
  assert_int_equal(a->trainable_count, b->trainable_count);
  for (int i = 0; i < a->trainable_count; i++)
    assert_string_equal(a->trainable[i], b->trainable[i]);
  assert_int_equal(a->seed, b->seed);
}

/* The paper's values, written out literally rather than through the
 * ST_STUDENT_DEFAULT_* macros the code uses. */
static void test_defaults_are_the_paper_values(void **state) {
  (void)state;
  st_student_config c;
  memset(&c, 0x5a, sizeof c);
  st_student_config_defaults(&c);
  assert_int_equal(c.num_classes, 9);
  assert_int_equal(c.channel_order[0], 2);
  assert_int_equal(c.channel_order[1], 1);
  assert_int_equal(c.channel_order[2], 0);
  assert_true(c.mean[0] == 103.530f);
  assert_true(c.mean[1] == 116.280f);
  assert_true(c.mean[2] == 123.675f);
  for (int i = 0; i < 3; i++)
    assert_true(c.std[i] == 1.0f);
  assert_true(c.threshold == 0.8);
  assert_int_equal(c.min_stride, 8);
  assert_int_equal(c.max_stride, 64);
  assert_int_equal(c.max_updates, 8);
  assert_true(c.lr == 0.01);
  assert_int_equal(c.trainable_full, 0);
  static const char *const want[] = {"dec2", "dec3", "out_conv1", "out_conv2",
                                     "out_conv3"};
  assert_int_equal(c.trainable_count, 5);
  for (int i = 0; i < 5; i++)
    assert_string_equal(c.trainable[i], want[i]);
  assert_int_equal(c.seed, 0);
  st_stride_params sp = st_student_config_stride(&c);
  assert_true(sp.threshold == 0.8);
  assert_int_equal(sp.min_stride, 8);
  assert_int_equal(sp.max_stride, 64);
  ST_ASSERT_OK(st_stride_params_check(&sp));
  st_distill_params dp = st_student_config_distill(&c);
  assert_true(dp.threshold == 0.8);
  assert_int_equal(dp.max_updates, 8);
  ST_ASSERT_OK(st_distill_params_check(&dp));
}

/* The shipped file spells out every key (so it documents the schema) and
 * its values are the defaults. */
static void test_student_json_equals_defaults(void **state) {
  (void)state;
  json_error_t err;
  json_t *root = json_load_file(STUDENT_JSON_PATH, 0, &err);
  if (!root)
    fail_msg("%s:%d: %s", STUDENT_JSON_PATH, err.line, err.text);
  static const char *const paths[][2] = {
      {"num_classes", NULL},       {"seed", NULL},
      {"input", "channel_order"},  {"input", "mean"},
      {"input", "std"},            {"distill", "threshold"},
      {"distill", "max_updates"},  {"distill", "lr"},
      {"distill", "trainable"},    {"stride", "min"},
      {"stride", "max"},
  };
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    json_t *v = json_object_get(root, paths[i][0]);
    if (v && paths[i][1])
      v = json_object_get(v, paths[i][1]);
    if (!v)
      fail_msg("student.json lacks %s%s%s", paths[i][0],
               paths[i][1] ? "." : "", paths[i][1] ? paths[i][1] : "");
  }
  json_decref(root);

  st_student_config file, defaults;
  ST_ASSERT_OK(st_student_config_load(STUDENT_JSON_PATH, &file));
  st_student_config_defaults(&defaults);
  assert_config_equal(&file, &defaults);
}

static void test_every_field_is_read(void **state) {
  (void)state;
  const char *text = q(
      "{'num_classes': 21,"
      " 'input': {'channel_order': 'rgb', 'mean': [1, 2.5, -3],"
      "           'std': [58.395, 57.12, 57.375]},"
      " 'distill': {'threshold': 0.65, 'max_updates': 0, 'lr': 0.001,"
      "             'trainable': ['out_conv3', 'enc1']},"
      " 'stride': {'min': 2, 'max': 2}, 'seed': 42}");
  st_student_config c;
  ST_ASSERT_OK(st_student_config_parse(text, "t.json", &c));
  assert_int_equal(c.num_classes, 21);
  assert_int_equal(c.channel_order[0], 0);
  assert_int_equal(c.channel_order[1], 1);
  assert_int_equal(c.channel_order[2], 2);
  assert_true(c.mean[0] == 1.0f && c.mean[1] == 2.5f && c.mean[2] == -3.0f);
  assert_true(c.std[0] == 58.395f && c.std[1] == 57.12f &&
              c.std[2] == 57.375f);
  assert_true(c.threshold == 0.65);
  assert_int_equal(c.max_updates, 0);
  assert_true(c.lr == 0.001);
  assert_int_equal(c.trainable_full, 0);
  assert_int_equal(c.trainable_count, 2);
  assert_string_equal(c.trainable[0], "out_conv3");
  assert_string_equal(c.trainable[1], "enc1");
  assert_int_equal(c.min_stride, 2);
  assert_int_equal(c.max_stride, 2);
  assert_int_equal(c.seed, 42);

  ST_ASSERT_OK(st_student_config_parse(
      q("{'distill': {'trainable': 'full'}}"), "t.json", &c));
  assert_int_equal(c.trainable_full, 1);
  assert_int_equal(c.trainable_count, 0);
  /* Every module name of the student is accepted. */
  ST_ASSERT_OK(st_student_config_parse(
      q("{'distill': {'trainable': ['in_conv1', 'in_conv2', 'enc1', 'enc2',"
        " 'enc3', 'dec1', 'dec2', 'dec3', 'out_conv1', 'out_conv2',"
        " 'out_conv3']}}"),
      "t.json", &c));
  assert_int_equal(c.trainable_count, 11);
  assert_string_equal(c.trainable[10], "out_conv3");
}

static void test_missing_keys_take_defaults(void **state) {
  (void)state;
  st_student_config defaults, c;
  st_student_config_defaults(&defaults);
  ST_ASSERT_OK(st_student_config_parse("{}", "t.json", &c));
  assert_config_equal(&c, &defaults);
  ST_ASSERT_OK(st_student_config_parse(
      q("{'input': {}, 'distill': {}, 'stride': {}}"), "t.json", &c));
  assert_config_equal(&c, &defaults);
  /* One key changes exactly one field. */
  ST_ASSERT_OK(
      st_student_config_parse(q("{'stride': {'max': 128}}"), "t.json", &c));
  st_student_config want = defaults;
  want.max_stride = 128;
  assert_config_equal(&c, &want);
}

typedef struct bad_case {
  const char *json; /* single-quoted, see q() */
  int code;
  const char *message;
} bad_case;

static const bad_case bad_cases[] = {
    {"[]", ST_EFORMAT, "s.json: top level must be an object"},
    {"{'foo': 1}", ST_EFORMAT, "s.json: unknown key foo"},
    {"{'distill': {'thresh': 0.5}}", ST_EFORMAT,
     "s.json: unknown key distill.thresh"},
    {"{'input': {'order': 'bgr'}}", ST_EFORMAT,
     "s.json: unknown key input.order"},
    {"{'stride': {'minimum': 1}}", ST_EFORMAT,
     "s.json: unknown key stride.minimum"},
    {"{'input': 3}", ST_EFORMAT, "s.json: input must be an object"},
    {"{'distill': []}", ST_EFORMAT, "s.json: distill must be an object"},
    {"{'num_classes': 9.0}", ST_EFORMAT,
     "s.json: num_classes must be an integer"},
    {"{'num_classes': '9'}", ST_EFORMAT,
     "s.json: num_classes must be an integer"},
    {"{'num_classes': 1}", ST_EINVAL, "s.json: num_classes must be in [2, 256]"},
    {"{'num_classes': 257}", ST_EINVAL,
     "s.json: num_classes must be in [2, 256]"},
    {"{'input': {'channel_order': 'grb'}}", ST_EINVAL,
     "s.json: input.channel_order must be \"bgr\" or \"rgb\""},
    {"{'input': {'channel_order': 'BGR'}}", ST_EINVAL,
     "s.json: input.channel_order must be \"bgr\" or \"rgb\""},
    {"{'input': {'channel_order': 0}}", ST_EFORMAT,
     "s.json: input.channel_order must be a string"},
    {"{'input': {'mean': [1, 2]}}", ST_EFORMAT,
     "s.json: input.mean must be an array of 3 numbers"},
    {"{'input': {'mean': 1}}", ST_EFORMAT,
     "s.json: input.mean must be an array of 3 numbers"},
    {"{'input': {'mean': [1, 'x', 3]}}", ST_EFORMAT,
     "s.json: input.mean[1] must be a number"},
    {"{'input': {'mean': [1, 2, 1e300]}}", ST_EINVAL,
     "s.json: input.mean[2] is too large for a float"},
    {"{'input': {'std': [1, 0, 1]}}", ST_EINVAL,
     "s.json: input.std[1] must be non-zero"},
    {"{'input': {'std': [1, 1, 0.0]}}", ST_EINVAL,
     "s.json: input.std[2] must be non-zero"},
    {"{'distill': {'threshold': 0}}", ST_EINVAL,
     "s.json: distill.threshold must be in (0,1)"},
    {"{'distill': {'threshold': 1.0}}", ST_EINVAL,
     "s.json: distill.threshold must be in (0,1)"},
    {"{'distill': {'threshold': -0.5}}", ST_EINVAL,
     "s.json: distill.threshold must be in (0,1)"},
    {"{'distill': {'threshold': '0.8'}}", ST_EFORMAT,
     "s.json: distill.threshold must be a number"},
    {"{'distill': {'max_updates': -1}}", ST_EINVAL,
     "s.json: distill.max_updates must be >= 0"},
    {"{'distill': {'max_updates': 3000000000}}", ST_EINVAL,
     "s.json: distill.max_updates must be in [0, 2147483647]"},
    {"{'distill': {'max_updates': 1.5}}", ST_EFORMAT,
     "s.json: distill.max_updates must be an integer"},
    {"{'distill': {'lr': 0}}", ST_EINVAL, "s.json: distill.lr must be > 0"},
    {"{'distill': {'lr': -0.01}}", ST_EINVAL, "s.json: distill.lr must be > 0"},
    {"{'distill': {'lr': null}}", ST_EFORMAT,
     "s.json: distill.lr must be a number"},
    {"{'distill': {'trainable': ['dec2', 'decoder']}}", ST_EINVAL,
     "s.json: distill.trainable[1]: 'decoder' is not a student module"},
    {"{'distill': {'trainable': ['dec2.']}}", ST_EINVAL,
     "s.json: distill.trainable[0]: 'dec2.' is not a student module"},
    {"{'distill': {'trainable': ['dec2', 'dec3', 'dec2']}}", ST_EINVAL,
     "s.json: distill.trainable[2]: 'dec2' is listed twice"},
    {"{'distill': {'trainable': []}}", ST_EINVAL,
     "s.json: distill.trainable must name at least one module"},
    {"{'distill': {'trainable': 'all'}}", ST_EINVAL,
     "s.json: distill.trainable must be \"full\" or an array of module names"},
    {"{'distill': {'trainable': 5}}", ST_EFORMAT,
     "s.json: distill.trainable must be \"full\" or an array of module names"},
    {"{'distill': {'trainable': ['dec2', 3]}}", ST_EFORMAT,
     "s.json: distill.trainable[1] must be a string"},
    {"{'stride': {'min': 0}}", ST_EINVAL, "s.json: stride.min must be >= 1"},
    {"{'stride': {'max': 0}}", ST_EINVAL, "s.json: stride.max must be >= 1"},
    {"{'stride': {'min': 16, 'max': 8}}", ST_EINVAL,
     "s.json: stride.max (8) must be >= stride.min (16)"},
    {"{'stride': {'max': 4}}", ST_EINVAL,
     "s.json: stride.max (4) must be >= stride.min (8)"},
    {"{'stride': {'min': 100}}", ST_EINVAL,
     "s.json: stride.max (64) must be >= stride.min (100)"},
    {"{'stride': {'min': 'x'}}", ST_EFORMAT,
     "s.json: stride.min must be an integer"},
    {"{'seed': -1}", ST_EINVAL, "s.json: seed must be >= 0"},
    {"{'seed': true}", ST_EFORMAT, "s.json: seed must be an integer"},
};

static void test_bad_values_rejected(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
    st_student_config c, untouched;
    memset(&c, 0x5a, sizeof c);
    untouched = c;
    st_error_clear();
    int rc = st_student_config_parse(q(bad_cases[i].json), "s.json", &c);
    if (rc != bad_cases[i].code ||
        strcmp(st_error_detail(), bad_cases[i].message) != 0)
      fail_msg("%s: got %s \"%s\", want %s \"%s\"", bad_cases[i].json,
               st_err_name(rc), st_error_detail(),
               st_err_name(bad_cases[i].code), bad_cases[i].message);
    /* A rejected config leaves the caller's struct alone. */
    assert_memory_equal(&c, &untouched, sizeof c);
  }
}

/* Errors the JSON parser reports, with the file and position. */
static void test_syntax_errors(void **state) {
  (void)state;
  st_student_config c;
  static const char *const texts[] = {
      "{", "", "{\"seed\": 0,}", "{\"seed\": 0} x",
      "{\"seed\": 0, \"seed\": 1}", /* duplicate keys are rejected */
  };
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    assert_int_equal(st_student_config_parse(texts[i], "s.json", &c),
                     ST_EFORMAT);
    assert_true(strncmp(st_error_detail(), "s.json:1:", 9) == 0);
  }
}

static void test_load_errors(void **state) {
  (void)state;
  st_student_config c;
  const char *missing = st_test_fixture_path("no-such-student.json");
  assert_int_equal(st_student_config_load(missing, &c), ST_ENOENT);
  assert_true(strncmp(st_error_detail(), missing, strlen(missing)) == 0);

  /* A file with a bad value names the file's path. */
  char path[] = "/tmp/st_test_config_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  assert_non_null(f);
  fputs("{\n  \"distill\": {\"threshold\": 2}\n}\n", f);
  fclose(f);
  int rc = st_student_config_load(path, &c);
  remove(path);
  assert_int_equal(rc, ST_EINVAL);
  char want[256];
  snprintf(want, sizeof want, "%s: distill.threshold must be in (0,1)", path);
  assert_string_equal(st_error_detail(), want);

  assert_int_equal(st_student_config_load(NULL, &c), ST_EINVAL);
  assert_int_equal(st_student_config_parse(NULL, "s.json", &c), ST_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults_are_the_paper_values),
      cmocka_unit_test(test_student_json_equals_defaults),
      cmocka_unit_test(test_every_field_is_read),
      cmocka_unit_test(test_missing_keys_take_defaults),
      cmocka_unit_test(test_bad_values_rejected),
      cmocka_unit_test(test_syntax_errors),
      cmocka_unit_test(test_load_errors),
  };
  return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
