#include "models/config.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "base/error.h"
#include "base/json.h"
#include "models/student.h"

/* The student's module names, from the one list in student.h. */
static const char *const module_names[] = {
#define ST__MOD_NAME(name) #name,
    ST_STUDENT_MODULES(ST__MOD_NAME)
#undef ST__MOD_NAME
};
enum { MODULE_COUNT = sizeof module_names / sizeof module_names[0] };

/* The "full" spelling of distill.trainable. */
static const char trainable_full_name[] = "full";

typedef struct channel_order_name {
  const char *name;
  int order[3]; /* network input channel c takes RGB channel order[c] */
} channel_order_name;

static const channel_order_name channel_orders[] = {
    {"bgr", {2, 1, 0}},
    {"rgb", {0, 1, 2}},
};

static const char *const top_keys[] = {"num_classes", "input", "distill",
                                       "stride", "seed"};
static const char *const input_keys[] = {"channel_order", "mean", "std"};
static const char *const distill_keys[] = {"threshold", "max_updates", "lr",
                                           "trainable"};
static const char *const stride_keys[] = {"min", "max"};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

void st_student_config_defaults(st_student_config *c) {
  static const char *const trainable[] = ST_STUDENT_DEFAULT_TRAINABLE;
  memset(c, 0, sizeof *c);
  c->num_classes = ST_STUDENT_DEFAULT_NUM_CLASSES;
  memcpy(c->channel_order, channel_orders[0].order, sizeof c->channel_order);
  c->mean[0] = ST_STUDENT_DEFAULT_MEAN_B;
  c->mean[1] = ST_STUDENT_DEFAULT_MEAN_G;
  c->mean[2] = ST_STUDENT_DEFAULT_MEAN_R;
  for (int i = 0; i < 3; i++)
    c->std[i] = ST_STUDENT_DEFAULT_STD;
  c->threshold = ST_STUDENT_DEFAULT_THRESHOLD;
  c->min_stride = ST_STUDENT_DEFAULT_MIN_STRIDE;
  c->max_stride = ST_STUDENT_DEFAULT_MAX_STRIDE;
  c->max_updates = ST_STUDENT_DEFAULT_MAX_UPDATES;
  c->lr = ST_STUDENT_DEFAULT_LR;
  c->trainable_full = 0;
  for (size_t i = 0; i < COUNT(trainable); i++)
    snprintf(c->trainable[i], sizeof c->trainable[i], "%s", trainable[i]);
  c->trainable_count = (int)COUNT(trainable);
  c->seed = ST_STUDENT_DEFAULT_SEED;
}

st_stride_params st_student_config_stride(const st_student_config *c) {
  return (st_stride_params){.threshold = c->threshold,
                            .min_stride = c->min_stride,
                            .max_stride = c->max_stride};
}

st_distill_params st_student_config_distill(const st_student_config *c) {
  return (st_distill_params){.threshold = c->threshold,
                             .max_updates = c->max_updates};
}

/* ---- readers: each leaves *dst alone when the key is absent ------------ */

/* Every key of the student config is optional: unknown ones are refused. */
static int check_keys(const char *label, json_t *obj, const char *prefix,
                      const char *const *known, size_t n) {
  return st_json_check_keys(label, obj, prefix, known, n, 0);
}

static int read_int(const char *label, json_t *obj, const char *key,
                    const char *path, int lo, int hi, int *dst) {
  long long x = 0;
  int here = 0;
  int rc = st_json_int(label, obj, key, path, lo, hi, &x, &here);
  if (rc == ST_OK && here)
    *dst = (int)x;
  return rc;
}

/* A double that must be representable as a finite float. */
static int to_float(const char *label, const char *path, double x,
                    float *dst) {
  if (fabs(x) > FLT_MAX)
    return st_error_set(ST_EINVAL, "%s: %s is too large for a float", label,
                        path);
  *dst = (float)x;
  return ST_OK;
}

/* An array of exactly 3 numbers, each fitting a float. */
static int read_vec3(const char *label, json_t *obj, const char *key,
                     const char *path, float dst[3]) {
  json_t *v = obj ? json_object_get(obj, key) : NULL;
  if (!v)
    return ST_OK;
  if (!json_is_array(v) || json_array_size(v) != 3)
    return st_error_set(ST_EFORMAT, "%s: %s must be an array of 3 numbers",
                        label, path);
  float tmp[3];
  for (size_t i = 0; i < 3; i++) {
    json_t *e = json_array_get(v, i);
    char epath[64];
    snprintf(epath, sizeof epath, "%s[%zu]", path, i);
    if (!json_is_number(e))
      return st_error_set(ST_EFORMAT, "%s: %s must be a number", label, epath);
    int rc = to_float(label, epath, json_number_value(e), &tmp[i]);
    if (rc)
      return rc;
  }
  memcpy(dst, tmp, sizeof tmp);
  return ST_OK;
}

/* ---- sections ------------------------------------------------------------ */

static int parse_input(const char *label, json_t *input,
                       st_student_config *c) {
  if (!input)
    return ST_OK;
  json_t *order = json_object_get(input, "channel_order");
  if (order) {
    if (!json_is_string(order))
      return st_error_set(ST_EFORMAT, "%s: input.channel_order must be a string",
                          label);
    size_t i = 0;
    while (i < COUNT(channel_orders) &&
           strcmp(json_string_value(order), channel_orders[i].name) != 0)
      i++;
    if (i == COUNT(channel_orders))
      return st_error_set(ST_EINVAL,
                          "%s: input.channel_order must be \"bgr\" or \"rgb\"",
                          label);
    memcpy(c->channel_order, channel_orders[i].order, sizeof c->channel_order);
  }
  int rc = read_vec3(label, input, "mean", "input.mean", c->mean);
  if (rc)
    return rc;
  if ((rc = read_vec3(label, input, "std", "input.std", c->std)))
    return rc;
  /* Dividing by zero would turn every frame into infinities. */
  for (int i = 0; i < 3; i++)
    if (c->std[i] == 0.0f)
      return st_error_set(ST_EINVAL, "%s: input.std[%d] must be non-zero",
                          label, i);
  return ST_OK;
}

static int parse_trainable(const char *label, json_t *v,
                           st_student_config *c) {
  static const char what[] = "must be \"full\" or an array of module names";
  if (json_is_string(v)) {
    if (strcmp(json_string_value(v), trainable_full_name) != 0)
      return st_error_set(ST_EINVAL, "%s: distill.trainable %s", label, what);
    c->trainable_full = 1;
    c->trainable_count = 0;
    memset(c->trainable, 0, sizeof c->trainable);
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
                        "%s: distill.trainable has more than %d entries",
                        label, ST_STUDENT_CONFIG_MAX_TRAINABLE);
  int seen[MODULE_COUNT] = {0};
  c->trainable_full = 0;
  memset(c->trainable, 0, sizeof c->trainable);
  for (size_t i = 0; i < n; i++) {
    json_t *e = json_array_get(v, i);
    if (!json_is_string(e))
      return st_error_set(ST_EFORMAT, "%s: distill.trainable[%zu] must be a string",
                          label, i);
    const char *name = json_string_value(e);
    size_t m = 0;
    while (m < MODULE_COUNT && strcmp(name, module_names[m]) != 0)
      m++;
    if (m == MODULE_COUNT)
      return st_error_set(ST_EINVAL,
                          "%s: distill.trainable[%zu]: '%s' is not a student "
                          "module",
                          label, i, name);
    if (seen[m]++)
      return st_error_set(ST_EINVAL,
                          "%s: distill.trainable[%zu]: '%s' is listed twice",
                          label, i, name);
    /* Module names are far shorter than a slot, so this never truncates. */
    snprintf(c->trainable[i], sizeof c->trainable[i], "%s", name);
  }
  c->trainable_count = (int)n;
  return ST_OK;
}

static int parse_distill(const char *label, json_t *distill,
                         st_student_config *c) {
  if (!distill)
    return ST_OK;
  double x = 0.0;
  int present;
  int rc = st_json_number(label, distill, "threshold", "distill.threshold", &x,
                       &present);
  if (rc)
    return rc;
  if (present) {
    if (!(x > 0.0 && x < 1.0))
      return st_error_set(ST_EINVAL, "%s: distill.threshold must be in (0,1)",
                          label);
    c->threshold = x;
  }
  if ((rc = read_int(label, distill, "max_updates", "distill.max_updates", 0,
                     INT_MAX, &c->max_updates)))
    return rc;
  if ((rc = st_json_number(label, distill, "lr", "distill.lr", &x, &present)))
    return rc;
  if (present) {
    if (!(x > 0.0) || !isfinite(x))
      return st_error_set(ST_EINVAL, "%s: distill.lr must be > 0", label);
    c->lr = x;
  }
  json_t *trainable = json_object_get(distill, "trainable");
  if (trainable && (rc = parse_trainable(label, trainable, c)))
    return rc;
  return ST_OK;
}

static int parse_root(const char *label, json_t *root, st_student_config *out) {
  if (!json_is_object(root))
    return st_error_set(ST_EFORMAT, "%s: top level must be an object", label);
  int rc = check_keys(label, root, "", top_keys, COUNT(top_keys));
  if (rc)
    return rc;
  json_t *input, *distill, *stride;
  if ((rc = st_json_object(label, root, "input", input_keys, COUNT(input_keys),
                        &input)) ||
      (rc = st_json_object(label, root, "distill", distill_keys,
                        COUNT(distill_keys), &distill)) ||
      (rc = st_json_object(label, root, "stride", stride_keys,
                        COUNT(stride_keys), &stride)))
    return rc;

  st_student_config c;
  st_student_config_defaults(&c);
  if ((rc = read_int(label, root, "num_classes", "num_classes",
                     ST_STUDENT_MIN_CLASSES, ST_STUDENT_MAX_CLASSES,
                     &c.num_classes)) ||
      (rc = parse_input(label, input, &c)) ||
      (rc = parse_distill(label, distill, &c)) ||
      (rc = read_int(label, stride, "min", "stride.min", 1, INT_MAX,
                     &c.min_stride)) ||
      (rc = read_int(label, stride, "max", "stride.max", 1, INT_MAX,
                     &c.max_stride)) ||
      (rc = read_int(label, root, "seed", "seed", 0, INT_MAX, &c.seed)))
    return rc;
  /* Checked after both are read, so either may be the one left default. */
  if (c.max_stride < c.min_stride)
    return st_error_set(ST_EINVAL,
                        "%s: stride.max (%d) must be >= stride.min (%d)", label,
                        c.max_stride, c.min_stride);
  *out = c;
  return ST_OK;
}

int st_student_config_parse(const char *json_text, const char *label,
                            st_student_config *out) {
  if (!json_text || !out)
    return st_error_set(ST_EINVAL, "student config: NULL argument");
  if (!label)
    label = "student config";
  json_t *root;
  int rc = st_json_parse(json_text, label, &root);
  if (rc)
    return rc;
  rc = parse_root(label, root, out);
  json_decref(root);
  return rc;
}

int st_student_config_load(const char *path, st_student_config *out) {
  if (!path || !out)
    return st_error_set(ST_EINVAL, "student config: NULL argument");
  json_t *root;
  int rc = st_json_load(path, &root);
  if (rc)
    return rc;
  rc = parse_root(path, root, out);
  json_decref(root);
  return rc;
}
