/* The teacher: a segmentation model (ONNX, or a TensorFlow.js graph model
 * imported onto the same IR), its config, and the step that turns one frame
 * into the student's distillation targets.
 *
 * A teacher is a model file plus a JSON config (config/teacher-*.json,
 * schema in docs/teacher.md) that says how to feed it (input size, channel
 * order, affine normalisation), which output holds the logits (or an alpha
 * matte, thresholded into two classes), and how its classes map onto the
 * student's. st_teacher_label runs the whole chain for one key frame:
 * upload, normalise, resize to the model's input size when the frame
 * differs, run the planned executor, then the label map at the frame size
 * (st_labels_from_logits) and the loss weights (st_loss_weights).
 *
 * Recurrent teachers (Robust Video Matting: inputs r1i..r4i, outputs
 * r1o..r4o) carry a state from key frame to key frame of one video. With
 * "recurrent": "session" the caller keeps one st_teacher_state per video
 * stream (a server: per session) and passes it to st_teacher_label_session,
 * which feeds the state in and stores the new one; a NULL state, and every
 * call of st_teacher_label, runs from the zero state. States live on the
 * host, so any teacher opened from the same config (any worker) can
 * continue a stream.
 *
 * Buffers: the executor plan is made once for the model's input size at
 * open; the per-frame buffers (uploaded image, normalised frame, resized
 * logits, label) are planned for the frame size of the first call and
 * re-planned only when the size changes, so a stream of equal frames
 * allocates nothing after its first frame.
 *
 * Errors come back as status codes with a detail line: config problems name
 * the file and the key path ("teacher.json: input.std[1] must be
 * non-zero"); syntax errors, wrong JSON types, unknown and missing keys are
 * ST_EFORMAT, values out of range ST_EINVAL.
 *
 * Ownership: an st_teacher owns its model, plan and buffers; the backend is
 * borrowed and must outlive it. The logits returned by st_teacher_label are
 * owned by the teacher and valid until its next call or st_teacher_free.
 */
#ifndef ST_MODELS_TEACHER_H
#define ST_MODELS_TEACHER_H

#include <stdint.h>

#include "gpu/backend.h"
#include "models/labels.h"

/* Limits of the config schema. */
#define ST_TEACHER_MAX_INPUT_SIDE 16384      /* input.width / input.height */
#define ST_TEACHER_PATH_BYTES 4096           /* resolved model path */
#define ST_TEACHER_OUTPUT_NAME_BYTES 256     /* "output" */
#define ST_TEACHER_CLASS_NAME_BYTES 64       /* one student class name */
/* The student class that unmapped teacher classes go to; it must be one of
 * student_classes. */
#define ST_TEACHER_BACKGROUND_NAME "background"

/* Bare-model mode (--model FILE.onnx): 8-bit pixels scaled to [0,1]. */
#define ST_TEACHER_BARE_SCALE (1.0 / 255.0)
/* The model input a config's downsample_ratio binds (RVM's). */
#define ST_TEACHER_DOWNSAMPLE_INPUT "downsample_ratio"
/* Recurrent state inputs a model may have besides the image. */
#define ST_TEACHER_MAX_STATES 8
/* Classes of an alpha teacher: 0 below the threshold, 1 above. */
#define ST_TEACHER_ALPHA_CLASSES 2

typedef enum st_teacher_recurrent {
  ST_TEACHER_RECURRENT_ZERO = 0, /* every key frame from the zero state */
  ST_TEACHER_RECURRENT_SESSION,  /* the state carried along a stream */
} st_teacher_recurrent;

typedef struct st_teacher_config {
  char model_path[ST_TEACHER_PATH_BYTES]; /* the ONNX file, resolved against
                                             the config file's folder */
  int64_t width;                /* model input width, pixels */
  int64_t height;               /* model input height, pixels */
  int channel_order[3];         /* model input channel c takes RGB channel
                                   channel_order[c]: RGB {0,1,2}, BGR
                                   {2,1,0} */
  double scale;                 /* multiplies each 8-bit value first, > 0 */
  float mean[3];                /* subtracted after scaling, per model input
                                   channel */
  float std[3];                 /* then divided by, non-zero */
  char output[ST_TEACHER_OUTPUT_NAME_BYTES]; /* the logits output's name */
  int classes;                  /* teacher classes T, [1, 256] */
  int student_classes;          /* S, [1, 256] */
  char student_class_names[ST_LABELS_MAX_CLASSES]
                          [ST_TEACHER_CLASS_NAME_BYTES]; /* label i's name */
  st_class_map class_map;       /* teacher class -> student class; unmapped
                                   ones go to the background class */
  /* Optional keys (TF.js models). */
  double downsample_ratio;      /* (0, 1]: bound to the model input
                                   "downsample_ratio"; 0: not set */
  st_teacher_recurrent recurrent; /* state handling ("zero" by default) */
  double alpha_threshold;       /* (0, 1): `output` is an alpha matte
                                   [1,1,h,w]; teacher class 1 where it is
                                   above, 0 elsewhere; 0: logits */
} st_teacher_config;

/* Reads and validates a teacher config file. Every key of docs/teacher.md
 * is required (class_map may be empty) except downsample_ratio, recurrent
 * and alpha_threshold; unknown keys are refused. The
 * detail line of an error starts with `path`. *out is written only on
 * success. */
int st_teacher_config_load(const char *path, st_teacher_config *out);
/* Same for JSON text; `label` names it in errors and a relative model path
 * is resolved against `base_dir` (NULL or "": left as written). */
int st_teacher_config_parse(const char *json_text, const char *label,
                            const char *base_dir, st_teacher_config *out);

typedef struct st_teacher st_teacher;

/* Loads the config, the model (ONNX, or TF.js when the model path ends in
 * ".json"), and plans the executor for the config's input size. Checks that
 * the named output exists and has `classes` channels (one, an alpha matte,
 * with alpha_threshold). */
int st_teacher_open(st_backend *be, const char *config_path,
                    st_teacher **out);
/* A bare model (no config): RGB scaled to [0,1], no mean/std, input
 * [1,3,height,width], the model's first output as the logits, an identity
 * class map over its C output channels with the last class (C-1) as
 * background. */
int st_teacher_open_bare(st_backend *be, const char *onnx_path,
                         int64_t height, int64_t width, st_teacher **out);
/* Accepts NULL. */
void st_teacher_free(st_teacher *t);

/* The teacher's settings (after open; bare mode fills one in). */
const st_teacher_config *st_teacher_get_config(const st_teacher *t);

/* Labels one frame.
 * image   host U8 [H,W,3] RGB, any size: resized (bilinear) to the model's
 *         input size when it differs.
 * logits  on return, the model's raw output F32 [1,T,h,w] on the backend
 *         (owned by the teacher; may be NULL when not wanted).
 * label   host, H*W bytes: the student label (row-major).
 * weight  host, H*W floats: the loss weights (ST_LOSS_WEIGHT_DEFAULT_FACTOR
 *         inside grown object boxes, 1 elsewhere).
 * Synchronises the backend. */
int st_teacher_label(st_teacher *t, const st_tensor *image,
                     const st_tensor **logits, uint8_t *label, float *weight);

/* The recurrent state of one video stream, on the host. */
typedef struct st_teacher_state st_teacher_state;

/* A zero state for streams labelled by `t` (or by any teacher opened from
 * the same config). Works for every teacher; for one without recurrent
 * state (or "recurrent": "zero") it holds nothing and changes nothing. Its
 * buffers are allocated at the first labelled frame. */
int st_teacher_state_new(const st_teacher *t, st_teacher_state **out);
/* Back to the zero state (a cut or a seek in the stream). */
void st_teacher_state_reset(st_teacher_state *s);
/* Accepts NULL. */
void st_teacher_state_free(st_teacher_state *s);
/* 1 when the teacher carries state between frames ("recurrent":
 * "session" on a model with state inputs). */
int st_teacher_is_recurrent(const st_teacher *t);
/* st_teacher_label for one frame of the stream that `state` follows: the
 * model starts from the state (zero for a new one) and the state is
 * replaced by the model's new one. state may be NULL (zero state, nothing
 * stored). Frames of one stream must be labelled in order, one at a time. */
int st_teacher_label_session(st_teacher *t, st_teacher_state *state,
                             const st_tensor *image, const st_tensor **logits,
                             uint8_t *label, float *weight);

#endif
