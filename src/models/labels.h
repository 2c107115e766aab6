/* Teacher output to distillation targets: the label map and the loss
 * weights of one key frame.
 *
 * The teacher's logits come out at the network's own resolution and over
 * the teacher's classes (21 for torchvision's VOC models). Distillation
 * needs, at the frame's size and over the student's classes:
 *  - the label: the argmax over channels of the logits resized bilinearly
 *    (align_corners=False) to the frame, then the class map
 *    (st_labels_from_logits);
 *  - the loss weights: ShadowTutor's emphasis on objects, `factor` inside the
 *    box of every 8-connected non-background component grown by `dilate`
 *    of its extent, 1 elsewhere (st_loss_weights, loss_weights() of
 *    shadowtutor_ref.py to the bit).
 *
 * Both run once per key frame on the server, so neither allocates in the
 * steady state: the caller plans the backend's label buffer and keeps one
 * st_labels_scratch per session that grows to the largest frame it has
 * seen and is then reused.
 *
 * Where the work happens: the resized argmax is a backend op
 * (st_argmax_resized: the frame-sized logits never exist); the
 * class map (a 256-entry lookup) and the connected components run on the
 * host. The label is downloaded once for both, mapped there and uploaded
 * back, so after st_labels_from_logits the student label is in the backend
 * tensor (for the loss and the mIoU) and in host memory (for
 * st_loss_weights and anything that ships the label).
 *
 * Ownership: nothing here keeps a pointer to its arguments past the call,
 * except the scratch, which owns its buffers until st_labels_scratch_free.
 */
#ifndef ST_MODELS_LABELS_H
#define ST_MODELS_LABELS_H

#include <stdint.h>

#include "gpu/backend.h"

/* Labels are U8 and st_argmax_channels handles at most this many channels,
 * so both class counts are limited to it. */
#define ST_LABELS_MAX_CLASSES 256

/* Paper defaults (shadowtutor_ref.py loss_weights): weight 5 inside object
 * boxes grown by 15 % of their extent in total per axis (7.5 % a side). */
#define ST_LOSS_WEIGHT_DEFAULT_FACTOR 5.0f
#define ST_LOSS_WEIGHT_DEFAULT_DILATE 0.15

/* ---- class map ------------------------------------------------------------ */

/* Teacher class -> student class. Every teacher class maps somewhere: the
 * ones never set go to the background student class. */
typedef struct st_class_map {
  int teacher_classes; /* T, [1, ST_LABELS_MAX_CLASSES]; 0 = not initialised */
  int student_classes; /* S, [1, ST_LABELS_MAX_CLASSES] */
  int background;      /* student class of unmapped teacher classes, [0, S) */
  uint8_t to_student[ST_LABELS_MAX_CLASSES]; /* [t] = student class of
                                                teacher class t, t < T */
} st_class_map;

/* Maps every one of `teacher_classes` classes to `background`. Returns
 * ST_ERANGE (and leaves *m unusable: teacher_classes 0) when a count is
 * outside [1, ST_LABELS_MAX_CLASSES] or background outside
 * [0, student_classes). */
int st_class_map_init(st_class_map *m, int teacher_classes,
                      int student_classes, int background);
/* Teacher class t -> student class t over `classes` classes, with
 * `background` as the map's background: the bare-model case, where the
 * teacher already predicts the student's classes. Errors as
 * st_class_map_init. */
int st_class_map_identity(st_class_map *m, int classes, int background);
/* Maps teacher class `teacher` to student class `student` (a later call for
 * the same teacher class replaces the earlier one). ST_ERANGE when either is
 * out of range; ST_EINVAL on an uninitialised map. *m is unchanged on
 * failure. */
int st_class_map_set(st_class_map *m, int teacher, int student);
/* ST_OK when the map is initialised and consistent (every entry below
 * student_classes), else ST_EINVAL / ST_ERANGE with a detail line. */
int st_class_map_check(const st_class_map *m);

/* ---- label map ------------------------------------------------------------ */

/* The student label of one frame from the teacher's logits.
 *
 * teacher_logits  F32 [1,T,h,w] on be, T == m->teacher_classes, at any
 *                 size: the argmax is that of the logits resized to the
 *                 frame (st_argmax_resized; at the frame's size, of the
 *                 logits themselves).
 * label           U8 [1,H,W] on be: the frame size is taken from it. On
 *                 return it holds the student label.
 * host_label      H*W bytes of host memory, row-major: on return, the same
 *                 student label. On a host backend it may be label->data
 *                 itself, which saves two copies.
 *
 * Synchronises `be` (the label has to come back to the host); the upload of
 * the mapped label is queued on be's stream like any op. Ties in the argmax
 * go to the lowest teacher class (st_argmax_channels, as torch.argmax).
 * Shape and dtype errors are ST_ESHAPE / ST_EDTYPE, a bad map ST_EINVAL or
 * ST_ERANGE, each with a detail line; nothing is written on those. */
int st_labels_from_logits(st_backend *be, const st_tensor *teacher_logits,
                          const st_class_map *m, st_tensor *label,
                          uint8_t *host_label);

/* ---- loss weights ---------------------------------------------------------- */

/* Working memory of st_loss_weights, reusable across calls and frames: it
 * grows to the largest frame seen and is never shrunk, so a session that
 * keeps one allocates only on its first key frame (or a larger one). */
typedef struct st_labels_scratch {
  uint8_t *seen;       /* one mark per pixel: already in a component */
  int32_t *pending;    /* explicit stack of pixels still to expand */
  int64_t capacity;    /* pixels both arrays hold */
  int64_t components;  /* components found by the last st_loss_weights call */
} st_labels_scratch;

/* An empty scratch (no memory held). */
void st_labels_scratch_init(st_labels_scratch *s);
/* Makes room for an h x w frame; a no-op when there is room already.
 * ST_ERANGE when h*w exceeds what 32-bit pixel indices address, ST_ENOMEM
 * when the memory is not there (the old buffers are then kept). */
int st_labels_scratch_reserve(st_labels_scratch *s, int64_t h, int64_t w);
/* Releases the buffers and empties the scratch. Accepts NULL. */
void st_labels_scratch_free(st_labels_scratch *s);

/* out[h*w] = loss weights of the label map label[h*w] (row-major, host):
 * `factor` inside the box of every 8-connected component of pixels !=
 * background, grown on each side by (y1-y0)*dilate/2 rows and
 * (x1-x0)*dilate/2 columns (y0..y1, x0..x1 the component's extreme
 * pixels; the grown bounds truncated toward zero as Python's int(), then
 * clipped to the image), and 1 everywhere else. Defaults:
 * ST_LOSS_WEIGHT_DEFAULT_FACTOR, ST_LOSS_WEIGHT_DEFAULT_DILATE.
 * Reserves the scratch for the frame (see st_labels_scratch_reserve) and
 * records the component count in scratch->components. ST_EINVAL for NULL
 * pointers, an empty frame, background outside [0, 255], a negative or
 * non-finite dilate or a non-finite factor. */
int st_loss_weights(const uint8_t *label, int64_t h, int64_t w, int background,
                    float factor, double dilate, float *out,
                    st_labels_scratch *scratch);

#endif
