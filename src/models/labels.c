#include "models/labels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

/* Loss weights outside every object box. */
#define ST_LOSS_WEIGHT_PLAIN 1.0f
/* Label values are bytes; a background outside them could never match. */
#define ST_LABEL_MAX_VALUE 255

/* ---- class map ------------------------------------------------------------ */

static int check_class_count(const char *what, int count) {
  if (count < 1 || count > ST_LABELS_MAX_CLASSES)
    return st_error_set(ST_ERANGE, "class map: %d %s classes (1..%d supported)",
                        count, what, ST_LABELS_MAX_CLASSES);
  return ST_OK;
}

int st_class_map_init(st_class_map *m, int teacher_classes,
                      int student_classes, int background) {
  if (!m)
    return st_error_set(ST_EINVAL, "class map: NULL map");
  m->teacher_classes = 0;
  int rc = check_class_count("teacher", teacher_classes);
  if (!rc)
    rc = check_class_count("student", student_classes);
  if (rc)
    return rc;
  if (background < 0 || background >= student_classes)
    return st_error_set(ST_ERANGE,
                        "class map: background class %d not in [0,%d)",
                        background, student_classes);
  m->student_classes = student_classes;
  m->background = background;
  /* Entries past teacher_classes are never read; keeping them at the
   * background as well means no byte of the map is indeterminate. */
  memset(m->to_student, background, sizeof m->to_student);
  m->teacher_classes = teacher_classes;
  return ST_OK;
}

int st_class_map_identity(st_class_map *m, int classes, int background) {
  int rc = st_class_map_init(m, classes, classes, background);
  if (rc)
    return rc;
  for (int c = 0; c < classes; c++)
    m->to_student[c] = (uint8_t)c;
  return ST_OK;
}

int st_class_map_set(st_class_map *m, int teacher, int student) {
  if (!m || m->teacher_classes == 0)
    return st_error_set(ST_EINVAL, "class map: not initialised");
  if (teacher < 0 || teacher >= m->teacher_classes)
    return st_error_set(ST_ERANGE, "class map: teacher class %d not in [0,%d)",
                        teacher, m->teacher_classes);
  if (student < 0 || student >= m->student_classes)
    return st_error_set(ST_ERANGE,
                        "class map: student class %d (for teacher class %d) "
                        "not in [0,%d)",
                        student, teacher, m->student_classes);
  m->to_student[teacher] = (uint8_t)student;
  return ST_OK;
}

int st_class_map_check(const st_class_map *m) {
  if (!m || m->teacher_classes == 0)
    return st_error_set(ST_EINVAL, "class map: not initialised");
  int rc = check_class_count("teacher", m->teacher_classes);
  if (!rc)
    rc = check_class_count("student", m->student_classes);
  if (rc)
    return rc;
  if (m->background < 0 || m->background >= m->student_classes)
    return st_error_set(ST_ERANGE,
                        "class map: background class %d not in [0,%d)",
                        m->background, m->student_classes);
  for (int t = 0; t < m->teacher_classes; t++)
    if (m->to_student[t] >= m->student_classes)
      return st_error_set(ST_ERANGE,
                          "class map: teacher class %d maps to student class "
                          "%d, not in [0,%d)",
                          t, m->to_student[t], m->student_classes);
  return ST_OK;
}

/* ---- label map ------------------------------------------------------------ */

static int check_f32_4d(const char *what, const st_tensor *t) {
  if (!t || !t->data)
    return st_error_set(ST_EINVAL, "labels: %s is missing", what);
  if (t->dtype != ST_F32)
    return st_error_set(ST_EDTYPE, "labels: %s is %s, expected F32", what,
                        st_dtype_name(t->dtype));
  if (t->ndim != 4)
    return st_error_set(ST_ESHAPE, "labels: %s has rank %d, expected 4", what,
                        t->ndim);
  return ST_OK;
}

int st_labels_from_logits(st_backend *be, const st_tensor *teacher_logits,
                          const st_class_map *m, st_tensor *label,
                          uint8_t *host_label) {
  char s1[96];
  if (!be || !host_label)
    return st_error_set(ST_EINVAL, "labels: missing backend or host label");
  int rc = st_class_map_check(m);
  if (rc)
    return rc;
  if ((rc = check_f32_4d("teacher logits", teacher_logits)))
    return rc;
  if (teacher_logits->shape[0] != 1 ||
      teacher_logits->shape[1] != m->teacher_classes)
    return st_error_set(ST_ESHAPE,
                        "labels: teacher logits %s, expected [1,%d,h,w] for "
                        "the class map's %d teacher classes",
                        st_tensor_shape_str(teacher_logits, s1, sizeof s1),
                        m->teacher_classes, m->teacher_classes);
  if (!label || !label->data)
    return st_error_set(ST_EINVAL, "labels: label is missing");
  if (label->dtype != ST_U8)
    return st_error_set(ST_EDTYPE, "labels: label is %s, expected U8",
                        st_dtype_name(label->dtype));
  if (label->ndim != 3 || label->shape[0] != 1 || label->shape[1] < 1 ||
      label->shape[2] < 1)
    return st_error_set(ST_ESHAPE, "labels: label %s, expected [1,H,W]",
                        st_tensor_shape_str(label, s1, sizeof s1));
  const int64_t frame_h = label->shape[1], frame_w = label->shape[2];

  const int in_place = host_label == (uint8_t *)label->data;
  if (in_place && !st_backend_is_host(be))
    return st_error_set(ST_EINVAL,
                        "labels: host label is the label tensor's own "
                        "storage, which %s host code cannot address",
                        st_backend_name(be));

  /* The argmax of the logits resized to the frame, without them in memory;
   * at the frame's own size it reads the teacher's logits directly (a
   * same-size resize would copy them unchanged). */
  const int same_size = teacher_logits->shape[2] == frame_h &&
                        teacher_logits->shape[3] == frame_w;
  if ((rc = same_size ? st_argmax_channels(be, teacher_logits, label)
                      : st_argmax_resized(be, teacher_logits, label)))
    return rc;
  const size_t pixels = (size_t)(frame_h * frame_w);
  if (!in_place && (rc = st_tensor_download(be, label, host_label, pixels)))
    return rc;
  /* The map is 256 bytes: a host lookup costs less than a kernel launch,
   * and the host needs the label anyway for the loss weights. */
  for (size_t i = 0; i < pixels; i++)
    host_label[i] = m->to_student[host_label[i]];
  if (!in_place && (rc = st_tensor_upload(be, label, host_label, pixels)))
    return rc;
  return ST_OK;
}

/* ---- loss weights ---------------------------------------------------------- */

void st_labels_scratch_init(st_labels_scratch *s) {
  memset(s, 0, sizeof *s);
}

int st_labels_scratch_reserve(st_labels_scratch *s, int64_t h, int64_t w) {
  if (!s)
    return st_error_set(ST_EINVAL, "labels scratch: NULL");
  if (h < 1 || w < 1)
    return st_error_set(ST_EINVAL, "labels scratch: empty %lldx%lld frame",
                        (long long)h, (long long)w);
  /* Pixel indices live in int32 to halve the stack's memory; 2^31 pixels
   * is some 46000 x 46000, far past any video frame. */
  if (h > INT32_MAX / w)
    return st_error_set(ST_ERANGE,
                        "labels scratch: %lldx%lld frame has more than %d "
                        "pixels",
                        (long long)h, (long long)w, INT32_MAX);
  const int64_t pixels = h * w;
  if (pixels <= s->capacity)
    return ST_OK;
  uint8_t *seen = malloc((size_t)pixels);
  int32_t *pending = malloc((size_t)pixels * sizeof *pending);
  if (!seen || !pending) {
    free(seen);
    free(pending);
    return st_error_set(ST_ENOMEM,
                        "labels scratch: no memory for %lld pixels",
                        (long long)pixels);
  }
  free(s->seen);
  free(s->pending);
  s->seen = seen;
  s->pending = pending;
  s->capacity = pixels;
  return ST_OK;
}

void st_labels_scratch_free(st_labels_scratch *s) {
  if (!s)
    return;
  free(s->seen);
  free(s->pending);
  st_labels_scratch_init(s);
}

/* Python's max(0, int(v)): v < 1 truncates to 0 or below. Written as a
 * comparison so that a hugely negative v is never converted. */
static int64_t grown_low(double v) { return v < 1.0 ? 0 : (int64_t)v; }

/* Python's min(last, int(v)) for v >= 0, where truncation is the floor:
 * int(v) >= last exactly when v >= last. */
static int64_t grown_high(double v, int64_t last) {
  return v >= (double)last ? last : (int64_t)v;
}

int st_loss_weights(const uint8_t *label, int64_t h, int64_t w, int background,
                    float factor, double dilate, float *out,
                    st_labels_scratch *scratch) {
  if (!label || !out || !scratch)
    return st_error_set(ST_EINVAL, "loss weights: missing argument");
  if (background < 0 || background > ST_LABEL_MAX_VALUE)
    return st_error_set(ST_EINVAL,
                        "loss weights: background %d not a label value",
                        background);
  /* Negated comparisons so that NaN fails too. */
  if (!(dilate >= 0.0 && isfinite(dilate)))
    return st_error_set(ST_EINVAL, "loss weights: dilate %g not finite >= 0",
                        dilate);
  if (!isfinite(factor))
    return st_error_set(ST_EINVAL, "loss weights: factor %g not finite",
                        (double)factor);
  int rc = st_labels_scratch_reserve(scratch, h, w);
  if (rc)
    return rc;

  /* The reserve has checked that h * w fits in int32. */
  const int32_t width = (int32_t)w, height = (int32_t)h;
  const int32_t pixels = width * height;
  const uint8_t bg = (uint8_t)background;
  uint8_t *seen = scratch->seen;
  int32_t *pending = scratch->pending;
  for (int32_t i = 0; i < pixels; i++) {
    out[i] = ST_LOSS_WEIGHT_PLAIN;
    seen[i] = 0;
  }
  scratch->components = 0;

  for (int32_t start = 0; start < pixels; start++) {
    if (seen[start] || label[start] == bg)
      continue;
    /* Flood one component depth-first with an explicit stack. A pixel is
     * marked when pushed, so each is pushed at most once and the stack never
     * holds more than the frame. The box is the component's extreme rows
     * and columns, which is what ndimage.find_objects reports. */
    int32_t top = 0;
    seen[start] = 1;
    pending[top++] = start;
    int32_t y0 = start / width, y1 = y0, x0 = start % width, x1 = x0;
    while (top > 0) {
      const int32_t p = pending[--top];
      const int32_t py = p / width, px = p - py * width;
      y0 = py < y0 ? py : y0;
      y1 = py > y1 ? py : y1;
      x0 = px < x0 ? px : x0;
      x1 = px > x1 ? px : x1;
      /* The 8 neighbours: ndimage.label with a 3x3 structure of ones. */
      const int32_t ya = py > 0 ? py - 1 : 0;
      const int32_t yb = py < height - 1 ? py + 1 : py;
      const int32_t xa = px > 0 ? px - 1 : 0;
      const int32_t xb = px < width - 1 ? px + 1 : px;
      for (int32_t ny = ya; ny <= yb; ny++)
        for (int32_t nx = xa; nx <= xb; nx++) {
          const int32_t q = ny * width + nx;
          if (!seen[q] && label[q] != bg) {
            seen[q] = 1;
            pending[top++] = q;
          }
        }
    }
    scratch->components++;

    /* The reference's arithmetic, in its order and in double (Python
     * floats): gy = (y1 - y0) * dilate / 2, bounds int(y0 - gy) and
     * int(y1 + gy) clipped to the image. */
    const double gy = (double)(y1 - y0) * dilate / 2.0;
    const double gx = (double)(x1 - x0) * dilate / 2.0;
    const int64_t ra = grown_low((double)y0 - gy);
    const int64_t rb = grown_high((double)y1 + gy, h - 1);
    const int64_t ca = grown_low((double)x0 - gx);
    const int64_t cb = grown_high((double)x1 + gx, w - 1);
    for (int64_t r = ra; r <= rb; r++) {
      float *row = out + r * w;
      for (int64_t c = ca; c <= cb; c++)
        row[c] = factor;
    }
  }
  return ST_OK;
}
