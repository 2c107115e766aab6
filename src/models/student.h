/* The ShadowTutor student: a 0.48 M-parameter encoder-decoder segmentation
 * network (../shared/reference/shadowtutor_ref.py, class Student), its
 * inference, and the training step of partial distillation.
 *
 * Ownership: a student owns its parameters, their gradients and Adam
 * moments (trainable ones only), and a plan of activation buffers for the
 * last frame size it saw, all on the backend it was created with (borrowed;
 * it must outlive the student). Parameter names are the reference module's
 * state-dict names ("enc1.long_path.0.weight", ...), so weights trained in
 * PyTorch and saved as safetensors load unchanged.
 *
 * Buffers are planned per frame size: the first call at a size allocates,
 * later calls at that size allocate nothing. Inference shares one scratch
 * set across blocks; training keeps only what the backward pass of the
 * trainable part reads. Where the context records op sequences (CUDA
 * graphs; off with st_backend_options.graphs_off), the forward, the mIoU
 * counts and the step's loss and backward pass each run as one recorded
 * launch from their second run in a plan on (the first runs directly;
 * the second records, then launches the recording).
 */
#ifndef ST_MODELS_STUDENT_H
#define ST_MODELS_STUDENT_H

#include <stddef.h>
#include <stdint.h>

#include "gpu/backend.h"
#include "models/config.h"
#include "models/safetensors.h"

/* Modules in forward order; a trainable set is a subset of these. */
#define ST_STUDENT_MODULES(XX)                                                 \
  XX(in_conv1) XX(in_conv2) XX(enc1) XX(enc2) XX(enc3) XX(dec1) XX(dec2)       \
      XX(dec3) XX(out_conv1) XX(out_conv2) XX(out_conv3)

typedef enum st_student_module {
#define ST__MOD_ENUM(name) ST_MOD_##name,
  ST_STUDENT_MODULES(ST__MOD_ENUM)
#undef ST__MOD_ENUM
      ST_MOD_COUNT
} st_student_module;

/* BatchNorm epsilon of the reference (PyTorch's default). */
#define ST_STUDENT_BN_EPS 1e-5

typedef struct st_student st_student;

typedef struct st_student_options {
  int num_classes;      /* output classes, 2..256 */
  int channel_order[3]; /* input channel c takes RGB channel order[c] */
  float mean[3];        /* per network-input channel */
  float std_[3];        /* per network-input channel, non-zero */
  uint64_t seed;        /* Kaiming-normal initialisation seed */
  st_adam_params adam;  /* optimiser of the trainable tensors */
} st_student_options;

/* Paper defaults: 9 classes, BGR, Detectron2 means, std 1, Adam lr 0.01. */
void st_student_options_default(st_student_options *o);

/* Creates a student with seeded Kaiming-normal weights (conv weights
 * N(0, 2/fan_out), biases 0, BN scale 1 and shift 0) and the default
 * trainable set (dec2 dec3 out_conv1 out_conv2 out_conv3). */
int st_student_new(st_backend *be, const st_student_options *o,
                   st_student **out);
void st_student_free(st_student *s);
/* A student as a config file describes it: classes, input normalisation,
 * initialisation seed, learning rate and trainable set. */
int st_student_new_from_config(st_backend *be, const st_student_config *c,
                               st_student **out);

/* Number of parameter tensors, and each one's name and tensor (in the
 * backend's memory). */
size_t st_student_tensor_count(const st_student *s);
const char *st_student_tensor_name(const st_student *s, size_t i);
/* The caller may write the tensor (an update arriving), so the student
 * forgets every activation it keeps for reuse. */
st_tensor *st_student_tensor(st_student *s, size_t i);
/* Index of a named tensor, or -1. */
long st_student_tensor_index(const st_student *s, const char *name);
/* Total number of parameters, and of trainable ones. */
int64_t st_student_param_count(const st_student *s, int trainable_only);
int st_student_num_classes(const st_student *s);

/* Loads every tensor from a safetensors file; each must be present with
 * the exact shape and dtype F32; unknown extra tensors are an error too. */
int st_student_load(st_student *s, const st_safetensors *file,
                    const char *label);
/* Writes every tensor (host copies) to a safetensors file. */
int st_student_save(st_student *s, const char *path);

/* Chooses the trainable modules: `full` trains all; otherwise exactly the
 * listed modules. Resets the Adam state. */
int st_student_set_trainable(st_student *s, const st_student_module *mods,
                             int count, int full);
/* Parses a module name ("dec2"). */
int st_student_module_from_name(const char *name, st_student_module *out);
const char *st_student_module_name(st_student_module m);
int st_student_is_trainable(const st_student *s, st_student_module m);

/* Inference on one RGB frame (U8 [H,W,3] host memory). On success *logits
 * points to the student's own [1,C,H,W] output buffer in backend memory,
 * valid until the next call. The first call at a frame size plans that
 * buffer (C x H x W floats); st_student_predict does not need it. */
int st_student_forward(st_student *s, const st_tensor *image,
                       const st_tensor **logits);
/* Inference then the class map (the argmax of st_student_forward's
 * logits, made from the low-resolution logits without the frame-sized
 * ones): labels is a host U8 [H,W]. */
int st_student_predict(st_student *s, const st_tensor *image,
                       st_tensor *labels);

/* The key frame a distillation works on: image, the teacher's label map
 * U8 [H,W] and the loss-weight map F32 [H,W], all host memory. Uploaded
 * once; the following score/step calls use it. */
int st_student_set_example(st_student *s, const st_tensor *image,
                           const st_tensor *label, const st_tensor *weight);
/* Forward on the example and mIoU of its argmax against the label. The
 * activations are kept, so a following st_student_train_step reuses this
 * forward instead of running another. The frozen modules' outputs are kept
 * too: until the next example or weight load, forwards run only the
 * trainable part (the same result as a full pass, which the reference
 * recomputes every time). */
int st_student_score(st_student *s, double *miou);
/* One Adam step on the trainable tensors: forward (reused when the weights
 * have not changed since the last score), weighted cross-entropy, backward
 * through the trainable part only, update. *loss is the loss of the forward
 * the gradient came from; *miou (may be NULL) that forward's mIoU. */
int st_student_train_step(st_student *s, float *loss, double *miou);
/* Snapshot and restore of the trainable tensors (Adam state untouched, as
 * the reference's state_dict copy). */
int st_student_save_best(st_student *s);
int st_student_restore_best(st_student *s);
/* Forgets Adam moments and the step count. */
void st_student_reset_optimizer(st_student *s);
/* on = 1: every forward recomputes the frozen modules as the reference
 * does (a baseline for benchmarks and tests); 0, the default: their
 * outputs are reused within one example. */
void st_student_recompute_frozen(st_student *s, int on);
/* Algorithm 1's view of the student (models/distill.h): score, step and
 * snapshots on the example last given to st_student_set_example. */
st_distill_learner st_student_learner(st_student *s);

/* ---- learner state -----------------------------------------------------------
 * Everything that makes one learner distinct, in host memory: the weights
 * of every tensor, the Adam moments of the tensors it has trained, and the
 * Adam step. A server keeps one state per client session and a few planned
 * students per worker: load the session's state into a student, distil,
 * save it back. So the large activation plan is shared, and a session costs
 * only its weights and moments (about 2 MB + 8 bytes per trained weight).
 * The state owns its buffers; the student is borrowed by each call. */
typedef struct st_student_state st_student_state;

/* A state holding the student's current weights, no moments, step 0. */
int st_student_state_new(st_student *s, st_student_state **out);
int st_student_state_clone(const st_student_state *src,
                           st_student_state **out);
/* Accepts NULL. */
void st_student_state_free(st_student_state *st);
/* Puts the state into the student: every weight, and the moments of its
 * trainable tensors (zeros for tensors the state never trained); clears the
 * student's best snapshot and cached forward. */
int st_student_state_load(st_student *s, const st_student_state *st);
/* Copies the student's trainable weights, their moments and the Adam step
 * back into the state (frozen weights are unchanged by training). */
int st_student_state_save(st_student *s, st_student_state *st);
/* Forgets every moment and the step (a change of the trainable set). */
void st_student_state_reset_optimizer(st_student_state *st);
size_t st_student_state_count(const st_student_state *st);
/* Host weights of tensor i (the student's tensor order), NULL past the end. */
float *st_student_state_values(st_student_state *st, size_t i, size_t *numel);
int64_t st_student_state_adam_step(const st_student_state *st);
/* Host bytes the state holds. */
size_t st_student_state_bytes(const st_student_state *st);

#endif
