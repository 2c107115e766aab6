#include "models/teacher.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/error.h"
#include "base/json.h"
#include "models/onnx_exec.h"
#include "models/onnx_graph.h"
#include "models/tfjs.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Every key of the schema; all are required. */
static const char *const top_keys[] = {"model",   "input",     "output",
                                       "classes", "class_map",
                                       "student_classes"};
/* Optional keys, for TF.js models (docs/teacher.md). */
static const char *const optional_keys[] = {"downsample_ratio", "recurrent",
                                            "alpha_threshold"};

typedef struct recurrent_name {
  const char *name;
  st_teacher_recurrent mode;
} recurrent_name;

static const recurrent_name recurrent_modes[] = {
    {"zero", ST_TEACHER_RECURRENT_ZERO},
    {"session", ST_TEACHER_RECURRENT_SESSION},
};
static const char *const input_keys[] = {"width", "height", "channel_order",
                                         "scale", "mean",   "std"};

typedef struct channel_order_name {
  const char *name;
  int order[3]; /* model input channel c takes RGB channel order[c] */
} channel_order_name;

static const channel_order_name channel_orders[] = {
    {"rgb", {0, 1, 2}},
    {"bgr", {2, 1, 0}},
};

/* ---- config readers ------------------------------------------------------ */

/* Every key of the teacher config is required, and no other is allowed. */
static int check_keys(const char *label, json_t *obj, const char *prefix,
                      const char *const *known, size_t n) {
  return st_json_check_keys(label, obj, prefix, known, n, 1);
}

/* A required integer key (check_keys has made sure it is there), through
 * the shared reader. */
static int read_int(const char *label, json_t *obj, const char *key,
                    const char *path, long long lo, long long hi,
                    int64_t *dst) {
  long long x = 0;
  int present = 0;
  int rc = st_json_int(label, obj, key, path, lo, hi, &x, &present);
  if (!rc && !present)
    rc = st_error_set(ST_EFORMAT, "%s: %s is missing", label, path);
  if (!rc)
    *dst = (int64_t)x;
  return rc;
}

/* A non-empty string that fits `cap` bytes with its NUL. */
static int read_string(const char *label, json_t *v, const char *path,
                       char *dst, size_t cap) {
  if (!json_is_string(v))
    return st_error_set(ST_EFORMAT, "%s: %s must be a string", label, path);
  const char *s = json_string_value(v);
  size_t n = json_string_length(v);
  if (n == 0)
    return st_error_set(ST_EINVAL, "%s: %s must not be empty", label, path);
  /* An embedded NUL would silently cut the name short. */
  if (strlen(s) != n)
    return st_error_set(ST_EINVAL, "%s: %s contains a NUL character", label,
                        path);
  if (n >= cap)
    return st_error_set(ST_EINVAL, "%s: %s is longer than %zu bytes", label,
                        path, cap - 1);
  memcpy(dst, s, n + 1);
  return ST_OK;
}

/* A finite number that fits a float. */
static int read_float(const char *label, json_t *v, const char *path,
                      float *dst) {
  if (!json_is_number(v))
    return st_error_set(ST_EFORMAT, "%s: %s must be a number", label, path);
  double x = json_number_value(v);
  if (!isfinite(x) || fabs(x) > FLT_MAX)
    return st_error_set(ST_EINVAL, "%s: %s is too large for a float", label,
                        path);
  *dst = (float)x;
  return ST_OK;
}

static int read_vec3(const char *label, json_t *v, const char *path,
                     float dst[3]) {
  if (!json_is_array(v) || json_array_size(v) != 3)
    return st_error_set(ST_EFORMAT, "%s: %s must be an array of 3 numbers",
                        label, path);
  for (size_t i = 0; i < 3; i++) {
    char epath[64];
    snprintf(epath, sizeof epath, "%s[%zu]", path, i);
    int rc = read_float(label, json_array_get(v, i), epath, &dst[i]);
    if (rc)
      return rc;
  }
  return ST_OK;
}

/* `dir`/`name` unless name is absolute or dir empty. */
static int resolve_path(const char *label, const char *base_dir,
                        const char *name, char *dst, size_t cap) {
  int n;
  if (name[0] == '/' || !base_dir || !*base_dir)
    n = snprintf(dst, cap, "%s", name);
  else
    n = snprintf(dst, cap, "%s/%s", base_dir, name);
  if (n < 0 || (size_t)n >= cap)
    return st_error_set(ST_EINVAL, "%s: model path is longer than %zu bytes",
                        label, cap - 1);
  return ST_OK;
}

static int parse_input(const char *label, json_t *input,
                       st_teacher_config *c) {
  int rc;
  if ((rc = read_int(label, input, "width", "input.width", 1,
                     ST_TEACHER_MAX_INPUT_SIDE, &c->width)) ||
      (rc = read_int(label, input, "height", "input.height", 1,
                     ST_TEACHER_MAX_INPUT_SIDE, &c->height)))
    return rc;
  json_t *order = json_object_get(input, "channel_order");
  if (!json_is_string(order))
    return st_error_set(ST_EFORMAT, "%s: input.channel_order must be a string",
                        label);
  size_t i = 0;
  while (i < COUNT(channel_orders) &&
         strcmp(json_string_value(order), channel_orders[i].name) != 0)
    i++;
  if (i == COUNT(channel_orders))
    return st_error_set(ST_EINVAL,
                        "%s: input.channel_order must be \"rgb\" or \"bgr\"",
                        label);
  memcpy(c->channel_order, channel_orders[i].order, sizeof c->channel_order);
  json_t *scale = json_object_get(input, "scale");
  if (!json_is_number(scale))
    return st_error_set(ST_EFORMAT, "%s: input.scale must be a number", label);
  c->scale = json_number_value(scale);
  /* The executor divides mean and std by the scale, and a zero or negative
   * scale has no meaning for pixel values. */
  if (!(c->scale > 0.0) || !isfinite(c->scale) ||
      !isfinite(1.0 / c->scale) || 1.0 / c->scale > FLT_MAX)
    return st_error_set(ST_EINVAL, "%s: input.scale must be a positive number",
                        label);
  if ((rc = read_vec3(label, json_object_get(input, "mean"), "input.mean",
                      c->mean)) ||
      (rc = read_vec3(label, json_object_get(input, "std"), "input.std",
                      c->std)))
    return rc;
  for (int k = 0; k < 3; k++)
    if (c->std[k] == 0.0f)
      return st_error_set(ST_EINVAL, "%s: input.std[%d] must be non-zero",
                          label, k);
  return ST_OK;
}

static int parse_student_classes(const char *label, json_t *v,
                                 st_teacher_config *c, int *background) {
  if (!json_is_array(v))
    return st_error_set(ST_EFORMAT,
                        "%s: student_classes must be an array of strings",
                        label);
  size_t n = json_array_size(v);
  if (n < 1 || n > ST_LABELS_MAX_CLASSES)
    return st_error_set(ST_EINVAL,
                        "%s: student_classes must have 1 to %d entries", label,
                        ST_LABELS_MAX_CLASSES);
  *background = -1;
  for (size_t i = 0; i < n; i++) {
    char path[64];
    snprintf(path, sizeof path, "student_classes[%zu]", i);
    int rc = read_string(label, json_array_get(v, i), path,
                         c->student_class_names[i],
                         sizeof c->student_class_names[i]);
    if (rc)
      return rc;
    for (size_t j = 0; j < i; j++)
      if (!strcmp(c->student_class_names[i], c->student_class_names[j]))
        return st_error_set(ST_EINVAL, "%s: %s: '%s' is listed twice", label,
                            path, c->student_class_names[i]);
    if (!strcmp(c->student_class_names[i], ST_TEACHER_BACKGROUND_NAME))
      *background = (int)i;
  }
  if (*background < 0)
    return st_error_set(ST_EINVAL, "%s: student_classes must contain \"%s\"",
                        label, ST_TEACHER_BACKGROUND_NAME);
  c->student_classes = (int)n;
  return ST_OK;
}

/* A class_map key: the canonical decimal spelling of a teacher class
 * ("7", not "07" or "+7"), so that no two keys name the same class. */
static int parse_class_key(const char *label, const char *key, int classes,
                           int *out) {
  size_t n = strlen(key);
  int ok = n > 0 && n <= 3 && (n == 1 || key[0] != '0');
  long v = 0;
  for (size_t i = 0; ok && i < n; i++) {
    ok = key[i] >= '0' && key[i] <= '9';
    v = v * 10 + (key[i] - '0');
  }
  if (!ok)
    return st_error_set(ST_EINVAL,
                        "%s: class_map key '%s' must be a teacher class index "
                        "written in decimal",
                        label, key);
  if (v >= classes)
    return st_error_set(ST_EINVAL,
                        "%s: class_map.%s: teacher class must be below "
                        "classes (%d)",
                        label, key, classes);
  *out = (int)v;
  return ST_OK;
}

static int parse_class_map(const char *label, json_t *v,
                           st_teacher_config *c, int background) {
  if (!json_is_object(v))
    return st_error_set(ST_EFORMAT, "%s: class_map must be an object", label);
  int rc = st_class_map_init(&c->class_map, c->classes, c->student_classes,
                             background);
  if (rc)
    return rc;
  const char *key;
  json_t *value;
  json_object_foreach(v, key, value) {
    int teacher = 0;
    if ((rc = parse_class_key(label, key, c->classes, &teacher)))
      return rc;
    if (!json_is_string(value))
      return st_error_set(ST_EFORMAT,
                          "%s: class_map.%s must be a student class name",
                          label, key);
    const char *name = json_string_value(value);
    int s = 0;
    while (s < c->student_classes &&
           strcmp(name, c->student_class_names[s]) != 0)
      s++;
    if (s == c->student_classes)
      return st_error_set(ST_EINVAL,
                          "%s: class_map.%s: '%s' is not in student_classes",
                          label, key, name);
    if ((rc = st_class_map_set(&c->class_map, teacher, s)))
      return rc;
  }
  return ST_OK;
}

/* A number in (lo, hi] (lo_open) or (lo, hi) (both open). */
static int read_ratio(const char *label, json_t *v, const char *path,
                      int hi_open, double *dst) {
  if (!json_is_number(v))
    return st_error_set(ST_EFORMAT, "%s: %s must be a number", label, path);
  double x = json_number_value(v);
  if (!(x > 0.0) || x > 1.0 || (hi_open && x == 1.0))
    return st_error_set(ST_EINVAL, "%s: %s must be in (0, 1%c", label, path,
                        hi_open ? ')' : ']');
  *dst = x;
  return ST_OK;
}

static int parse_optional(const char *label, json_t *root,
                          st_teacher_config *c) {
  json_t *v;
  int rc;
  if ((v = json_object_get(root, "downsample_ratio")) &&
      (rc = read_ratio(label, v, "downsample_ratio", 0, &c->downsample_ratio)))
    return rc;
  if ((v = json_object_get(root, "alpha_threshold")) &&
      (rc = read_ratio(label, v, "alpha_threshold", 1, &c->alpha_threshold)))
    return rc;
  if (c->alpha_threshold > 0.0 && c->classes != ST_TEACHER_ALPHA_CLASSES)
    return st_error_set(ST_EINVAL, "%s: classes must be %d with "
                        "alpha_threshold (below and above it)", label,
                        ST_TEACHER_ALPHA_CLASSES);
  c->recurrent = ST_TEACHER_RECURRENT_ZERO;
  if ((v = json_object_get(root, "recurrent"))) {
    size_t i = 0;
    while (i < COUNT(recurrent_modes) &&
           (!json_is_string(v) ||
            strcmp(json_string_value(v), recurrent_modes[i].name)))
      i++;
    if (i == COUNT(recurrent_modes))
      return st_error_set(json_is_string(v) ? ST_EINVAL : ST_EFORMAT,
                          "%s: recurrent must be \"zero\" or \"session\"",
                          label);
    c->recurrent = recurrent_modes[i].mode;
  }
  return ST_OK;
}

static int parse_root(const char *label, const char *base_dir, json_t *root,
                      st_teacher_config *out) {
  if (!json_is_object(root))
    return st_error_set(ST_EFORMAT, "%s: top level must be an object", label);
  const char *known[COUNT(top_keys) + COUNT(optional_keys)];
  for (size_t i = 0; i < COUNT(top_keys); i++)
    known[i] = top_keys[i];
  for (size_t i = 0; i < COUNT(optional_keys); i++)
    known[COUNT(top_keys) + i] = optional_keys[i];
  int rc = st_json_check_keys(label, root, "", known, COUNT(known), 0);
  if (rc)
    return rc;
  for (size_t i = 0; i < COUNT(top_keys); i++)
    if (!json_object_get(root, top_keys[i]))
      return st_error_set(ST_EFORMAT, "%s: missing key %s", label,
                          top_keys[i]);
  json_t *input = json_object_get(root, "input");
  if (!json_is_object(input))
    return st_error_set(ST_EFORMAT, "%s: input must be an object", label);
  if ((rc = check_keys(label, input, "input.", input_keys,
                       COUNT(input_keys))))
    return rc;

  /* Large (the class names), so built on the heap and copied out only on
   * success. */
  st_teacher_config *c = calloc(1, sizeof *c);
  if (!c)
    return st_error_set(ST_ENOMEM, "%s: out of memory", label);
  char model[ST_TEACHER_PATH_BYTES];
  int64_t classes = 0;
  int background = 0;
  if ((rc = read_string(label, json_object_get(root, "model"), "model", model,
                        sizeof model)) ||
      (rc = resolve_path(label, base_dir, model, c->model_path,
                         sizeof c->model_path)) ||
      (rc = parse_input(label, input, c)) ||
      (rc = read_string(label, json_object_get(root, "output"), "output",
                        c->output, sizeof c->output)) ||
      (rc = read_int(label, root, "classes", "classes", 1,
                     ST_LABELS_MAX_CLASSES, &classes)))
    goto done;
  c->classes = (int)classes;
  if ((rc = parse_student_classes(label, json_object_get(root,
                                                         "student_classes"),
                                  c, &background)) ||
      (rc = parse_class_map(label, json_object_get(root, "class_map"), c,
                            background)) ||
      (rc = parse_optional(label, root, c)))
    goto done;
  *out = *c;
done:
  free(c);
  return rc;
}

int st_teacher_config_parse(const char *json_text, const char *label,
                            const char *base_dir, st_teacher_config *out) {
  if (!json_text || !out)
    return st_error_set(ST_EINVAL, "teacher config: NULL argument");
  if (!label)
    label = "teacher config";
  json_t *root;
  int rc = st_json_parse(json_text, label, &root);
  if (rc)
    return rc;
  rc = parse_root(label, base_dir, root, out);
  json_decref(root);
  return rc;
}

int st_teacher_config_load(const char *path, st_teacher_config *out) {
  if (!path || !out)
    return st_error_set(ST_EINVAL, "teacher config: NULL argument");
  json_t *root;
  int rc = st_json_load(path, &root);
  if (rc)
    return rc;
  /* The model path is relative to the config file's folder. */
  char dir[ST_TEACHER_PATH_BYTES];
  const char *slash = strrchr(path, '/');
  size_t dlen = slash ? (size_t)(slash - path) : 0;
  if (dlen >= sizeof dir)
    rc = st_error_set(ST_EINVAL, "%s: path too long", path);
  else {
    memcpy(dir, path, dlen);
    dir[dlen] = '\0';
    /* "/teacher.json": the folder is the root. */
    if (slash && dlen == 0)
      snprintf(dir, sizeof dir, "/");
    rc = parse_root(path, slash ? dir : NULL, root, out);
  }
  json_decref(root);
  return rc;
}

/* ---- the teacher ----------------------------------------------------------- */

/* Buffers of one frame size; re-planned when the size changes. */
typedef struct frame_plan {
  int64_t height, width;   /* frame size planned for; 0 = none yet */
  st_tensor image;         /* U8 [H,W,3] on the backend: the upload */
  st_tensor normalised;    /* F32 [1,3,H,W]; unallocated when the frame is
                              the model's input size (normalised straight
                              into `input` then) */
  st_tensor label;         /* U8 [1,H,W]: the student label on the backend */
} frame_plan;

struct st_teacher {
  st_backend *be;            /* borrowed */
  st_teacher_config cfg;     /* settings (bare mode fills one in) */
  st_onnx_model *model;      /* owned */
  st_onnx_plan *plan;        /* owned; planned for [1,3,height,width] */
  int output_index;          /* the logits output of the plan */
  float norm_mean[3];        /* mean / scale: st_image_to_tensor works on
                                raw 8-bit values */
  float norm_std[3];         /* std / scale */
  st_tensor input;           /* F32 [1,3,height,width]: the model input */
  frame_plan frame;          /* per-frame-size buffers */
  st_labels_scratch scratch; /* loss-weight working memory */
  /* Recurrent state (session mode): plan inputs 1..n_states. */
  int n_states;
  char state_in[ST_TEACHER_MAX_STATES][ST_TFJS_NAME_BYTES]; /* "r1i" */
  int state_out[ST_TEACHER_MAX_STATES];  /* plan output index ("r1o") */
  st_tensor state_dev[ST_TEACHER_MAX_STATES]; /* fed to the plan */
  char image_in[ST_TFJS_NAME_BYTES];     /* the image input's name */
  /* Alpha teachers: [threshold plane, alpha] as two-class logits. */
  st_tensor alpha_logits;    /* F32 [1,2,h,w]; unallocated otherwise */
};

struct st_teacher_state {
  int n;                                 /* states (0: nothing to carry) */
  size_t bytes[ST_TEACHER_MAX_STATES];   /* each state's size */
  void *data[ST_TEACHER_MAX_STATES];     /* host copies; NULL until used */
  int valid;                             /* holds a previous frame's state */
};

static void frame_plan_free(frame_plan *f) {
  st_tensor_free(&f->image);
  st_tensor_free(&f->normalised);
  st_tensor_free(&f->label);
  memset(f, 0, sizeof *f);
}

void st_teacher_free(st_teacher *t) {
  if (!t)
    return;
  frame_plan_free(&t->frame);
  st_tensor_free(&t->input);
  st_tensor_free(&t->alpha_logits);
  for (int k = 0; k < t->n_states; k++)
    st_tensor_free(&t->state_dev[k]);
  st_labels_scratch_free(&t->scratch);
  st_onnx_plan_free(t->plan);
  st_onnx_model_free(t->model);
  free(t);
}

const st_teacher_config *st_teacher_get_config(const st_teacher *t) {
  return t ? &t->cfg : NULL;
}

/* Loads the model, plans it for the config's input size and checks the
 * logits output. In bare mode (`bare`) the first output is used and the
 * class count and map come from its channel count. */
/* Imports a TF.js model with the config's bindings: downsample_ratio
 * bound, state inputs bound to zero (`zero_states`) or runtime rank-4
 * tensors, outputs `output` and, for states, their partners. */
static int import_tfjs(st_teacher *t, const st_tfjs_input_info *infos,
                       size_t n_infos, int zero_states, st_onnx_model **out) {
  const st_teacher_config *c = &t->cfg;
  st_tfjs_input opts_in[ST_TEACHER_MAX_STATES + 2];
  const char *outs[ST_TEACHER_MAX_STATES + 1];
  char out_names[ST_TEACHER_MAX_STATES][ST_TFJS_NAME_BYTES];
  size_t n_in = 0, n_out = 0;
  outs[n_out++] = c->output;
  for (size_t i = 0; i < n_infos; i++) {
    if (!strcmp(infos[i].name, ST_TEACHER_DOWNSAMPLE_INPUT))
      opts_in[n_in++] = (st_tfjs_input){.name = infos[i].name, .bound = 1,
                                        .value = c->downsample_ratio};
  }
  for (int k = 0; k < t->n_states; k++) {
    enum { STATE_RANK = 4 }; /* NHWC feature maps */
    opts_in[n_in++] = zero_states
                          ? (st_tfjs_input){.name = t->state_in[k], .bound = 1}
                          : (st_tfjs_input){.name = t->state_in[k],
                                            .rank = STATE_RANK};
    /* "r1i" is paired with "r1o". */
    snprintf(out_names[k], sizeof out_names[k], "%s", t->state_in[k]);
    out_names[k][strlen(out_names[k]) - 1] = 'o';
    outs[n_out++] = out_names[k];
  }
  st_tfjs_options o = {.inputs = opts_in, .n_inputs = n_in, .outputs = outs,
                       .n_outputs = n_out};
  return st_tfjs_load(c->model_path, &o, out);
}

/* Sorts the inputs of a TF.js model: the image (the one of rank 4), the
 * downsample ratio, and recurrent states (names ending in 'i'). */
static int classify_tfjs_inputs(st_teacher *t, st_tfjs_input_info *infos,
                                size_t n) {
  const st_teacher_config *c = &t->cfg;
  t->image_in[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    const char *name = infos[i].name;
    size_t len = strlen(name);
    if (!strcmp(name, ST_TEACHER_DOWNSAMPLE_INPUT)) {
      if (!(c->downsample_ratio > 0.0))
        return st_error_set(ST_EINVAL, "%s: the model has an input '%s': set "
                            "downsample_ratio in the teacher config",
                            c->model_path, name);
    } else if (infos[i].rank == 4 && !t->image_in[0]) {
      snprintf(t->image_in, sizeof t->image_in, "%s", name);
    } else if (len > 1 && name[len - 1] == 'i' &&
               t->n_states < ST_TEACHER_MAX_STATES) {
      snprintf(t->state_in[t->n_states++], sizeof t->state_in[0], "%s", name);
    } else {
      return st_error_set(ST_ENOTSUP, "%s: input '%s' is neither the image "
                          "(rank 4), downsample_ratio nor a recurrent state "
                          "('<name>i' with an output '<name>o')",
                          c->model_path, name);
    }
  }
  if (!t->image_in[0])
    return st_error_set(ST_ENOTSUP, "%s: no input of rank 4 (the image)",
                        c->model_path);
  return ST_OK;
}

/* Loads and plans a TF.js teacher. In session mode the state shapes come
 * from a first plan with zero states; the plan kept takes them as inputs. */
static int start_tfjs(st_teacher *t) {
  st_teacher_config *c = &t->cfg;
  enum { MAX_INPUTS = ST_TEACHER_MAX_STATES + 2 };
  st_tfjs_input_info infos[MAX_INPUTS];
  size_t n = 0;
  ST_TRY(st_tfjs_list_inputs(c->model_path, infos, MAX_INPUTS, &n));
  ST_TRY(classify_tfjs_inputs(t, infos, n));
  const int64_t in_shape[4] = {1, 3, c->height, c->width};
  int session = c->recurrent == ST_TEACHER_RECURRENT_SESSION && t->n_states;
  ST_TRY(import_tfjs(t, infos, n, 1, &t->model));
  ST_TRY(st_onnx_plan_new(t->be, t->model, in_shape, &t->plan));
  if (!session) {
    t->n_states = 0; /* bound to zero: nothing to feed */
    return ST_OK;
  }
  st_onnx_plan_input pin[ST_TEACHER_MAX_STATES + 1];
  memset(pin, 0, sizeof pin);
  pin[0].name = t->image_in;
  pin[0].ndim = 4;
  memcpy(pin[0].shape, in_shape, sizeof in_shape);
  for (int k = 0; k < t->n_states; k++) {
    const st_tensor *o = st_onnx_plan_output(t->plan, 1 + k);
    pin[1 + k].name = t->state_in[k];
    pin[1 + k].ndim = o->ndim;
    memcpy(pin[1 + k].shape, o->shape, sizeof o->shape);
    ST_TRY(st_tensor_alloc(t->be, &t->state_dev[k], ST_F32, o->ndim, o->shape));
  }
  st_onnx_plan_free(t->plan);
  st_onnx_model_free(t->model);
  t->plan = NULL;
  t->model = NULL;
  ST_TRY(import_tfjs(t, infos, n, 0, &t->model));
  ST_TRY(st_onnx_plan_new_inputs(t->be, t->model, pin, 1 + t->n_states,
                              &t->plan));
  for (int k = 0; k < t->n_states; k++)
    t->state_out[k] = 1 + k;
  return ST_OK;
}

static int teacher_start(st_teacher *t, int bare) {
  st_teacher_config *c = &t->cfg;
  int rc;
  if (!bare && st_tfjs_is_model_path(c->model_path)) {
    ST_TRY(start_tfjs(t));
  } else {
    if (c->downsample_ratio > 0.0 ||
        c->recurrent != ST_TEACHER_RECURRENT_ZERO)
      return st_error_set(ST_ENOTSUP, "%s: downsample_ratio and recurrent "
                          "apply to TF.js models only", c->model_path);
    ST_TRY(st_onnx_model_load(c->model_path, &t->model));
    const int64_t in_shape[4] = {1, 3, c->height, c->width};
    ST_TRY(st_onnx_plan_new(t->be, t->model, in_shape, &t->plan));
  }
  if (bare) {
    t->output_index = 0;
    snprintf(c->output, sizeof c->output, "%s", t->model->outputs[0].name);
  } else {
    t->output_index = st_onnx_plan_output_index(t->plan, c->output);
    if (t->output_index < 0)
      return st_error_set(ST_ENOENT, "%s: the model has no output '%s'",
                          c->model_path, c->output);
  }
  const st_tensor *out = st_onnx_plan_output(t->plan, t->output_index);
  char shape[96];
  if (!out || out->dtype != ST_F32 || out->ndim != 4 || out->shape[0] != 1)
    return st_error_set(
        ST_ESHAPE, "%s: output '%s' is %s %s, expected F32 [1,classes,h,w]",
        c->model_path, c->output, out ? st_dtype_name(out->dtype) : "?",
        out ? st_tensor_shape_str(out, shape, sizeof shape) : "?");
  if (bare) {
    if (out->shape[1] < 1 || out->shape[1] > ST_LABELS_MAX_CLASSES)
      return st_error_set(ST_ERANGE,
                          "%s: output '%s' has %lld channels, at most %d "
                          "classes are supported",
                          c->model_path, c->output, (long long)out->shape[1],
                          ST_LABELS_MAX_CLASSES);
    c->classes = c->student_classes = (int)out->shape[1];
    for (int i = 0; i < c->classes; i++)
      snprintf(c->student_class_names[i], sizeof c->student_class_names[i],
               "%d", i);
    /* The last class is the background of a bare model. */
    if ((rc = st_class_map_identity(&c->class_map, c->classes,
                                    c->classes - 1)))
      return rc;
  } else if (c->alpha_threshold > 0.0) {
    if (out->shape[1] != 1)
      return st_error_set(ST_ESHAPE, "%s: output '%s' has %lld channels; an "
                          "alpha matte (alpha_threshold) has one",
                          c->model_path, c->output, (long long)out->shape[1]);
    if ((rc = st_tensor_alloc4(t->be, &t->alpha_logits, ST_F32, 1,
                               ST_TEACHER_ALPHA_CLASSES, out->shape[2],
                               out->shape[3])))
      return rc;
  } else if (out->shape[1] != c->classes) {
    return st_error_set(ST_ESHAPE,
                        "%s: output '%s' has %lld channels but the config "
                        "says classes = %d",
                        c->model_path, c->output, (long long)out->shape[1],
                        c->classes);
  }
  for (int k = 0; k < 3; k++) {
    t->norm_mean[k] = (float)(c->mean[k] / c->scale);
    t->norm_std[k] = (float)(c->std[k] / c->scale);
  }
  return st_tensor_alloc4(t->be, &t->input, ST_F32, 1, 3, c->height,
                          c->width);
}

/* An empty teacher on `be`; `out` is the caller's result pointer, checked
 * here so that both constructors refuse NULL the same way. */
static int teacher_alloc(st_backend *be, st_teacher **out, st_teacher **t) {
  if (!be || !out)
    return st_error_set(ST_EINVAL, "teacher: NULL argument");
  *out = NULL;
  *t = calloc(1, sizeof **t);
  if (!*t)
    return st_error_set(ST_ENOMEM, "teacher: out of memory");
  (*t)->be = be;
  st_labels_scratch_init(&(*t)->scratch);
  return ST_OK;
}

int st_teacher_open(st_backend *be, const char *config_path,
                    st_teacher **out) {
  st_teacher *t;
  int rc = teacher_alloc(be, out, &t);
  if (rc)
    return rc;
  if (!config_path)
    rc = st_error_set(ST_EINVAL, "teacher: NULL config path");
  else if (!(rc = st_teacher_config_load(config_path, &t->cfg)))
    rc = teacher_start(t, 0);
  if (rc) {
    st_teacher_free(t);
    return rc;
  }
  *out = t;
  return ST_OK;
}

int st_teacher_open_bare(st_backend *be, const char *onnx_path, int64_t height,
                         int64_t width, st_teacher **out) {
  st_teacher *t;
  int rc = teacher_alloc(be, out, &t);
  if (rc)
    return rc;
  st_teacher_config *c = &t->cfg;
  if (!onnx_path)
    rc = st_error_set(ST_EINVAL, "teacher: NULL model path");
  else if (height < 1 || width < 1 || height > ST_TEACHER_MAX_INPUT_SIDE ||
           width > ST_TEACHER_MAX_INPUT_SIDE)
    rc = st_error_set(ST_EINVAL, "teacher: input size %lldx%lld outside "
                      "[1, %d]", (long long)height, (long long)width,
                      ST_TEACHER_MAX_INPUT_SIDE);
  else if ((size_t)snprintf(c->model_path, sizeof c->model_path, "%s",
                            onnx_path) >= sizeof c->model_path)
    rc = st_error_set(ST_EINVAL, "teacher: model path too long");
  if (!rc) {
    c->width = width;
    c->height = height;
    memcpy(c->channel_order, channel_orders[0].order,
           sizeof c->channel_order);
    c->scale = ST_TEACHER_BARE_SCALE;
    for (int k = 0; k < 3; k++) {
      c->mean[k] = 0.0f;
      c->std[k] = 1.0f;
    }
    rc = teacher_start(t, 1);
  }
  if (rc) {
    st_teacher_free(t);
    return rc;
  }
  *out = t;
  return ST_OK;
}

/* Plans the per-frame buffers for an HxW frame (a no-op at the planned
 * size). */
static int frame_plan_ensure(st_teacher *t, int64_t h, int64_t w) {
  frame_plan *f = &t->frame;
  if (f->height == h && f->width == w)
    return ST_OK;
  frame_plan_free(f);
  const int64_t img_shape[3] = {h, w, 3}, label_shape[3] = {1, h, w};
  int rc;
  if ((rc = st_tensor_alloc(t->be, &f->image, ST_U8, 3, img_shape)) ||
      (rc = st_tensor_alloc(t->be, &f->label, ST_U8, 3, label_shape)))
    goto err;
  if ((h != t->cfg.height || w != t->cfg.width) &&
      (rc = st_tensor_alloc4(t->be, &f->normalised, ST_F32, 1, 3, h, w)))
    goto err;
  if ((rc = st_labels_scratch_reserve(&t->scratch, h, w)))
    goto err;
  f->height = h;
  f->width = w;
  return ST_OK;
err:
  frame_plan_free(f);
  return rc;
}

/* Runs the plan from `state` (NULL: zero) and stores the new state. */
static int run_model(st_teacher *t, st_teacher_state *state) {
  if (!t->n_states)
    return st_onnx_plan_run(t->plan, &t->input, NULL);
  const st_tensor *inputs[ST_TEACHER_MAX_STATES + 1] = {&t->input};
  for (int k = 0; k < t->n_states; k++) {
    st_tensor *d = &t->state_dev[k];
    if (state && state->valid)
      ST_TRY(st_tensor_upload(t->be, d, state->data[k], state->bytes[k]));
    else
      ST_TRY(st_fill(t->be, d, 0.0f));
    inputs[1 + k] = d;
  }
  ST_TRY(st_onnx_plan_run_inputs(t->plan, inputs, 1 + t->n_states));
  if (!state)
    return ST_OK;
  for (int k = 0; k < t->n_states; k++) {
    const st_tensor *o = st_onnx_plan_output(t->plan, t->state_out[k]);
    size_t bytes = st_tensor_nbytes(o);
    if (state->n != t->n_states || (state->data[k] && state->bytes[k] != bytes))
      return st_error_set(ST_ESHAPE, "teacher: the state belongs to a teacher "
                          "of another model or input size");
    if (!state->data[k] && !(state->data[k] = malloc(bytes)))
      return st_error_set(ST_ENOMEM, "teacher: out of memory for a state");
    state->bytes[k] = bytes;
    ST_TRY(st_tensor_download(t->be, o, state->data[k], bytes));
  }
  state->valid = 1;
  return ST_OK;
}

int st_teacher_state_new(const st_teacher *t, st_teacher_state **out) {
  if (!t || !out)
    return st_error_set(ST_EINVAL, "teacher: NULL argument");
  *out = calloc(1, sizeof **out);
  if (!*out)
    return st_error_set(ST_ENOMEM, "teacher: out of memory");
  (*out)->n = t->n_states;
  return ST_OK;
}

void st_teacher_state_reset(st_teacher_state *s) {
  if (s)
    s->valid = 0;
}

void st_teacher_state_free(st_teacher_state *s) {
  if (!s)
    return;
  for (int k = 0; k < ST_TEACHER_MAX_STATES; k++)
    free(s->data[k]);
  free(s);
}

int st_teacher_is_recurrent(const st_teacher *t) {
  return t && t->n_states > 0;
}

int st_teacher_label(st_teacher *t, const st_tensor *image,
                     const st_tensor **logits, uint8_t *label, float *weight) {
  return st_teacher_label_session(t, NULL, image, logits, label, weight);
}

int st_teacher_label_session(st_teacher *t, st_teacher_state *state,
                             const st_tensor *image, const st_tensor **logits,
                             uint8_t *label, float *weight) {
  if (!t || !image || !label || !weight)
    return st_error_set(ST_EINVAL, "teacher: NULL argument");
  char shape[96];
  if (!image->data || image->dtype != ST_U8 || image->ndim != 3 ||
      image->shape[2] != 3 || image->shape[0] < 1 || image->shape[1] < 1)
    return st_error_set(ST_ESHAPE, "teacher: image is %s %s, expected U8 "
                        "[H,W,3]", st_dtype_name(image->dtype),
                        st_tensor_shape_str(image, shape, sizeof shape));
  const int64_t h = image->shape[0], w = image->shape[1];
  int rc;
  if ((rc = frame_plan_ensure(t, h, w)))
    return rc;
  frame_plan *f = &t->frame;
  if ((rc = st_tensor_upload(t->be, &f->image, image->data,
                             st_tensor_nbytes(image))))
    return rc;
  /* Normalising before the resize equals normalising after it: the
   * normalisation is affine per channel and bilinear weights sum to 1. */
  if (f->normalised.data) {
    if ((rc = st_image_to_tensor(t->be, &f->image, t->cfg.channel_order,
                                 t->norm_mean, t->norm_std,
                                 &f->normalised)) ||
        (rc = st_resize_bilinear_fwd(t->be, &f->normalised, &t->input)))
      return rc;
  } else if ((rc = st_image_to_tensor(t->be, &f->image, t->cfg.channel_order,
                                      t->norm_mean, t->norm_std,
                                      &t->input))) {
    return rc;
  }
  if ((rc = run_model(t, state)))
    return rc;
  const st_tensor *out = st_onnx_plan_output(t->plan, t->output_index);
  if (t->alpha_logits.data) {
    /* Plane 0 is the threshold, plane 1 the alpha (contiguous: N is 1),
     * so that the argmax picks class 1 exactly where alpha > threshold. */
    const st_tensor *a = &t->alpha_logits;
    int64_t plane = a->shape[2] * a->shape[3];
    st_tensor p0 = st_tensor_view4(a->data, ST_F32, 1, 1, a->shape[2],
                                   a->shape[3]);
    st_tensor p1 = st_tensor_view4((float *)a->data + plane, ST_F32, 1, 1,
                                   a->shape[2], a->shape[3]);
    if ((rc = st_fill(t->be, &p0, (float)t->cfg.alpha_threshold)) ||
        (rc = st_copy(t->be, out, &p1)))
      return rc;
    out = a;
  }
  if ((rc = st_labels_from_logits(t->be, out, &t->cfg.class_map, &f->label,
                                  label)) ||
      (rc =
           st_loss_weights(label, h, w, t->cfg.class_map.background,
                           ST_LOSS_WEIGHT_DEFAULT_FACTOR,
                           ST_LOSS_WEIGHT_DEFAULT_DILATE, weight, &t->scratch)))
    return rc;
  if (logits)
    *logits = out;
  return ST_OK;
}
