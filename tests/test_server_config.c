/* The server config (src/loop/server_config.h): defaults, the shipped
 * config/server.json, every field read from JSON, every rejected value
 * with its exact message, the "distill" overrides over the student config
 * file, the bootstrap null rule, path resolution, and --listen parsing.
 * No compute backend is involved, so these tests run once. */
#include "testutil.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "loop/server_config.h"

/* The repository's config folder, found from the fixture folder. */
#define CONFIG_DIR_REL "../../config"

enum { JSON_TEXT_BYTES = 4096 };

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

/* Online cores / workers, at least 1: computed here independently. */
static int expected_threads(int workers) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  assert_true(cores >= 1);
  long per = cores / workers;
  return per >= 1 ? (int)per : 1;
}

static void assert_student_equal(const st_student_config *a,
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

static void assert_server_config_equal(const st_server_config *a,
                                       const st_server_config *b) {
  assert_string_equal(a->listen_host, b->listen_host);
  assert_int_equal(a->listen_port, b->listen_port);
  assert_string_equal(a->metrics_host, b->metrics_host);
  assert_int_equal(a->metrics_port, b->metrics_port);
  assert_int_equal(a->backend, b->backend);
  assert_int_equal(a->device, b->device);
  assert_int_equal(a->workers, b->workers);
  assert_int_equal(a->threads_per_worker, b->threads_per_worker);
  assert_int_equal(a->deterministic, b->deterministic);
  assert_int_equal(a->conv_exhaustive, b->conv_exhaustive);
  assert_int_equal(a->cuda_graphs, b->cuda_graphs);
  assert_int_equal(a->null_compute, b->null_compute);
  assert_string_equal(a->teacher_path, b->teacher_path);
  assert_string_equal(a->student_config_path, b->student_config_path);
  assert_string_equal(a->student_weights_path, b->student_weights_path);
  assert_student_equal(&a->student, &b->student);
  assert_int_equal(a->update_encoding, b->update_encoding);
  assert_int_equal(a->bootstrap_full_keyframes, b->bootstrap_full_keyframes);
  assert_memory_equal(&a->limits, &b->limits, sizeof a->limits);
  assert_int_equal(a->has_token, b->has_token);
  if (a->has_token)
    assert_string_equal(a->token, b->token);
  assert_int_equal(a->log_level, b->log_level);
}

/* The documented defaults, written out literally rather than through the
 * ST_SERVER_DEFAULT_* macros the code uses. */
static void test_defaults(void **state) {
  (void)state;
  st_server_config c;
  memset(&c, 0x5a, sizeof c);
  st_server_config_defaults(&c);
  assert_string_equal(c.listen_host, "127.0.0.1");
  assert_int_equal(c.listen_port, 7700);
  assert_string_equal(c.metrics_host, "127.0.0.1");
  assert_int_equal(c.metrics_port, 0);
  assert_int_equal(c.backend, ST_BACKEND_CPU);
  assert_int_equal(c.device, 0);
  assert_int_equal(c.workers, 1);
  assert_int_equal(c.threads_per_worker, expected_threads(1));
  assert_int_equal(c.deterministic, 0);
  assert_int_equal(c.conv_exhaustive, 1);
  assert_int_equal(c.cuda_graphs, 1);
  assert_int_equal(c.null_compute, 0);
  assert_string_equal(c.teacher_path, "");
  assert_string_equal(c.student_config_path, "");
  assert_string_equal(c.student_weights_path, "");
  st_student_config student;
  st_student_config_defaults(&student);
  assert_student_equal(&c.student, &student);
  assert_int_equal(c.update_encoding, ST_UPDATE_F16_DELTA);
  assert_int_equal(c.bootstrap_full_keyframes, 16);
  assert_int_equal(c.limits.max_clients, 256);
  assert_int_equal(c.limits.max_message_bytes, 16777216);
  assert_int_equal(c.limits.max_frame_width, 3840);
  assert_int_equal(c.limits.max_frame_height, 2160);
  assert_int_equal(c.limits.handshake_timeout_ms, 5000);
  assert_int_equal(c.limits.idle_timeout_ms, 60000);
  assert_int_equal(c.limits.message_timeout_ms, 10000);
  assert_int_equal(c.limits.max_write_queue_bytes, 67108864);
  assert_int_equal(c.limits.shutdown_timeout_ms, 10000);
  assert_int_equal(c.limits.session_linger_ms, 60000);
  assert_int_equal(c.has_token, 0);
  assert_int_equal(c.log_level, ST_LOG_INFO);
}

/* config/server.json spells out every key (operators read it as
 * documentation), loads, and its paths lead to the repository's files. */
static void test_shipped_config(void **state) {
  (void)state;
  char dir[PATH_MAX], path[PATH_MAX + 32], want[PATH_MAX + 64];
  snprintf(dir, sizeof dir, "%s", st_test_fixture_path(CONFIG_DIR_REL));
  snprintf(path, sizeof path, "%s/server.json", dir);

  json_error_t err;
  json_t *root = json_load_file(path, 0, &err);
  if (!root)
    fail_msg("%s:%d: %s", path, err.line, err.text);
  static const char *const keys[][2] = {
      {"listen", "host"},
      {"listen", "port"},
      {"metrics", "host"},
      {"metrics", "port"},
      {"backend", NULL},
      {"device", NULL},
      {"workers", NULL},
      {"threads_per_worker", NULL},
      {"deterministic", NULL},
      {"conv_search", NULL},
      {"cuda_graphs", NULL},
      {"null_compute", NULL},
      {"teacher", NULL},
      {"student", "config"},
      {"student", "weights"},
      {"distill", "threshold"},
      {"distill", "min_stride"},
      {"distill", "max_stride"},
      {"distill", "max_updates"},
      {"distill", "lr"},
      {"distill", "trainable"},
      {"distill", "update_encoding"},
      {"distill", "bootstrap_full_keyframes"},
      {"limits", "max_clients"},
      {"limits", "max_message_bytes"},
      {"limits", "max_frame_width"},
      {"limits", "max_frame_height"},
      {"limits", "handshake_timeout_ms"},
      {"limits", "idle_timeout_ms"},
      {"limits", "message_timeout_ms"},
      {"limits", "max_write_queue_bytes"},
      {"limits", "shutdown_timeout_ms"},
      {"limits", "session_linger_ms"},
      {"token", NULL},
      {"log_level", NULL},
  };
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    json_t *v = json_object_get(root, keys[i][0]);
    if (v && keys[i][1])
      v = json_object_get(v, keys[i][1]);
    if (!v)
      fail_msg("server.json lacks %s%s%s", keys[i][0], keys[i][1] ? "." : "",
               keys[i][1] ? keys[i][1] : "");
  }
  json_decref(root);

  st_server_config c;
  ST_ASSERT_OK(st_server_config_load(path, &c));
  assert_string_equal(c.listen_host, "127.0.0.1");
  assert_int_equal(c.listen_port, 7700);
  assert_string_equal(c.metrics_host, "127.0.0.1");
  assert_int_equal(c.metrics_port, 9700);
  assert_int_equal(c.backend, ST_BACKEND_CPU);
  assert_int_equal(c.device, 0);
  assert_int_equal(c.workers, 1);
  assert_int_equal(c.threads_per_worker, expected_threads(1));
  assert_int_equal(c.deterministic, 0);
  assert_int_equal(c.conv_exhaustive, 1);
  assert_int_equal(c.cuda_graphs, 1);
  assert_int_equal(c.null_compute, 0);
  snprintf(want, sizeof want, "%s/teacher-small.json", dir);
  assert_string_equal(c.teacher_path, want);
  assert_int_equal(access(c.teacher_path, R_OK), 0);
  snprintf(want, sizeof want, "%s/student.json", dir);
  assert_string_equal(c.student_config_path, want);
  assert_int_equal(access(c.student_config_path, R_OK), 0);
  assert_string_equal(c.student_weights_path, "");
  /* The shipped student config and distill values are the defaults. */
  st_student_config student;
  st_student_config_defaults(&student);
  assert_student_equal(&c.student, &student);
  assert_int_equal(c.update_encoding, ST_UPDATE_F16_DELTA);
  assert_int_equal(c.bootstrap_full_keyframes, 16);
  st_server_config defaults;
  st_server_config_defaults(&defaults);
  assert_memory_equal(&c.limits, &defaults.limits, sizeof c.limits);
  assert_int_equal(c.has_token, 0);
  assert_int_equal(c.log_level, ST_LOG_INFO);
}

static void test_every_field_is_read(void **state) {
  (void)state;
  const char *text =
      q("{'listen': {'host': '0.0.0.0', 'port': 0},"
        " 'metrics': {'host': '::1', 'port': 65535},"
        " 'backend': 'auto', 'device': 3, 'workers': 4,"
        " 'threads_per_worker': 7, 'deterministic': true,"
        " 'conv_search': 'heuristic', 'cuda_graphs': false,"
        " 'null_compute': false, 'teacher': 'models/t.json',"
        " 'student': {'config': null, 'weights': '/w/base.safetensors'},"
        " 'distill': {'threshold': 0.5, 'min_stride': 2, 'max_stride': 2,"
        "             'max_updates': 0, 'lr': 0.125,"
        "             'trainable': ['out_conv3', 'enc1'],"
        "             'update_encoding': 'f32',"
        "             'bootstrap_full_keyframes': 1000000},"
        " 'limits': {'max_clients': 100000, 'max_message_bytes': 64,"
        "            'max_frame_width': 8192, 'max_frame_height': 1,"
        "            'handshake_timeout_ms': 3600000,"
        "            'idle_timeout_ms': 86400000, 'message_timeout_ms': 1,"
        "            'max_write_queue_bytes': 4294967296,"
        "            'shutdown_timeout_ms': 0},"
        " 'token': 'sesame', 'log_level': 'debug'}");
  st_server_config c;
  ST_ASSERT_OK(st_server_config_parse(text, "s.json", "/srv/st", &c));
  assert_string_equal(c.listen_host, "0.0.0.0");
  assert_int_equal(c.listen_port, 0);
  assert_string_equal(c.metrics_host, "::1");
  assert_int_equal(c.metrics_port, 65535);
  assert_int_equal(c.backend, ST_BACKEND_AUTO);
  assert_int_equal(c.device, 3);
  assert_int_equal(c.workers, 4);
  assert_int_equal(c.threads_per_worker, 7);
  assert_int_equal(c.deterministic, 1);
  assert_int_equal(c.conv_exhaustive, 0);
  assert_int_equal(c.cuda_graphs, 0);
  assert_int_equal(c.null_compute, 0);
  assert_string_equal(c.teacher_path, "/srv/st/models/t.json");
  assert_string_equal(c.student_config_path, "");
  assert_string_equal(c.student_weights_path, "/w/base.safetensors");
  assert_true(c.student.threshold == 0.5);
  assert_int_equal(c.student.min_stride, 2);
  assert_int_equal(c.student.max_stride, 2);
  assert_int_equal(c.student.max_updates, 0);
  assert_true(c.student.lr == 0.125);
  assert_int_equal(c.student.trainable_full, 0);
  assert_int_equal(c.student.trainable_count, 2);
  assert_string_equal(c.student.trainable[0], "out_conv3");
  assert_string_equal(c.student.trainable[1], "enc1");
  /* Keys the server config has no say over keep the student defaults. */
  assert_int_equal(c.student.num_classes, 9);
  assert_int_equal(c.student.seed, 0);
  assert_int_equal(c.update_encoding, ST_UPDATE_F32);
  assert_int_equal(c.bootstrap_full_keyframes, 1000000);
  assert_int_equal(c.limits.max_clients, 100000);
  assert_int_equal(c.limits.max_message_bytes, 64);
  assert_int_equal(c.limits.max_frame_width, 8192);
  assert_int_equal(c.limits.max_frame_height, 1);
  assert_int_equal(c.limits.handshake_timeout_ms, 3600000);
  assert_int_equal(c.limits.idle_timeout_ms, 86400000);
  assert_int_equal(c.limits.message_timeout_ms, 1);
  assert_true(c.limits.max_write_queue_bytes == 4294967296ull);
  assert_int_equal(c.limits.shutdown_timeout_ms, 0);
  assert_int_equal(c.has_token, 1);
  assert_string_equal(c.token, "sesame");
  assert_int_equal(c.log_level, ST_LOG_DEBUG);

  /* The other spellings of the enumerations. */
  static const struct {
    const char *json;
    int backend, encoding, level;
  } names[] = {
      {"{'null_compute': true, 'backend': 'cpu',"
       " 'distill': {'update_encoding': 'f16'}, 'log_level': 'error'}",
       ST_BACKEND_CPU, ST_UPDATE_F16, ST_LOG_ERROR},
      {"{'null_compute': true, 'backend': 'cuda',"
       " 'distill': {'update_encoding': 'f16-delta'}, 'log_level': 'warn'}",
       ST_BACKEND_CUDA, ST_UPDATE_F16_DELTA, ST_LOG_WARN},
      {"{'null_compute': true, 'log_level': 'info'}", ST_BACKEND_CPU,
       ST_UPDATE_F16_DELTA, ST_LOG_INFO},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    ST_ASSERT_OK(st_server_config_parse(q(names[i].json), "s.json", NULL, &c));
    assert_int_equal(c.backend, names[i].backend);
    assert_int_equal(c.update_encoding, names[i].encoding);
    assert_int_equal(c.log_level, names[i].level);
  }
}

static void test_missing_keys_take_defaults(void **state) {
  (void)state;
  st_server_config defaults, c;
  st_server_config_defaults(&defaults);
  ST_ASSERT_OK(
      st_server_config_parse(q("{'null_compute': true}"), "s.json", "/b", &c));
  st_server_config want = defaults;
  want.null_compute = 1;
  assert_server_config_equal(&c, &want);
  ST_ASSERT_OK(st_server_config_parse(
      q("{'null_compute': true, 'listen': {}, 'metrics': {}, 'student': {},"
        " 'distill': {}, 'limits': {}, 'token': null, 'teacher': null}"),
      "s.json", "/b", &c));
  assert_server_config_equal(&c, &want);
  /* One key changes exactly one field. */
  ST_ASSERT_OK(st_server_config_parse(
      q("{'teacher': 't.json', 'limits': {'max_clients': 3}}"), "s.json", "/b",
      &c));
  want = defaults;
  snprintf(want.teacher_path, sizeof want.teacher_path, "/b/t.json");
  want.limits.max_clients = 3;
  assert_server_config_equal(&c, &want);
  ST_ASSERT_OK(st_server_config_parse(
      q("{'teacher': 't.json', 'listen': {'port': 1}}"), "s.json", "/b", &c));
  want = defaults;
  snprintf(want.teacher_path, sizeof want.teacher_path, "/b/t.json");
  want.listen_port = 1;
  assert_server_config_equal(&c, &want);
}

typedef struct bad_case {
  const char *json; /* single-quoted (see q); wrapped unless raw */
  int raw;          /* 1: used as is; 0: members put after a teacher key */
  int code;
  const char *message;
} bad_case;

/* Members of a config that has its teacher ("{'teacher': 't.json', ...}"),
 * so the case's own mistake is the one reported. */
#define M(members, code, message)                                              \
  { members, 0, code, message }
#define RAW(json, code, message)                                               \
  { json, 1, code, message }

static const bad_case bad_cases[] = {
    RAW("[]", ST_EFORMAT, "s.json: top level must be an object"),
    RAW("[{}]", ST_EFORMAT, "s.json: top level must be an object"),
    /* unknown keys, at every level */
    M("'foo': 1", ST_EFORMAT, "s.json: unknown key foo"),
    M("'listen': {'hots': 'a'}", ST_EFORMAT, "s.json: unknown key listen.hots"),
    M("'metrics': {'path': '/m'}", ST_EFORMAT,
      "s.json: unknown key metrics.path"),
    M("'student': {'weight': null}", ST_EFORMAT,
      "s.json: unknown key student.weight"),
    M("'distill': {'thresh': 0.5}", ST_EFORMAT,
      "s.json: unknown key distill.thresh"),
    M("'distill': {'stride': {'min': 1}}", ST_EFORMAT,
      "s.json: unknown key distill.stride"),
    M("'limits': {'max_client': 1}", ST_EFORMAT,
      "s.json: unknown key limits.max_client"),
    /* an unknown key is found even after a value that is wrong */
    M("'workers': 0, 'limits': {'x': 1}", ST_EFORMAT,
      "s.json: unknown key limits.x"),
    /* listen / metrics */
    M("'listen': 7700", ST_EFORMAT, "s.json: listen must be an object"),
    M("'listen': {'host': 5}", ST_EFORMAT,
      "s.json: listen.host must be a string"),
    M("'listen': {'host': null}", ST_EFORMAT,
      "s.json: listen.host must be a string"),
    M("'listen': {'host': ''}", ST_EINVAL,
      "s.json: listen.host must be a non-empty string of at most 255 bytes"),
    M("'listen': {'port': '7700'}", ST_EFORMAT,
      "s.json: listen.port must be an integer"),
    M("'listen': {'port': 7700.0}", ST_EFORMAT,
      "s.json: listen.port must be an integer"),
    M("'listen': {'port': 65536}", ST_EINVAL,
      "s.json: listen.port must be in [0, 65535]"),
    M("'listen': {'port': -1}", ST_EINVAL,
      "s.json: listen.port must be in [0, 65535]"),
    M("'metrics': []", ST_EFORMAT, "s.json: metrics must be an object"),
    M("'metrics': {'host': true}", ST_EFORMAT,
      "s.json: metrics.host must be a string"),
    M("'metrics': {'host': ''}", ST_EINVAL,
      "s.json: metrics.host must be a non-empty string of at most 255 bytes"),
    M("'metrics': {'port': null}", ST_EFORMAT,
      "s.json: metrics.port must be an integer"),
    M("'metrics': {'port': 70000}", ST_EINVAL,
      "s.json: metrics.port must be in [0, 65535]"),
    /* backend, device, workers, threads */
    M("'backend': 'gpu'", ST_EINVAL,
      "s.json: backend must be \"cpu\", \"cuda\" or \"auto\""),
    M("'backend': 'CPU'", ST_EINVAL,
      "s.json: backend must be \"cpu\", \"cuda\" or \"auto\""),
    M("'backend': 1", ST_EFORMAT, "s.json: backend must be a string"),
    M("'device': -1", ST_EINVAL, "s.json: device must be >= 0"),
    M("'device': '0'", ST_EFORMAT, "s.json: device must be an integer"),
    M("'workers': 0", ST_EINVAL, "s.json: workers must be in [1, 64]"),
    M("'workers': 65", ST_EINVAL, "s.json: workers must be in [1, 64]"),
    M("'workers': 1.5", ST_EFORMAT, "s.json: workers must be an integer"),
    M("'threads_per_worker': -1", ST_EINVAL,
      "s.json: threads_per_worker must be in [0, 1024]"),
    M("'threads_per_worker': 1025", ST_EINVAL,
      "s.json: threads_per_worker must be in [0, 1024]"),
    M("'threads_per_worker': true", ST_EFORMAT,
      "s.json: threads_per_worker must be an integer"),
    M("'deterministic': 1", ST_EFORMAT,
      "s.json: deterministic must be true or false"),
    M("'conv_search': 'fast'", ST_EINVAL,
      "s.json: conv_search must be \"exhaustive\" or \"heuristic\""),
    M("'conv_search': null", ST_EFORMAT,
      "s.json: conv_search must be a string"),
    M("'cuda_graphs': 1", ST_EFORMAT,
      "s.json: cuda_graphs must be true or false"),
    M("'null_compute': 'yes'", ST_EFORMAT,
      "s.json: null_compute must be true or false"),
    /* teacher */
    RAW("{}", ST_EFORMAT,
        "s.json: teacher is required unless null_compute is true"),
    RAW("{'teacher': null}", ST_EFORMAT,
        "s.json: teacher is required unless null_compute is true"),
    RAW("{'null_compute': false}", ST_EFORMAT,
        "s.json: teacher is required unless null_compute is true"),
    RAW("{'teacher': 5}", ST_EFORMAT,
        "s.json: teacher must be a string or null"),
    RAW("{'teacher': ''}", ST_EINVAL,
        "s.json: teacher must be a non-empty path"),
    /* student */
    M("'student': 'student.json'", ST_EFORMAT,
      "s.json: student must be an object"),
    M("'student': {'config': 1}", ST_EFORMAT,
      "s.json: student.config must be a string or null"),
    M("'student': {'config': ''}", ST_EINVAL,
      "s.json: student.config must be a non-empty path"),
    M("'student': {'weights': []}", ST_EFORMAT,
      "s.json: student.weights must be a string or null"),
    M("'student': {'weights': ''}", ST_EINVAL,
      "s.json: student.weights must be a non-empty path"),
    /* distill */
    M("'distill': 0.8", ST_EFORMAT, "s.json: distill must be an object"),
    M("'distill': {'threshold': 0}", ST_EINVAL,
      "s.json: distill.threshold must be in (0,1)"),
    M("'distill': {'threshold': 1}", ST_EINVAL,
      "s.json: distill.threshold must be in (0,1)"),
    M("'distill': {'threshold': '0.8'}", ST_EFORMAT,
      "s.json: distill.threshold must be a number"),
    M("'distill': {'min_stride': 0}", ST_EINVAL,
      "s.json: distill.min_stride must be >= 1"),
    M("'distill': {'min_stride': 'x'}", ST_EFORMAT,
      "s.json: distill.min_stride must be an integer"),
    M("'distill': {'max_stride': 0}", ST_EINVAL,
      "s.json: distill.max_stride must be >= 1"),
    M("'distill': {'max_stride': 3000000000}", ST_EINVAL,
      "s.json: distill.max_stride must be in [1, 2147483647]"),
    M("'distill': {'max_stride': 4}", ST_EINVAL,
      "s.json: distill.max_stride (4) must be >= distill.min_stride (8)"),
    M("'distill': {'min_stride': 100}", ST_EINVAL,
      "s.json: distill.max_stride (64) must be >= distill.min_stride (100)"),
    M("'distill': {'min_stride': 9, 'max_stride': 8}", ST_EINVAL,
      "s.json: distill.max_stride (8) must be >= distill.min_stride (9)"),
    M("'distill': {'max_updates': -1}", ST_EINVAL,
      "s.json: distill.max_updates must be >= 0"),
    M("'distill': {'max_updates': 1.5}", ST_EFORMAT,
      "s.json: distill.max_updates must be an integer"),
    M("'distill': {'lr': 0}", ST_EINVAL, "s.json: distill.lr must be > 0"),
    M("'distill': {'lr': -0.01}", ST_EINVAL, "s.json: distill.lr must be > 0"),
    M("'distill': {'lr': null}", ST_EFORMAT,
      "s.json: distill.lr must be a number"),
    M("'distill': {'trainable': 'all'}", ST_EINVAL,
      "s.json: distill.trainable must be \"full\" or an array of module names"),
    M("'distill': {'trainable': 5}", ST_EFORMAT,
      "s.json: distill.trainable must be \"full\" or an array of module names"),
    M("'distill': {'trainable': []}", ST_EINVAL,
      "s.json: distill.trainable must name at least one module"),
    M("'distill': {'trainable': ['dec2', 3]}", ST_EFORMAT,
      "s.json: distill.trainable[1] must be a string"),
    M("'distill': {'trainable': ['dec2', 'decoder']}", ST_EINVAL,
      "s.json: distill.trainable[1]: 'decoder' is not a student module"),
    M("'distill': {'trainable': ['dec2', 'dec3', 'dec2']}", ST_EINVAL,
      "s.json: distill.trainable[2]: 'dec2' is listed twice"),
    M("'distill': {'trainable': ['dec1', 'dec1', 'dec1', 'dec1', 'dec1',"
      " 'dec1', 'dec1', 'dec1', 'dec1', 'dec1', 'dec1', 'dec1', 'dec1',"
      " 'dec1', 'dec1', 'dec1', 'dec1']}",
      ST_EINVAL, "s.json: distill.trainable has more than 16 entries"),
    M("'distill': {'update_encoding': 'f8'}", ST_EINVAL,
      "s.json: distill.update_encoding must be \"f32\", \"f16\" or "
      "\"f16-delta\""),
    M("'distill': {'update_encoding': 16}", ST_EFORMAT,
      "s.json: distill.update_encoding must be a string"),
    M("'distill': {'bootstrap_full_keyframes': -1}", ST_EINVAL,
      "s.json: distill.bootstrap_full_keyframes must be in [0, 1000000]"),
    M("'distill': {'bootstrap_full_keyframes': 1000001}", ST_EINVAL,
      "s.json: distill.bootstrap_full_keyframes must be in [0, 1000000]"),
    M("'distill': {'bootstrap_full_keyframes': 'auto'}", ST_EFORMAT,
      "s.json: distill.bootstrap_full_keyframes must be an integer or null"),
    M("'distill': {'bootstrap_full_keyframes': 2.5}", ST_EFORMAT,
      "s.json: distill.bootstrap_full_keyframes must be an integer or null"),
    /* limits (each key's range has its own table below) */
    M("'limits': []", ST_EFORMAT, "s.json: limits must be an object"),
    /* token and log level */
    M("'token': 5", ST_EFORMAT, "s.json: token must be a string or null"),
    M("'token': ''", ST_EINVAL, "s.json: token must be 1 to 256 bytes long"),
    M("'log_level': 'verbose'", ST_EINVAL,
      "s.json: log_level must be \"error\", \"warn\", \"info\" or \"debug\""),
    M("'log_level': 0", ST_EFORMAT, "s.json: log_level must be a string"),
};

/* Parses `json` expecting `code` with detail `message`, and checks the
 * caller's struct is left alone. */
static void expect_rejected(const char *json, int code, const char *message) {
  st_server_config c, untouched;
  memset(&c, 0x5a, sizeof c);
  untouched = c;
  st_error_clear();
  int rc = st_server_config_parse(json, "s.json", "/b", &c);
  if (rc != code || strcmp(st_error_detail(), message) != 0)
    fail_msg("%s: got %s \"%s\", want %s \"%s\"", json, st_err_name(rc),
             st_error_detail(), st_err_name(code), message);
  assert_memory_equal(&c, &untouched, sizeof c);
}

static void test_bad_values_rejected(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
    char text[JSON_TEXT_BYTES];
    if (bad_cases[i].raw)
      snprintf(text, sizeof text, "%s", bad_cases[i].json);
    else
      snprintf(text, sizeof text, "{'teacher': 't.json', %s}",
               bad_cases[i].json);
    expect_rejected(q(text), bad_cases[i].code, bad_cases[i].message);
  }
}

/* The field of a "limits" key, read by name. */
static unsigned long long limit_value(const st_server_limits *l,
                                      const char *key) {
  if (!strcmp(key, "max_clients"))
    return l->max_clients;
  if (!strcmp(key, "max_message_bytes"))
    return l->max_message_bytes;
  if (!strcmp(key, "max_frame_width"))
    return l->max_frame_width;
  if (!strcmp(key, "max_frame_height"))
    return l->max_frame_height;
  if (!strcmp(key, "handshake_timeout_ms"))
    return l->handshake_timeout_ms;
  if (!strcmp(key, "idle_timeout_ms"))
    return l->idle_timeout_ms;
  if (!strcmp(key, "message_timeout_ms"))
    return l->message_timeout_ms;
  if (!strcmp(key, "max_write_queue_bytes"))
    return l->max_write_queue_bytes;
  if (!strcmp(key, "shutdown_timeout_ms"))
    return l->shutdown_timeout_ms;
  if (!strcmp(key, "session_linger_ms"))
    return l->session_linger_ms;
  fail_msg("no limit %s", key);
  return 0;
}

/* Every limit: both ends accepted, one past each end refused with the key
 * and range, a wrong type refused. Ranges written out from the header. */
static void test_limit_ranges(void **state) {
  (void)state;
  static const struct {
    const char *key;
    long long lo, hi;
  } limits[] = {
      {"max_clients", 1, 100000},
      {"max_message_bytes", 64, 1073741824},
      {"max_frame_width", 1, 8192},
      {"max_frame_height", 1, 8192},
      {"handshake_timeout_ms", 1, 3600000},
      {"idle_timeout_ms", 1, 86400000},
      {"message_timeout_ms", 1, 3600000},
      {"max_write_queue_bytes", 1024, 4294967296},
      {"shutdown_timeout_ms", 0, 3600000},
      {"session_linger_ms", 0, 86400000},
  };
  char text[JSON_TEXT_BYTES], message[256];
  for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
    const char *key = limits[i].key;
    long long ends[2] = {limits[i].lo, limits[i].hi};
    for (int e = 0; e < 2; e++) {
      snprintf(text, sizeof text,
               "{\"null_compute\": true, \"limits\": {\"%s\": %lld}}", key,
               ends[e]);
      st_server_config c;
      ST_ASSERT_OK(st_server_config_parse(text, "s.json", NULL, &c));
      /* The value lands in the field named by the key. */
      assert_true(limit_value(&c.limits, key) == (unsigned long long)ends[e]);
    }
    snprintf(message, sizeof message,
             "s.json: limits.%s must be in [%lld, %lld]", key, limits[i].lo,
             limits[i].hi);
    long long outside[2] = {limits[i].lo - 1, limits[i].hi + 1};
    for (int e = 0; e < 2; e++) {
      snprintf(text, sizeof text,
               "{\"null_compute\": true, \"limits\": {\"%s\": %lld}}", key,
               outside[e]);
      expect_rejected(text, ST_EINVAL, message);
    }
    snprintf(message, sizeof message, "s.json: limits.%s must be an integer",
             key);
    snprintf(text, sizeof text,
             "{\"null_compute\": true, \"limits\": {\"%s\": \"10\"}}", key);
    expect_rejected(text, ST_EFORMAT, message);
    snprintf(text, sizeof text,
             "{\"null_compute\": true, \"limits\": {\"%s\": 100.5}}", key);
    expect_rejected(text, ST_EFORMAT, message);
  }
}

static void test_token_lengths(void **state) {
  (void)state;
  char text[JSON_TEXT_BYTES], token[ST_PROTO_TOKEN_BYTES + 2];
  memset(token, 'k', sizeof token - 1);
  token[ST_PROTO_TOKEN_BYTES] = '\0'; /* 256 bytes: the longest accepted */
  snprintf(text, sizeof text, "{\"null_compute\": true, \"token\": \"%s\"}",
           token);
  st_server_config c;
  ST_ASSERT_OK(st_server_config_parse(text, "s.json", NULL, &c));
  assert_int_equal(c.has_token, 1);
  assert_int_equal(strlen(c.token), 256);
  assert_string_equal(c.token, token);
  token[ST_PROTO_TOKEN_BYTES] = 'k';
  token[ST_PROTO_TOKEN_BYTES + 1] = '\0'; /* 257 bytes */
  snprintf(text, sizeof text, "{\"null_compute\": true, \"token\": \"%s\"}",
           token);
  expect_rejected(text, ST_EINVAL, "s.json: token must be 1 to 256 bytes long");
}

static void test_syntax_errors(void **state) {
  (void)state;
  st_server_config c;
  static const char *const texts[] = {
      "{",
      "",
      "{\"workers\": 1,}",
      "{\"workers\": 1} x",
      "{\"workers\": 1, \"workers\": 2}", /* duplicate keys are rejected */
  };
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    assert_int_equal(st_server_config_parse(texts[i], "s.json", NULL, &c),
                     ST_EFORMAT);
    assert_true(strncmp(st_error_detail(), "s.json:1:", 9) == 0);
  }
  assert_int_equal(st_server_config_parse(NULL, "s.json", NULL, &c), ST_EINVAL);
  assert_int_equal(st_server_config_load(NULL, &c), ST_EINVAL);
}

/* ---- files --------------------------------------------------------------- */

typedef struct temp_dir {
  char path[64];
  char files[8][PATH_MAX];
  int nfiles;
} temp_dir;

static void temp_dir_make(temp_dir *d) {
  snprintf(d->path, sizeof d->path, "/tmp/st_test_srvcfg_XXXXXX");
  assert_non_null(mkdtemp(d->path));
  d->nfiles = 0;
}

/* Writes `text` (single-quoted, see q) to dir/name; returns its path. */
static const char *temp_dir_write(temp_dir *d, const char *name,
                                  const char *text) {
  assert_true(d->nfiles < 8);
  char *path = d->files[d->nfiles++];
  char joined[PATH_MAX];
  snprintf(joined, sizeof joined, "%s/%s", d->path, name);
  memcpy(path, joined, sizeof joined);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(q(text), f);
  fclose(f);
  return path;
}

static void temp_dir_remove(temp_dir *d) {
  for (int i = 0; i < d->nfiles; i++)
    remove(d->files[i]);
  rmdir(d->path);
}

/* The "distill" keys override the student config file key by key; the
 * rest of the file stays. */
static void test_distill_overrides(void **state) {
  (void)state;
  temp_dir d;
  temp_dir_make(&d);
  const char *student_path = temp_dir_write(
      &d, "student.json",
      "{'num_classes': 5, 'seed': 7, 'stride': {'min': 4, 'max': 32},"
      " 'distill': {'threshold': 0.7, 'max_updates': 3, 'lr': 0.05,"
      "             'trainable': ['out_conv3']}}");
  temp_dir_write(&d, "full.json", "{'distill': {'trainable': 'full'}}");
  temp_dir_write(&d, "bad.json", "{'stride': {'min': 0}}");
  st_student_config file;
  ST_ASSERT_OK(st_student_config_load(student_path, &file));

  st_server_config c;
  /* No overrides: the file as it is. */
  ST_ASSERT_OK(st_server_config_parse(
      q("{'null_compute': true, 'student': {'config': 'student.json'}}"),
      "s.json", d.path, &c));
  assert_string_equal(c.student_config_path, student_path);
  assert_student_equal(&c.student, &file);

  /* Some overrides: exactly those fields change. */
  ST_ASSERT_OK(st_server_config_parse(
      q("{'null_compute': true, 'student': {'config': 'student.json'},"
        " 'distill': {'threshold': 0.9, 'max_stride': 16}}"),
      "s.json", d.path, &c));
  st_student_config want = file;
  want.threshold = 0.9;
  want.max_stride = 16;
  assert_student_equal(&c.student, &want);

  /* All overrides. */
  ST_ASSERT_OK(st_server_config_parse(
      q("{'null_compute': true, 'student': {'config': 'student.json'},"
        " 'distill': {'threshold': 0.25, 'min_stride': 1, 'max_stride': 2,"
        "             'max_updates': 11, 'lr': 0.5,"
        "             'trainable': ['dec1', 'enc1']}}"),
      "s.json", d.path, &c));
  want = file;
  want.threshold = 0.25;
  want.min_stride = 1;
  want.max_stride = 2;
  want.max_updates = 11;
  want.lr = 0.5;
  want.trainable_count = 2;
  snprintf(want.trainable[0], sizeof want.trainable[0], "dec1");
  snprintf(want.trainable[1], sizeof want.trainable[1], "enc1");
  assert_student_equal(&c.student, &want);

  /* "full" replaces a list, and a list replaces "full". */
  ST_ASSERT_OK(st_server_config_parse(
      q("{'null_compute': true, 'student': {'config': 'student.json'},"
        " 'distill': {'trainable': 'full'}}"),
      "s.json", d.path, &c));
  assert_int_equal(c.student.trainable_full, 1);
  assert_int_equal(c.student.trainable_count, 0);
  ST_ASSERT_OK(st_server_config_parse(
      q("{'null_compute': true, 'student': {'config': 'full.json'},"
        " 'distill': {'trainable': ['out_conv2']}}"),
      "s.json", d.path, &c));
  assert_int_equal(c.student.trainable_full, 0);
  assert_int_equal(c.student.trainable_count, 1);
  assert_string_equal(c.student.trainable[0], "out_conv2");

  /* The stride order is checked after the merge: the file's min 4. */
  expect_rejected(
      q("{'null_compute': true, 'student': {'config': '/nonexistent.json'},"
        " 'distill': {'max_stride': 2}}"),
      ST_ENOENT, "/nonexistent.json: No such file or directory");
  st_error_clear();
  assert_int_equal(
      st_server_config_parse(
          q("{'null_compute': true, 'student': {'config': 'student.json'},"
            " 'distill': {'max_stride': 2}}"),
          "s.json", d.path, &c),
      ST_EINVAL);
  assert_string_equal(
      st_error_detail(),
      "s.json: distill.max_stride (2) must be >= distill.min_stride (4)");

  /* The student config's own errors name its file. */
  char message[PATH_MAX + 64];
  snprintf(message, sizeof message, "%s/bad.json: stride.min must be >= 1",
           d.path);
  assert_int_equal(
      st_server_config_parse(
          q("{'null_compute': true, 'student': {'config': 'bad.json'}}"),
          "s.json", d.path, &c),
      ST_EINVAL);
  assert_string_equal(st_error_detail(), message);
  temp_dir_remove(&d);
}

/* bootstrap_full_keyframes: null (or absent) means 16 without base
 * weights and 0 with them; a number is taken as is. */
static void test_bootstrap_null_rule(void **state) {
  (void)state;
  static const struct {
    const char *json;
    int want;
  } cases[] = {
      {"{'null_compute': true}", 16},
      {"{'null_compute': true, 'distill': {'bootstrap_full_keyframes': null}}",
       16},
      {"{'null_compute': true, 'student': {'weights': null},"
       " 'distill': {'bootstrap_full_keyframes': null}}",
       16},
      {"{'null_compute': true, 'student': {'weights': 'w.safetensors'}}", 0},
      {"{'null_compute': true, 'student': {'weights': 'w.safetensors'},"
       " 'distill': {'bootstrap_full_keyframes': null}}",
       0},
      {"{'null_compute': true, 'student': {'weights': 'w.safetensors'},"
       " 'distill': {'bootstrap_full_keyframes': 5}}",
       5},
      {"{'null_compute': true, 'distill': {'bootstrap_full_keyframes': 0}}", 0},
      {"{'null_compute': true, 'distill': {'bootstrap_full_keyframes': 3}}", 3},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    st_server_config c;
    ST_ASSERT_OK(st_server_config_parse(q(cases[i].json), "s.json", NULL, &c));
    if (c.bootstrap_full_keyframes != cases[i].want)
      fail_msg("%s: bootstrap %d, want %d", cases[i].json,
               c.bootstrap_full_keyframes, cases[i].want);
  }
}

static void test_path_resolution(void **state) {
  (void)state;
  static const struct {
    const char *base_dir, *teacher, *want;
  } cases[] = {
      {"/srv/st", "t.json", "/srv/st/t.json"},
      {"/srv/st/", "t.json", "/srv/st/t.json"},
      {"/srv/st", "sub/t.json", "/srv/st/sub/t.json"},
      {"/srv/st", "/abs/t.json", "/abs/t.json"},
      {"conf", "t.json", "conf/t.json"},
      {"/", "t.json", "/t.json"},
      {NULL, "t.json", "t.json"},
      {"", "t.json", "t.json"},
  };
  char text[JSON_TEXT_BYTES];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(text, sizeof text,
             "{\"teacher\": \"%s\", \"student\": {\"weights\": \"%s\"}}",
             cases[i].teacher, cases[i].teacher);
    st_server_config c;
    ST_ASSERT_OK(st_server_config_parse(text, "s.json", cases[i].base_dir, &c));
    assert_string_equal(c.teacher_path, cases[i].want);
    assert_string_equal(c.student_weights_path, cases[i].want);
  }

  /* With null_compute the teacher is not needed and not kept. */
  st_server_config c;
  ST_ASSERT_OK(st_server_config_parse(
      q("{'null_compute': true, 'teacher': 't.json'}"), "s.json", "/b", &c));
  assert_int_equal(c.null_compute, 1);
  assert_string_equal(c.teacher_path, "");

  /* A resolved path that does not fit is refused. */
  char name[ST_SERVER_PATH_BYTES];
  /* "/b/" + 4094 bytes is 4097 > 4095 */
  memset(name, 'n', sizeof name - 2);
  name[sizeof name - 2] = '\0';
  char *big = malloc(strlen(name) + 32);
  assert_non_null(big);
  sprintf(big, "{\"teacher\": \"%s\"}", name);
  expect_rejected(big, ST_EINVAL, "s.json: teacher is longer than 4095 bytes");
  free(big);

  /* Loading a file resolves against its folder, and names it in errors. */
  temp_dir d;
  temp_dir_make(&d);
  const char *path = temp_dir_write(
      &d, "server.json",
      "{'teacher': 'teacher.json', 'student': {'weights': '../w.st'}}");
  ST_ASSERT_OK(st_server_config_load(path, &c));
  char want[PATH_MAX + 32];
  snprintf(want, sizeof want, "%s/teacher.json", d.path);
  assert_string_equal(c.teacher_path, want);
  snprintf(want, sizeof want, "%s/../w.st", d.path);
  assert_string_equal(c.student_weights_path, want);
  assert_int_equal(c.bootstrap_full_keyframes, 0);

  path = temp_dir_write(&d, "bad.json",
                        "{'teacher': 't', 'limits': {'max_clients': 0}}");
  assert_int_equal(st_server_config_load(path, &c), ST_EINVAL);
  snprintf(want, sizeof want, "%s: limits.max_clients must be in [1, 100000]",
           path);
  assert_string_equal(st_error_detail(), want);
  temp_dir_remove(&d);

  char missing[PATH_MAX + 32];
  snprintf(missing, sizeof missing, "%s/no-such-server.json", d.path);
  assert_int_equal(st_server_config_load(missing, &c), ST_ENOENT);
  assert_true(strncmp(st_error_detail(), missing, strlen(missing)) == 0);
}

/* threads_per_worker 0 shares the online cores among the workers. */
static void test_threads_per_worker(void **state) {
  (void)state;
  static const int workers[] = {1, 2, 3, 64};
  char text[JSON_TEXT_BYTES];
  for (size_t i = 0; i < sizeof workers / sizeof workers[0]; i++) {
    snprintf(text, sizeof text,
             "{\"null_compute\": true, \"workers\": %d, "
             "\"threads_per_worker\": 0}",
             workers[i]);
    st_server_config c;
    ST_ASSERT_OK(st_server_config_parse(text, "s.json", NULL, &c));
    assert_int_equal(c.workers, workers[i]);
    assert_int_equal(c.threads_per_worker, expected_threads(workers[i]));
    assert_true(c.threads_per_worker >= 1);
    snprintf(text, sizeof text, "{\"null_compute\": true, \"workers\": %d}",
             workers[i]);
    ST_ASSERT_OK(st_server_config_parse(text, "s.json", NULL, &c));
    assert_int_equal(c.threads_per_worker, expected_threads(workers[i]));
  }
  st_server_config c;
  ST_ASSERT_OK(st_server_config_parse(
      q("{'null_compute': true, 'workers': 2, 'threads_per_worker': 1024}"),
      "s.json", NULL, &c));
  assert_int_equal(c.threads_per_worker, 1024);
}

static void test_parse_host_port(void **state) {
  (void)state;
  static const struct {
    const char *text, *host;
    int port;
  } good[] = {
      {"127.0.0.1:7700", "127.0.0.1", 7700},
      {"localhost:80", "localhost", 80},
      {"[::1]:7700", "::1", 7700},
      {"[fe80::1%eth0]:9", "fe80::1%eth0", 9},
      {":7700", "0.0.0.0", 7700},
      {"0.0.0.0:0", "0.0.0.0", 0},
      {"my-host.example_1:65535", "my-host.example_1", 65535},
      {"h:00080", "h", 80},
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    char host[ST_SERVER_HOST_BYTES];
    int port = -1;
    ST_ASSERT_OK(
        st_server_parse_host_port(good[i].text, host, sizeof host, &port));
    assert_string_equal(host, good[i].host);
    assert_int_equal(port, good[i].port);
  }
  static const char *const bad[] = {
      "",          "7700",       "host",        "host:",
      "host:port", "host:65536", "host:-1",     "host:+80",
      "host:80 ",  " host:80",   "host:123456", "::1:7700",
      "[::1]7700", "[::1",       "[]:80",       "[::1]:",
      "ho st:80",  "host:0x50",  "a:b:80",      "[::1]:80x",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char host[ST_SERVER_HOST_BYTES];
    strcpy(host, "untouched");
    int port = -7;
    st_error_clear();
    int rc = st_server_parse_host_port(bad[i], host, sizeof host, &port);
    if (rc != ST_EINVAL)
      fail_msg("'%s' accepted as %s:%d", bad[i], host, port);
    char want[128];
    snprintf(want, sizeof want,
             "'%s' is not HOST:PORT (port 0..65535; IPv6 as [ADDR]:PORT)",
             bad[i]);
    assert_string_equal(st_error_detail(), want);
    assert_string_equal(host, "untouched");
    assert_int_equal(port, -7);
  }
  /* A host longer than the caller's buffer. */
  char small[4];
  int port;
  assert_int_equal(
      st_server_parse_host_port("abcd:1", small, sizeof small, &port),
      ST_EINVAL);
  assert_string_equal(st_error_detail(), "'abcd:1': host longer than 3 bytes");
  assert_int_equal(
      st_server_parse_host_port("abc:1", small, sizeof small, &port), ST_OK);
  assert_string_equal(small, "abc");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_shipped_config),
      cmocka_unit_test(test_every_field_is_read),
      cmocka_unit_test(test_missing_keys_take_defaults),
      cmocka_unit_test(test_bad_values_rejected),
      cmocka_unit_test(test_limit_ranges),
      cmocka_unit_test(test_token_lengths),
      cmocka_unit_test(test_syntax_errors),
      cmocka_unit_test(test_distill_overrides),
      cmocka_unit_test(test_bootstrap_null_rule),
      cmocka_unit_test(test_path_resolution),
      cmocka_unit_test(test_threads_per_worker),
      cmocka_unit_test(test_parse_host_port),
  };
  return cmocka_run_group_tests_name("server_config", tests, NULL, NULL);
}
