/* The student configuration: the one place where the student's input
 * normalisation, class count, distillation and striding settings are
 * chosen (config/student.json), shared by the server, the client and the
 * model tool so that both ends normalise frames and train identically.
 *
 * JSON schema (every key optional; a missing key takes the default shown;
 * unknown keys are errors):
 *   {
 *     "num_classes": 9,                 integer in [2, 256]
 *     "input": {
 *       "channel_order": "bgr",         "bgr" or "rgb": order of the
 *                                       network's input channels
 *       "mean": [103.53, 116.28, 123.675],  3 numbers, per network input
 *                                       channel (so B, G, R for "bgr")
 *       "std": [1.0, 1.0, 1.0]          3 non-zero numbers, same order
 *     },
 *     "distill": {
 *       "threshold": 0.8,               number in (0, 1); Algorithm 1's
 *                                       early stop and Algorithm 2's pivot
 *       "max_updates": 8,               integer >= 0, Adam steps per key
 *                                       frame
 *       "lr": 0.01,                     number > 0, Adam learning rate
 *       "trainable": ["dec2", "dec3", "out_conv1", "out_conv2",
 *                     "out_conv3"]      distinct student module names
 *                                       (ST_STUDENT_MODULES), or "full"
 *     },
 *     "stride": {"min": 8, "max": 64},  integers, 1 <= min <= max (frames)
 *     "seed": 0                         integer in [0, 2^31-1]
 *   }
 * Numbers may be written as integers or reals wherever a number is asked;
 * integer keys reject reals. Errors name the file and the key path:
 * "student.json: distill.threshold must be in (0,1)". Syntax errors, wrong
 * JSON types and unknown keys are ST_EFORMAT; values out of range and
 * unknown module names are ST_EINVAL.
 */
#ifndef ST_MODELS_CONFIG_H
#define ST_MODELS_CONFIG_H

#include "models/distill.h"
#include "models/stride.h"

/* Limits of the schema. */
#define ST_STUDENT_MIN_CLASSES 2
#define ST_STUDENT_MAX_CLASSES 256
/* Room for module names; the student has 11 modules. */
#define ST_STUDENT_CONFIG_MAX_TRAINABLE 16
#define ST_STUDENT_MODULE_NAME_BYTES 64

/* Paper defaults (shadowtutor_ref.py and ShadowTutor section 5). */
#define ST_STUDENT_DEFAULT_NUM_CLASSES 9
/* Detectron2's pixel means for B, G, R; std 1. */
#define ST_STUDENT_DEFAULT_MEAN_B 103.530f
#define ST_STUDENT_DEFAULT_MEAN_G 116.280f
#define ST_STUDENT_DEFAULT_MEAN_R 123.675f
#define ST_STUDENT_DEFAULT_STD 1.0f
#define ST_STUDENT_DEFAULT_THRESHOLD 0.8
#define ST_STUDENT_DEFAULT_MIN_STRIDE 8
#define ST_STUDENT_DEFAULT_MAX_STRIDE 64
#define ST_STUDENT_DEFAULT_MAX_UPDATES 8
#define ST_STUDENT_DEFAULT_LR 0.01
/* Partial distillation trains the modules after dec1. */
#define ST_STUDENT_DEFAULT_TRAINABLE                                           \
  { "dec2", "dec3", "out_conv1", "out_conv2", "out_conv3" }
#define ST_STUDENT_DEFAULT_SEED 0

typedef struct st_student_config {
  int num_classes;      /* output classes, [2, 256] */
  int channel_order[3]; /* network input channel c takes RGB channel
                           channel_order[c]: BGR = {2,1,0}, RGB = {0,1,2} */
  float mean[3];        /* subtracted, per network input channel */
  float std[3];         /* divided by, per network input channel, non-zero */
  double threshold;     /* mIoU pivot of Algorithms 1 and 2, (0, 1) */
  int min_stride;       /* frames between key frames, at least */
  int max_stride;       /* frames between key frames, at most */
  int max_updates;      /* Adam steps per key frame, >= 0 */
  double lr;            /* Adam learning rate, > 0 */
  int trainable_full;   /* 1: train every tensor (trainable_count is 0) */
  char trainable[ST_STUDENT_CONFIG_MAX_TRAINABLE]
                [ST_STUDENT_MODULE_NAME_BYTES]; /* module names ("dec2"),
                                                   distinct, in file order */
  int trainable_count;  /* entries used in trainable */
  int seed;             /* weight initialisation seed, >= 0 */
} st_student_config;

/* Fills *c with the paper defaults listed above (and zeroes the rest). */
void st_student_config_defaults(st_student_config *c);

/* Reads and validates a config file. The detail line of an error starts
 * with `path`. *out is written only on success. */
int st_student_config_load(const char *path, st_student_config *out);
/* Same for JSON text; `label` names it in error messages. */
int st_student_config_parse(const char *json_text, const char *label,
                            st_student_config *out);

/* The Algorithm 2 / Algorithm 1 parameters of a config. */
st_stride_params st_student_config_stride(const st_student_config *c);
st_distill_params st_student_config_distill(const st_student_config *c);

#endif
