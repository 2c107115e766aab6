#include "loop/server_config.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "base/error.h"
#include "base/json.h"
#include "models/student.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- ranges of the schema (server_config.h lists them for operators) ----- */

enum {
  MS_PER_HOUR = 60 * 60 * 1000,
  MS_PER_DAY = 24 * MS_PER_HOUR,
  PORT_MAX = 65535,
  /* More CPU threads than this per worker is a typo, not a machine. */
  THREADS_PER_WORKER_MAX = 1024,
  /* One process serving more clients than this needs sharding anyway. */
  MAX_CLIENTS_CEILING = 100000,
  /* Smaller than the smallest useful message (a hello) is a typo. */
  MIN_MESSAGE_BYTES = 64,
  /* A write queue below this could not hold one update header. */
  MIN_WRITE_QUEUE_BYTES = 1024,
  BOOTSTRAP_KEYFRAMES_MAX = 1000000,
};
#define GIB (1024ull * 1024 * 1024)
#define MAX_WRITE_QUEUE_CEILING (4 * GIB)

/* --listen ":PORT" (an empty host) means every interface. */
#define ANY_HOST "0.0.0.0"

/* ---- key lists ----------------------------------------------------------- */

static const char *const top_keys[] = {
    "listen",        "metrics",      "backend",
    "device",        "workers",      "threads_per_worker",
    "deterministic", "conv_search",  "cuda_graphs",
    "null_compute",  "teacher",      "student",
    "distill",       "limits",       "token",
    "log_level"};
static const char *const endpoint_keys[] = {"host", "port"};
static const char *const student_keys[] = {"config", "weights"};
static const char *const distill_keys[] = {
    "threshold", "min_stride", "max_stride",      "max_updates",
    "lr",        "trainable",  "update_encoding", "bootstrap_full_keyframes"};

/* One integer of "limits": its key, inclusive range and field. */
typedef struct limit_key {
  const char *key;
  uint64_t lo, hi;
  size_t offset; /* of the field in st_server_limits */
  int is_u64;    /* the field is uint64_t, else uint32_t */
} limit_key;

#define LIMIT32(name, lo, hi)                                                  \
  { #name, (lo), (hi), offsetof(st_server_limits, name), 0 }
#define LIMIT64(name, lo, hi)                                                  \
  { #name, (lo), (hi), offsetof(st_server_limits, name), 1 }

static const limit_key limit_keys[] = {
    LIMIT32(max_clients, 1, MAX_CLIENTS_CEILING),
    LIMIT32(max_message_bytes, MIN_MESSAGE_BYTES,
            ST_PROTO_MAX_MESSAGE_BYTES_CEILING),
    LIMIT32(max_frame_width, 1, ST_PROTO_MAX_SIDE),
    LIMIT32(max_frame_height, 1, ST_PROTO_MAX_SIDE),
    LIMIT64(handshake_timeout_ms, 1, MS_PER_HOUR),
    LIMIT64(idle_timeout_ms, 1, MS_PER_DAY),
    LIMIT64(message_timeout_ms, 1, MS_PER_HOUR),
    LIMIT64(max_write_queue_bytes, MIN_WRITE_QUEUE_BYTES,
            MAX_WRITE_QUEUE_CEILING),
    LIMIT64(shutdown_timeout_ms, 0, MS_PER_HOUR),
    LIMIT64(session_linger_ms, 0, MS_PER_DAY),
};


/* The "full" spelling of distill.trainable (as in the student config). */
static const char trainable_full_name[] = "full";

/* ---- defaults ------------------------------------------------------------ */

/* Online cores shared by the workers, at least one thread each. */
static int threads_for(int workers) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  long per = cores > 0 && workers > 0 ? cores / workers : 1;
  return per >= 1 ? (int)per : 1;
}

void st_server_config_defaults(st_server_config *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->listen_host, sizeof c->listen_host, "%s", ST_SERVER_DEFAULT_HOST);
  c->listen_port = ST_SERVER_DEFAULT_PORT;
  snprintf(c->metrics_host, sizeof c->metrics_host, "%s",
           ST_SERVER_DEFAULT_HOST);
  c->metrics_port = 0;
  c->backend = ST_BACKEND_CPU;
  c->device = 0;
  c->workers = 1;
  c->threads_per_worker = threads_for(c->workers);
  c->deterministic = 0;
  /* A server runs fixed frame sizes for hours: timing cuDNN's algorithms
   * once per shape (at the worker's warm-up for the teacher's size) beats
   * trusting its heuristic, which ranked 1.5-3x slower algorithms first on
   * the student's shapes (docs/performance.md). */
  c->conv_exhaustive = 1;
  c->cuda_graphs = 1;
  c->null_compute = 0;
  st_student_config_defaults(&c->student);
  c->update_encoding = ST_SERVER_DEFAULT_UPDATE_ENCODING;
  c->bootstrap_full_keyframes = ST_SERVER_DEFAULT_BOOTSTRAP_NO_WEIGHTS;
  c->limits = (st_server_limits){
      .max_clients = ST_SERVER_DEFAULT_MAX_CLIENTS,
      .max_message_bytes = ST_PROTO_DEFAULT_MAX_MESSAGE_BYTES,
      .max_frame_width = ST_SERVER_DEFAULT_MAX_FRAME_WIDTH,
      .max_frame_height = ST_SERVER_DEFAULT_MAX_FRAME_HEIGHT,
      .handshake_timeout_ms = ST_SERVER_DEFAULT_HANDSHAKE_TIMEOUT_MS,
      .idle_timeout_ms = ST_SERVER_DEFAULT_IDLE_TIMEOUT_MS,
      .message_timeout_ms = ST_SERVER_DEFAULT_MESSAGE_TIMEOUT_MS,
      .max_write_queue_bytes = ST_SERVER_DEFAULT_MAX_WRITE_QUEUE_BYTES,
      .shutdown_timeout_ms = ST_SERVER_DEFAULT_SHUTDOWN_TIMEOUT_MS,
      .session_linger_ms = ST_SERVER_DEFAULT_SESSION_LINGER_MS,
  };
  c->has_token = 0;
  c->log_level = ST_LOG_INFO;
}

/* ---- typed readers: each leaves *dst alone when the key is absent -------- */

static int read_int(const char *label, json_t *obj, const char *key,
                    const char *path, int lo, int hi, int *dst, int *present) {
  long long x = 0;
  int here = 0;
  int rc = st_json_int(label, obj, key, path, lo, hi, &x, &here);
  if (present)
    *present = here;
  if (rc == ST_OK && here)
    *dst = (int)x;
  return rc;
}

static int read_bool(const char *label, json_t *obj, const char *key,
                     int *dst) {
  json_t *v = json_object_get(obj, key);
  if (!v)
    return ST_OK;
  if (!json_is_boolean(v))
    return st_error_set(ST_EFORMAT, "%s: %s must be true or false", label, key);
  *dst = json_is_true(v);
  return ST_OK;
}

/* A string, or null when allow_null; *value is NULL when absent or null. */
static int read_string(const char *label, json_t *obj, const char *key,
                       const char *path, int allow_null, const char **value) {
  json_t *v = obj ? json_object_get(obj, key) : NULL;
  *value = NULL;
  if (!v || (allow_null && json_is_null(v)))
    return ST_OK;
  if (!json_is_string(v))
    return st_error_set(ST_EFORMAT, "%s: %s must be a string%s", label, path,
                        allow_null ? " or null" : "");
  *value = json_string_value(v);
  return ST_OK;
}

/* ---- paths --------------------------------------------------------------- */

/* `value` (non-empty) resolved against base_dir unless absolute or base_dir
 * is NULL/empty. */
static int resolve_path(const char *label, const char *path_key,
                        const char *base_dir, const char *value,
                        char dst[ST_SERVER_PATH_BYTES]) {
  if (!*value)
    return st_error_set(ST_EINVAL, "%s: %s must be a non-empty path", label,
                        path_key);
  int n;
  if (value[0] == '/' || !base_dir || !*base_dir)
    n = snprintf(dst, ST_SERVER_PATH_BYTES, "%s", value);
  else {
    size_t len = strlen(base_dir);
    const char *sep = base_dir[len - 1] == '/' ? "" : "/";
    n = snprintf(dst, ST_SERVER_PATH_BYTES, "%s%s%s", base_dir, sep, value);
  }
  if (n < 0 || n >= ST_SERVER_PATH_BYTES)
    return st_error_set(ST_EINVAL, "%s: %s is longer than %d bytes", label,
                        path_key, ST_SERVER_PATH_BYTES - 1);
  return ST_OK;
}

/* ---- sections ------------------------------------------------------------ */

/* "listen" / "metrics" (key), an object already checked: {host, port}. */
static int parse_endpoint(const char *label, json_t *obj, const char *key,
                          char host[ST_SERVER_HOST_BYTES], int *port) {
  if (!obj)
    return ST_OK;
  int rc;
  char path[64];
  snprintf(path, sizeof path, "%s.host", key);
  const char *h;
  if ((rc = read_string(label, obj, "host", path, 0, &h)))
    return rc;
  if (h) {
    size_t n = strlen(h);
    if (n == 0 || n >= ST_SERVER_HOST_BYTES)
      return st_error_set(ST_EINVAL,
                          "%s: %s must be a non-empty string of at most %d "
                          "bytes",
                          label, path, ST_SERVER_HOST_BYTES - 1);
    memcpy(host, h, n + 1);
  }
  snprintf(path, sizeof path, "%s.port", key);
  return read_int(label, obj, "port", path, 0, PORT_MAX, port, NULL);
}

/* The "distill" keys as written; has_* flags say which were present. */
typedef struct distill_overrides {
  int has_threshold, has_min_stride, has_max_stride, has_max_updates, has_lr;
  double threshold, lr;
  int min_stride, max_stride, max_updates;
  int has_trainable;
  int trainable_full;
  char trainable[ST_STUDENT_CONFIG_MAX_TRAINABLE][ST_STUDENT_MODULE_NAME_BYTES];
  int trainable_count;
  int has_bootstrap; /* a number was given (null counts as absent) */
  int bootstrap;
} distill_overrides;

/* distill.trainable: "full" or distinct student module names, by the same
 * rules and with the same messages as the student config. */
static int parse_trainable(const char *label, json_t *v, distill_overrides *o) {
  static const char what[] = "must be \"full\" or an array of module names";
  o->has_trainable = 1;
  if (json_is_string(v)) {
    if (strcmp(json_string_value(v), trainable_full_name) != 0)
      return st_error_set(ST_EINVAL, "%s: distill.trainable %s", label, what);
    o->trainable_full = 1;
    return ST_OK;
  }
  if (!json_is_array(v))
    return st_error_set(ST_EFORMAT, "%s: distill.trainable %s", label, what);
  size_t n = json_array_size(v);
  /* Training nothing would make every distillation a no-op. */
  if (n == 0)
    return st_error_set(ST_EINVAL,
                        "%s: distill.trainable must name at least one module",
                        label);
  if (n > ST_STUDENT_CONFIG_MAX_TRAINABLE)
    return st_error_set(ST_EINVAL,
                        "%s: distill.trainable has more than %d entries", label,
                        ST_STUDENT_CONFIG_MAX_TRAINABLE);
  int seen[ST_MOD_COUNT] = {0};
  for (size_t i = 0; i < n; i++) {
    json_t *e = json_array_get(v, i);
    if (!json_is_string(e))
      return st_error_set(
          ST_EFORMAT, "%s: distill.trainable[%zu] must be a string", label, i);
    const char *name = json_string_value(e);
    st_student_module m;
    if (st_student_module_from_name(name, &m) != ST_OK)
      return st_error_set(ST_EINVAL,
                          "%s: distill.trainable[%zu]: '%s' is not a student "
                          "module",
                          label, i, name);
    if (seen[m]++)
      return st_error_set(ST_EINVAL,
                          "%s: distill.trainable[%zu]: '%s' is listed twice",
                          label, i, name);
    /* Module names are far shorter than a slot, so this never truncates. */
    snprintf(o->trainable[i], sizeof o->trainable[i], "%s", name);
  }
  o->trainable_count = (int)n;
  return ST_OK;
}

static int parse_distill(const char *label, json_t *d, distill_overrides *o,
                         st_update_encoding *encoding) {
  if (!d)
    return ST_OK;
  int rc = st_json_number(label, d, "threshold", "distill.threshold",
                       &o->threshold, &o->has_threshold);
  if (rc)
    return rc;
  if (o->has_threshold && !(o->threshold > 0.0 && o->threshold < 1.0))
    return st_error_set(ST_EINVAL, "%s: distill.threshold must be in (0,1)",
                        label);
  if ((rc = read_int(label, d, "min_stride", "distill.min_stride", 1, INT_MAX,
                     &o->min_stride, &o->has_min_stride)) ||
      (rc = read_int(label, d, "max_stride", "distill.max_stride", 1, INT_MAX,
                     &o->max_stride, &o->has_max_stride)) ||
      (rc = read_int(label, d, "max_updates", "distill.max_updates", 0, INT_MAX,
                     &o->max_updates, &o->has_max_updates)) ||
      (rc = st_json_number(label, d, "lr", "distill.lr", &o->lr, &o->has_lr)))
    return rc;
  if (o->has_lr && (!(o->lr > 0.0) || !isfinite(o->lr)))
    return st_error_set(ST_EINVAL, "%s: distill.lr must be > 0", label);
  json_t *trainable = json_object_get(d, "trainable");
  if (trainable && (rc = parse_trainable(label, trainable, o)))
    return rc;
  const char *enc;
  if ((rc = read_string(label, d, "update_encoding", "distill.update_encoding",
                        0, &enc)))
    return rc;
  if (enc && st_update_encoding_from_name(enc, encoding) != ST_OK)
    return st_error_set(ST_EINVAL,
                        "%s: distill.update_encoding must be \"f32\", \"f16\" "
                        "or \"f16-delta\"",
                        label);
  json_t *boot = json_object_get(d, "bootstrap_full_keyframes");
  if (boot && !json_is_null(boot)) {
    if (!json_is_integer(boot))
      return st_error_set(ST_EFORMAT,
                          "%s: distill.bootstrap_full_keyframes must be an "
                          "integer or null",
                          label);
    if ((rc = read_int(label, d, "bootstrap_full_keyframes",
                       "distill.bootstrap_full_keyframes", 0,
                       BOOTSTRAP_KEYFRAMES_MAX, &o->bootstrap,
                       &o->has_bootstrap)))
      return rc;
  }
  return ST_OK;
}

/* Puts the server's distill keys over the student config file's values. */
static int apply_distill(const char *label, const distill_overrides *o,
                         st_student_config *s) {
  if (o->has_threshold)
    s->threshold = o->threshold;
  if (o->has_min_stride)
    s->min_stride = o->min_stride;
  if (o->has_max_stride)
    s->max_stride = o->max_stride;
  if (o->has_max_updates)
    s->max_updates = o->max_updates;
  if (o->has_lr)
    s->lr = o->lr;
  if (o->has_trainable) {
    s->trainable_full = o->trainable_full;
    s->trainable_count = o->trainable_count;
    memcpy(s->trainable, o->trainable, sizeof s->trainable);
  }
  /* Checked after the merge, so either end may come from the student
   * config file. */
  if (s->max_stride < s->min_stride)
    return st_error_set(ST_EINVAL,
                        "%s: distill.max_stride (%d) must be >= "
                        "distill.min_stride (%d)",
                        label, s->max_stride, s->min_stride);
  return ST_OK;
}

static int parse_limits(const char *label, json_t *limits,
                        st_server_limits *l) {
  if (!limits)
    return ST_OK;
  for (size_t i = 0; i < COUNT(limit_keys); i++) {
    const limit_key *k = &limit_keys[i];
    char path[64];
    snprintf(path, sizeof path, "limits.%s", k->key);
    long long x = 0;
    int present;
    int rc = st_json_int(label, limits, k->key, path, (long long)k->lo,
                        (long long)k->hi, &x, &present);
    if (rc)
      return rc;
    if (!present)
      continue;
    char *field = (char *)l + k->offset;
    if (k->is_u64) {
      uint64_t v = (uint64_t)x;
      memcpy(field, &v, sizeof v);
    } else {
      uint32_t v = (uint32_t)x;
      memcpy(field, &v, sizeof v);
    }
  }
  return ST_OK;
}

static int parse_token(const char *label, json_t *root, st_server_config *c) {
  const char *token;
  int rc = read_string(label, root, "token", "token", 1, &token);
  if (rc || !token)
    return rc;
  size_t n = strlen(token);
  if (n == 0 || n > ST_PROTO_TOKEN_BYTES)
    return st_error_set(ST_EINVAL, "%s: token must be 1 to %d bytes long",
                        label, ST_PROTO_TOKEN_BYTES);
  memcpy(c->token, token, n + 1);
  c->has_token = 1;
  return ST_OK;
}

static int parse_root(const char *label, const char *base_dir, json_t *root,
                      st_server_config *out) {
  if (!json_is_object(root))
    return st_error_set(ST_EFORMAT, "%s: top level must be an object", label);
  int rc = st_json_check_keys(label, root, "", top_keys, COUNT(top_keys), 0);
  if (rc)
    return rc;
  /* The key list of "limits" is its table's. */
  const char *limit_names[COUNT(limit_keys)];
  for (size_t i = 0; i < COUNT(limit_keys); i++)
    limit_names[i] = limit_keys[i].key;
  /* Every object's keys are checked before any value is read, so an
   * unknown key is reported wherever it is. */
  json_t *listen, *metrics, *student, *distill, *limits;
  if ((rc = st_json_object(label, root, "listen", endpoint_keys,
                        COUNT(endpoint_keys), &listen)) ||
      (rc = st_json_object(label, root, "metrics", endpoint_keys,
                        COUNT(endpoint_keys), &metrics)) ||
      (rc = st_json_object(label, root, "student", student_keys,
                        COUNT(student_keys), &student)) ||
      (rc = st_json_object(label, root, "distill", distill_keys,
                        COUNT(distill_keys), &distill)) ||
      (rc = st_json_object(label, root, "limits", limit_names, COUNT(limit_names),
                        &limits)))
    return rc;

  st_server_config c;
  st_server_config_defaults(&c);
  if ((rc = parse_endpoint(label, listen, "listen", c.listen_host,
                           &c.listen_port)) ||
      (rc = parse_endpoint(label, metrics, "metrics", c.metrics_host,
                           &c.metrics_port)))
    return rc;

  const char *backend;
  if ((rc = read_string(label, root, "backend", "backend", 0, &backend)))
    return rc;
  if (backend && st_backend_kind_from_name(backend, &c.backend) != ST_OK)
    return st_error_set(
        ST_EINVAL, "%s: backend must be \"cpu\", \"cuda\" or \"auto\"", label);
  int threads = 0;
  if ((rc = read_int(label, root, "device", "device", 0, INT_MAX, &c.device,
                     NULL)) ||
      (rc = read_int(label, root, "workers", "workers", 1,
                     ST_SERVER_MAX_WORKERS, &c.workers, NULL)) ||
      (rc = read_int(label, root, "threads_per_worker", "threads_per_worker", 0,
                     THREADS_PER_WORKER_MAX, &threads, NULL)) ||
      (rc = read_bool(label, root, "deterministic", &c.deterministic)) ||
      (rc = read_bool(label, root, "cuda_graphs", &c.cuda_graphs)) ||
      (rc = read_bool(label, root, "null_compute", &c.null_compute)))
    return rc;
  c.threads_per_worker = threads > 0 ? threads : threads_for(c.workers);
  const char *search;
  if ((rc = read_string(label, root, "conv_search", "conv_search", 0,
                        &search)))
    return rc;
  if (search && strcmp(search, "exhaustive") && strcmp(search, "heuristic"))
    return st_error_set(ST_EINVAL,
                        "%s: conv_search must be \"exhaustive\" or "
                        "\"heuristic\"",
                        label);
  if (search)
    c.conv_exhaustive = !strcmp(search, "exhaustive");

  /* The teacher: required unless the server computes nothing. */
  const char *teacher;
  if ((rc = read_string(label, root, "teacher", "teacher", 1, &teacher)))
    return rc;
  if (!c.null_compute) {
    if (!teacher)
      return st_error_set(ST_EFORMAT,
                          "%s: teacher is required unless null_compute is "
                          "true",
                          label);
    if ((rc =
             resolve_path(label, "teacher", base_dir, teacher, c.teacher_path)))
      return rc;
  }

  const char *student_config, *weights;
  if ((rc = read_string(label, student, "config", "student.config", 1,
                        &student_config)) ||
      (rc = read_string(label, student, "weights", "student.weights", 1,
                        &weights)))
    return rc;
  if ((student_config &&
       (rc = resolve_path(label, "student.config", base_dir, student_config,
                          c.student_config_path))) ||
      (weights && (rc = resolve_path(label, "student.weights", base_dir,
                                     weights, c.student_weights_path))))
    return rc;

  distill_overrides o;
  memset(&o, 0, sizeof o);
  if ((rc = parse_distill(label, distill, &o, &c.update_encoding)) ||
      (rc = parse_limits(label, limits, &c.limits)) ||
      (rc = parse_token(label, root, &c)))
    return rc;

  const char *level;
  if ((rc = read_string(label, root, "log_level", "log_level", 0, &level)))
    return rc;
  if (level) {
    if (st_log_level_from_name(level, &c.log_level))
      return st_error_set(ST_EINVAL,
                          "%s: log_level must be \"error\", \"warn\", "
                          "\"info\" or \"debug\"",
                          label);
  }

  /* Files last, so every mistake in this file is reported before any in
   * another. The student config's own errors name that file. */
  if (c.student_config_path[0] &&
      (rc = st_student_config_load(c.student_config_path, &c.student)))
    return rc;
  if ((rc = apply_distill(label, &o, &c.student)))
    return rc;
  /* Random initial weights need full training first (server_config.h). */
  c.bootstrap_full_keyframes = o.has_bootstrap ? o.bootstrap
                               : c.student_weights_path[0]
                                   ? 0
                                   : ST_SERVER_DEFAULT_BOOTSTRAP_NO_WEIGHTS;
  *out = c;
  return ST_OK;
}

int st_server_config_parse(const char *json_text, const char *label,
                           const char *base_dir, st_server_config *out) {
  if (!json_text || !out)
    return st_error_set(ST_EINVAL, "server config: NULL argument");
  if (!label)
    label = "server config";
  json_t *root;
  int rc = st_json_parse(json_text, label, &root);
  if (rc)
    return rc;
  rc = parse_root(label, base_dir, root, out);
  json_decref(root);
  return rc;
}

int st_server_config_load(const char *path, st_server_config *out) {
  if (!path || !out)
    return st_error_set(ST_EINVAL, "server config: NULL argument");
  /* The folder of the file: "." for a bare name, "/" for a file at the
   * root. */
  char base_dir[ST_SERVER_PATH_BYTES];
  const char *slash = strrchr(path, '/');
  if (!slash)
    snprintf(base_dir, sizeof base_dir, ".");
  else {
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    if (n >= sizeof base_dir)
      return st_error_set(ST_EINVAL, "%s: path longer than %d bytes", path,
                          ST_SERVER_PATH_BYTES - 1);
    memcpy(base_dir, path, n);
    base_dir[n] = '\0';
  }
  json_t *root;
  int rc = st_json_load(path, &root);
  if (rc)
    return rc;
  rc = parse_root(path, base_dir, root, out);
  json_decref(root);
  return rc;
}

/* ---- --listen HOST:PORT -------------------------------------------------- */

/* Characters of a host name or IPv4 address. */
static int is_host_char(int ch) {
  return isalnum(ch) || ch == '.' || ch == '-' || ch == '_';
}

/* Characters inside "[...]": an IPv6 address, maybe with "%zone". */
static int is_v6_char(int ch) {
  return isxdigit(ch) || ch == ':' || ch == '.' || ch == '%' || isalnum(ch);
}

int st_server_parse_host_port(const char *text, char *host, size_t host_bytes,
                              int *port) {
  static const char usage[] =
      "'%s' is not HOST:PORT (port 0..65535; IPv6 as [ADDR]:PORT)";
  if (!text || !host || host_bytes == 0 || !port)
    return st_error_set(ST_EINVAL, "host:port: NULL argument");
  const char *h = text, *h_end, *colon;
  int v6 = text[0] == '[';
  if (v6) {
    h = text + 1;
    h_end = strchr(h, ']');
    if (!h_end || h_end == h || h_end[1] != ':')
      return st_error_set(ST_EINVAL, usage, text);
    colon = h_end + 1;
  } else {
    colon = strrchr(text, ':');
    if (!colon)
      return st_error_set(ST_EINVAL, usage, text);
    h_end = colon;
  }
  for (const char *p = h; p < h_end; p++)
    if (!(v6 ? is_v6_char((unsigned char)*p) : is_host_char((unsigned char)*p)))
      return st_error_set(ST_EINVAL, usage, text);

  /* The port: 1 to 5 decimal digits, nothing else. */
  const char *digits = colon + 1;
  size_t nd = strlen(digits);
  if (nd == 0 || nd > 5 || strspn(digits, "0123456789") != nd)
    return st_error_set(ST_EINVAL, usage, text);
  long p = strtol(digits, NULL, 10);
  if (p > PORT_MAX)
    return st_error_set(ST_EINVAL, usage, text);

  size_t hn = (size_t)(h_end - h);
  const char *host_text = h;
  if (hn == 0) {
    host_text = ANY_HOST;
    hn = strlen(ANY_HOST);
  }
  if (hn >= host_bytes)
    return st_error_set(ST_EINVAL, "'%s': host longer than %zu bytes", text,
                        host_bytes - 1);
  memcpy(host, host_text, hn);
  host[hn] = '\0';
  *port = (int)p;
  return ST_OK;
}
