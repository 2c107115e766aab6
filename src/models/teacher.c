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

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Every key of the schema; all are required. */
static const char *const top_keys[] = {"model",   "input",     "output",
                                       "classes", "class_map",
                                       "student_classes"};
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

static int read_int(const char *label, json_t *v, const char *path,
                    json_int_t lo, json_int_t hi, int64_t *dst) {
  if (!json_is_integer(v))
    return st_error_set(ST_EFORMAT, "%s: %s must be an integer", label, path);
  json_int_t x = json_integer_value(v);
  if (x < lo || x > hi)
    return st_error_set(ST_EINVAL, "%s: %s must be in [%lld, %lld]", label,
                        path, (long long)lo, (long long)hi);
  *dst = (int64_t)x;
  return ST_OK;
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
  if ((rc = read_int(label, json_object_get(input, "width"), "input.width", 1,
                     ST_TEACHER_MAX_INPUT_SIDE, &c->width)) ||
      (rc = read_int(label, json_object_get(input, "height"), "input.height",
                     1, ST_TEACHER_MAX_INPUT_SIDE, &c->height)))
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

static int parse_root(const char *label, const char *base_dir, json_t *root,
                      st_teacher_config *out) {
  if (!json_is_object(root))
    return st_error_set(ST_EFORMAT, "%s: top level must be an object", label);
  int rc = check_keys(label, root, "", top_keys, COUNT(top_keys));
  if (rc)
    return rc;
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
      (rc = read_int(label, json_object_get(root, "classes"), "classes", 1,
                     ST_LABELS_MAX_CLASSES, &classes)))
    goto done;
  c->classes = (int)classes;
  if ((rc = parse_student_classes(label, json_object_get(root,
                                                         "student_classes"),
                                  c, &background)) ||
      (rc = parse_class_map(label, json_object_get(root, "class_map"), c,
                            background)))
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
  st_tensor resized;       /* F32 [1,T,H,W]: logits at the frame size;
                              unallocated when the output is that size */
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
};

static void frame_plan_free(frame_plan *f) {
  st_tensor_free(&f->image);
  st_tensor_free(&f->normalised);
  st_tensor_free(&f->resized);
  st_tensor_free(&f->label);
  memset(f, 0, sizeof *f);
}

void st_teacher_free(st_teacher *t) {
  if (!t)
    return;
  frame_plan_free(&t->frame);
  st_tensor_free(&t->input);
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
static int teacher_start(st_teacher *t, int bare) {
  st_teacher_config *c = &t->cfg;
  int rc = st_onnx_model_load(c->model_path, &t->model);
  if (rc)
    return rc;
  const int64_t in_shape[4] = {1, 3, c->height, c->width};
  if ((rc = st_onnx_plan_new(t->be, t->model, in_shape, &t->plan)))
    return rc;
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
  const st_tensor *out = st_onnx_plan_output(t->plan, t->output_index);
  const int64_t img_shape[3] = {h, w, 3}, label_shape[3] = {1, h, w};
  int rc;
  if ((rc = st_tensor_alloc(t->be, &f->image, ST_U8, 3, img_shape)) ||
      (rc = st_tensor_alloc(t->be, &f->label, ST_U8, 3, label_shape)))
    goto err;
  if ((h != t->cfg.height || w != t->cfg.width) &&
      (rc = st_tensor_alloc4(t->be, &f->normalised, ST_F32, 1, 3, h, w)))
    goto err;
  if ((out->shape[2] != h || out->shape[3] != w) &&
      (rc = st_tensor_alloc4(t->be, &f->resized, ST_F32, 1, out->shape[1], h,
                             w)))
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

int st_teacher_label(st_teacher *t, const st_tensor *image,
                     const st_tensor **logits, uint8_t *label, float *weight) {
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
  if ((rc = st_onnx_plan_run(t->plan, &t->input, NULL)))
    return rc;
  const st_tensor *out = st_onnx_plan_output(t->plan, t->output_index);
  if ((rc = st_labels_from_logits(t->be, out, &t->cfg.class_map,
                                  f->resized.data ? &f->resized : NULL,
                                  &f->label, label)) ||
      (rc = st_loss_weights(label, h, w, t->cfg.class_map.background,
                            ST_LOSS_WEIGHT_DEFAULT_FACTOR,
                            ST_LOSS_WEIGHT_DEFAULT_DILATE, weight,
                            &t->scratch)))
    return rc;
  if (logits)
    *logits = out;
  return ST_OK;
}
