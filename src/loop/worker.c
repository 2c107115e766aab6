#include "loop/worker.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavutil/mem.h>
#include <libavutil/sha.h>

#include "base/error.h"
#include "base/file.h"
#include "models/distill.h"
#include "models/safetensors.h"
#include "models/stride.h"
#include "models/teacher.h"
#include "proto/codec.h"
#include "proto/jpeg.h"


/* Base weights files larger than this are refused (the student is 2 MB). */
#define ST_WEIGHTS_MAX_BYTES (256u * 1024u * 1024u)
#define SHA256_BYTES 32
#define NS_PER_MS 1e6

static double ms_since(uint64_t t0_ns) {
  return (double)(uv_hrtime() - t0_ns) / NS_PER_MS;
}

/* ---- model info ------------------------------------------------------------ */

static int sha256_file_hex(const char *path, char *hex) {
  uint8_t *buf = NULL;
  size_t len = 0;
  ST_TRY(st_read_file(path, ST_WEIGHTS_MAX_BYTES, ST_ERANGE, &buf, &len));
  struct AVSHA *sha = av_sha_alloc();
  if (!sha) {
    free(buf);
    return st_error_set(ST_ENOMEM, "sha256: out of memory");
  }
  uint8_t digest[SHA256_BYTES];
  av_sha_init(sha, 256);
  av_sha_update(sha, buf, len);
  av_sha_final(sha, digest);
  av_free(sha);
  free(buf);
  for (int i = 0; i < SHA256_BYTES; i++)
    snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return ST_OK;
}

void st_model_info_free(st_model_info *mi) {
  if (!mi)
    return;
  free(mi->names);
  free(mi->ndim);
  free(mi->shape);
  free(mi->partial);
  free(mi->trainable);
  st_student_state_free(mi->base);
  free(mi->model_msg);
  free(mi);
}

/* The wire view of every tensor of a state, f32 payloads borrowed from it. */
static void model_tensors(const st_model_info *mi, st_student_state *st,
                          st_wire_tensor *out) {
  for (size_t i = 0; i < mi->count; i++) {
    size_t numel = 0;
    const float *v = st_student_state_values(st, i, &numel);
    memset(&out[i], 0, sizeof out[i]);
    snprintf(out[i].name, sizeof out[i].name, "%s", mi->names[i]);
    out[i].ndim = mi->ndim[i];
    memcpy(out[i].shape, mi->shape[i], sizeof out[i].shape);
    out[i].dtype = ST_WIRE_F32;
    out[i].data = (const uint8_t *)v;
    out[i].bytes = numel * sizeof(float);
  }
}

static int model_info_fill(st_model_info *mi, const st_server_config *cfg,
                           st_student *s) {
  size_t n = st_student_tensor_count(s);
  mi->count = n;
  mi->names = calloc(n, sizeof *mi->names);
  mi->ndim = calloc(n, sizeof *mi->ndim);
  mi->shape = calloc(n, sizeof *mi->shape);
  mi->partial = calloc(n, sizeof *mi->partial);
  mi->trainable = calloc(n, sizeof *mi->trainable);
  if (!mi->names || !mi->ndim || !mi->shape || !mi->partial || !mi->trainable)
    return st_error_set(ST_ENOMEM, "server: out of memory");
  for (size_t i = 0; i < n; i++) {
    const st_tensor *t = st_student_tensor(s, i);
    snprintf(mi->names[i], sizeof mi->names[i], "%s",
             st_student_tensor_name(s, i));
    mi->ndim[i] = t->ndim;
    for (int d = 0; d < t->ndim && d < ST_PROTO_MAX_NDIM; d++)
      mi->shape[i][d] = t->shape[d];
  }
  /* The configured set decides which tensors steady-state updates carry. */
  for (size_t i = 0; i < n; i++) {
    const char *name = mi->names[i];
    int in = cfg->student.trainable_full;
    for (int k = 0; k < cfg->student.trainable_count && !in; k++) {
      size_t len = strlen(cfg->student.trainable[k]);
      in = strncmp(name, cfg->student.trainable[k], len) == 0 &&
           name[len] == '.';
    }
    mi->partial[i] = in;
    if (in)
      memcpy(mi->trainable[mi->trainable_count++], name, sizeof mi->names[i]);
  }
  if (cfg->student_weights_path[0]) {
    st_safetensors *file = NULL;
    ST_TRY(st_safetensors_open(cfg->student_weights_path, &file));
    int rc = st_student_load(s, file, cfg->student_weights_path);
    st_safetensors_free(file);
    ST_TRY(rc);
    ST_TRY(sha256_file_hex(cfg->student_weights_path, mi->hash));
  }
  ST_TRY(st_student_state_new(s, &mi->base));

  st_wire_tensor *tensors = calloc(n, sizeof *tensors);
  if (!tensors)
    return st_error_set(ST_ENOMEM, "server: out of memory");
  model_tensors(mi, mi->base, tensors);
  st_msg msg = {.type = ST_MSG_MODEL};
  msg.u.model.version = 0;
  msg.u.model.tensor_count = n;
  msg.u.model.tensors = tensors;
  int rc = st_msg_encode(&msg, &mi->model_msg, &mi->model_msg_len);
  free(tensors);
  return rc;
}

int st_model_info_new(const st_server_config *cfg, st_model_info **out) {
  *out = NULL;
  st_model_info *mi = calloc(1, sizeof *mi);
  if (!mi)
    return st_error_set(ST_ENOMEM, "server: out of memory");
  if (cfg->null_compute) {
    *out = mi;
    return ST_OK;
  }
  st_backend_options bo = {.kind = ST_BACKEND_CPU, .threads = 1};
  st_backend *be = NULL;
  st_student *s = NULL;
  int rc = st_backend_new(&bo, &be);
  if (!rc)
    rc = st_student_new_from_config(be, &cfg->student, &s);
  if (!rc)
    rc = model_info_fill(mi, cfg, s);
  st_student_free(s);
  st_backend_free(be);
  if (rc) {
    st_model_info_free(mi);
    return rc;
  }
  *out = mi;
  return ST_OK;
}

/* ---- learners -------------------------------------------------------------- */

int st_learner_new(const st_model_info *mi, const st_server_config *cfg,
                   st_learner **out) {
  *out = NULL;
  st_learner *l = calloc(1, sizeof *l);
  if (!l)
    return st_error_set(ST_ENOMEM, "server: out of memory");
  l->stride = cfg->student.min_stride;
  l->bootstrapping = cfg->bootstrap_full_keyframes > 0;
  if (mi->base) {
    int rc = st_student_state_clone(mi->base, &l->state);
    if (!rc)
      rc = st_student_state_clone(mi->base, &l->mirror);
    if (rc) {
      st_learner_free(l);
      return rc;
    }
  }
  *out = l;
  return ST_OK;
}

void st_learner_free(st_learner *l) {
  if (!l)
    return;
  st_student_state_free(l->state);
  st_student_state_free(l->mirror);
  st_teacher_state_free(l->teacher_state);
  free(l);
}

void st_job_free(st_job *job) {
  if (!job)
    return;
  free(job->body);
  free(job->reply);
  free(job);
}

/* ---- the pool -------------------------------------------------------------- */

typedef struct worker {
  struct st_workers *pool;
  int index;
  pthread_t thread;
  int started;
  /* Compute state, touched only by this worker's thread. */
  st_backend *teacher_be;        /* the teacher stream */
  st_backend *student_be;        /* the student stream */
  st_event *labelled;            /* teacher work done -> student may start */
  st_teacher *teacher;
  st_student *partial;           /* the configured trainable set */
  st_student *full;              /* every layer; created on first use */
  st_jpeg *jpeg;
  uint8_t *rgb;                  /* decoded frame, grow-only */
  size_t rgb_cap;
  uint8_t *label;                /* teacher label map, grow-only */
  float *weight;                 /* loss weights, grow-only */
  size_t map_cap;                /* pixels of label / weight */
  uint8_t *payload;              /* update payloads, grow-only */
  size_t payload_cap;
  float *before;                 /* the student's values before this key
                                    frame's distillation, grow-only */
  size_t before_cap;
  st_wire_tensor *wire;          /* one per model tensor */
} worker;

struct st_workers {
  uv_loop_t *loop;
  const st_server_config *cfg;   /* borrowed, outlives the pool */
  const st_model_info *mi;       /* borrowed */
  st_metrics *metrics;           /* borrowed */
  st_job_done_cb done;
  void *done_data;
  uv_async_t async;              /* wakes the loop for finished jobs */
  pthread_mutex_t mu;
  pthread_cond_t work_cv;        /* jobs queued, or stopping */
  pthread_cond_t ready_cv;       /* a worker finished loading */
  st_job *queue_head, *queue_tail; /* submitted, not started */
  size_t queued;
  size_t running;
  st_job *done_head, *done_tail; /* finished, not yet handed to the loop */
  int stopping;
  int loaded;                    /* workers that finished loading */
  int load_failed;               /* first load failure code */
  char load_detail[ST_JOB_DETAIL_BYTES];
  int device_lost;               /* 1 once a worker's context is lost */
  char lost_detail[ST_JOB_DETAIL_BYTES];
  int count;
  worker *workers;
};

static int grow(void **buf, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap)
    return ST_OK;
  void *p = realloc(*buf, need * elem);
  if (!p)
    return st_error_set(ST_ENOMEM, "worker: out of memory (%zu bytes)",
                        need * elem);
  *buf = p;
  *cap = need;
  return ST_OK;
}

static int worker_open(worker *w) {
  const st_server_config *cfg = w->pool->cfg;
  if (cfg->null_compute)
    return ST_OK;
  st_backend_options bo = {.kind = cfg->backend,
                           .threads = cfg->threads_per_worker,
                           .device = cfg->device,
                           .deterministic = cfg->deterministic,
                           .conv_exhaustive = cfg->conv_exhaustive,
                           .graphs_off = !cfg->cuda_graphs};
  ST_TRY(st_backend_new(&bo, &w->teacher_be));
  /* AUTO resolved to one kind for the teacher; the pair must agree. */
  bo.kind = st_backend_get_kind(w->teacher_be);
  ST_TRY(st_backend_new(&bo, &w->student_be));
  ST_TRY(st_event_new(w->teacher_be, &w->labelled));
  ST_TRY(st_teacher_open(w->teacher_be, cfg->teacher_path, &w->teacher));
  ST_TRY(st_student_new_from_config(w->student_be, &cfg->student, &w->partial));
  ST_TRY(st_jpeg_new(&w->jpeg));
  w->wire = calloc(w->pool->mi->count ? w->pool->mi->count : 1,
                   sizeof *w->wire);
  if (!w->wire)
    return st_error_set(ST_ENOMEM, "worker: out of memory");
  /* Warm-up: one teacher pass and one training step on a blank frame of
   * the teacher's input size, so the first client does not pay for plans,
   * primitive caches and allocator growth, and /readyz means it. */
  const st_teacher_config *tc = st_teacher_get_config(w->teacher);
  int64_t h = tc->height, wd = tc->width;
  size_t px = (size_t)(h * wd);
  ST_TRY(grow((void **)&w->rgb, &w->rgb_cap, px * 3, 1));
  ST_TRY(grow((void **)&w->label, &w->map_cap, px, 1));
  size_t wcap = 0;
  ST_TRY(grow((void **)&w->weight, &wcap, px, sizeof(float)));
  memset(w->rgb, 0, px * 3);
  const int64_t ishape[3] = {h, wd, 3}, mshape[2] = {h, wd};
  st_tensor image = st_tensor_view(w->rgb, ST_U8, 3, ishape);
  ST_TRY(st_teacher_label(w->teacher, &image, NULL, w->label, w->weight));
  st_tensor lab = st_tensor_view(w->label, ST_U8, 2, mshape);
  st_tensor wt = st_tensor_view(w->weight, ST_F32, 2, mshape);
  ST_TRY(st_student_state_load(w->partial, w->pool->mi->base));
  ST_TRY(st_student_set_example(w->partial, &image, &lab, &wt));
  float loss;
  ST_TRY(st_student_train_step(w->partial, &loss, NULL));
  return st_backend_sync(w->student_be);
}

static void worker_close(worker *w) {
  st_student_free(w->full);
  st_student_free(w->partial);
  st_teacher_free(w->teacher);
  st_event_free(w->labelled);
  st_backend_free(w->student_be);
  st_backend_free(w->teacher_be);
  st_jpeg_free(w->jpeg);
  free(w->rgb);
  free(w->label);
  free(w->weight);
  free(w->payload);
  free(w->before);
  free(w->wire);
}

/* The frame as a host RGB tensor: raw frames are used in place, JPEG ones
 * decoded into the worker's buffer. */
static int frame_image(worker *w, const st_msg_frame *f, st_tensor *image) {
  size_t px = (size_t)f->width * f->height;
  const int64_t shape[3] = {f->height, f->width, 3};
  if (f->encoding == ST_FRAME_RAW) {
    if (f->data_len != px * 3)
      return st_error_set(ST_EBADMSG, "keyframe: raw data is %zu bytes, "
                          "expected %zu", f->data_len, px * 3);
    *image = st_tensor_view((void *)f->data, ST_U8, 3, shape);
    return ST_OK;
  }
  ST_TRY(grow((void **)&w->rgb, &w->rgb_cap, px * 3, 1));
  ST_TRY(st_jpeg_decode(w->jpeg, f->data, f->data_len, (int)f->width,
                     (int)f->height, w->rgb));
  *image = st_tensor_view(w->rgb, ST_U8, 3, shape);
  return ST_OK;
}

static int label_frame(worker *w, st_learner *l, const st_tensor *image) {
  size_t px = (size_t)(image->shape[0] * image->shape[1]);
  if (px > w->map_cap) {
    size_t cap = w->map_cap, wcap = w->map_cap;
    ST_TRY(grow((void **)&w->label, &cap, px, 1));
    ST_TRY(grow((void **)&w->weight, &wcap, px, sizeof(float)));
    w->map_cap = px;
  }
  /* A recurrent teacher continues this client's stream: key frames of one
   * session are labelled in order, one at a time (one job per session). */
  if (l && !l->teacher_state && st_teacher_is_recurrent(w->teacher))
    ST_TRY(st_teacher_state_new(w->teacher, &l->teacher_state));
  ST_TRY(st_teacher_label_session(w->teacher, l ? l->teacher_state : NULL, image,
                               NULL, w->label, w->weight));
  /* The student stream may only read the targets once the teacher stream
   * produced them; st_teacher_label synchronises today, the event keeps
   * the ordering explicit for asynchronous teachers. */
  ST_TRY(st_event_record(w->teacher_be, w->labelled));
  return st_backend_wait_event(w->student_be, w->labelled);
}

static int full_student(worker *w, st_student **out) {
  if (!w->full) {
    ST_TRY(st_student_new_from_config(w->student_be, &w->pool->cfg->student,
                                   &w->full));
    ST_TRY(st_student_set_trainable(w->full, NULL, 0, 1));
  }
  *out = w->full;
  return ST_OK;
}

/* Which encoding a full update uses: f32 when the session's codec is f32,
 * else f16 (a delta means nothing against weights the server does not
 * know). */
static st_update_encoding full_encoding(st_update_encoding enc) {
  return enc == ST_UPDATE_F32 ? ST_UPDATE_F32 : ST_UPDATE_F16;
}

/* Keeps every tensor's values before distillation (w->before), so that
 * the update can tell which ones this key frame changed. */
static int snapshot_values(worker *w, const st_learner *l) {
  const st_model_info *mi = w->pool->mi;
  size_t total = 0, numel;
  for (size_t i = 0; i < mi->count; i++) {
    st_student_state_values(l->state, i, &numel);
    total += numel;
  }
  ST_TRY(grow((void **)&w->before, &w->before_cap, total ? total : 1,
              sizeof(float)));
  size_t off = 0;
  for (size_t i = 0; i < mi->count; i++) {
    const float *v = st_student_state_values(l->state, i, &numel);
    memcpy(w->before + off, v, numel * sizeof(float));
    off += numel;
  }
  return ST_OK;
}

/* Encodes the update of one key frame against the session's mirror and
 * advances the mirror by exactly what the client will apply.
 *
 * Only the tensors this key frame's distillation changed are sent (all of
 * them on a resync). A tensor the student did not touch is left out even
 * when a lossy codec left the client's copy a rounding residual away from
 * ours: the mirror keeps that residual, and the next delta of the tensor
 * carries it. So a key frame the student already agreed on (Algorithm 1
 * took no step) costs an empty update, not the whole trainable part. */
static int encode_update(worker *w, st_job *job, int32_t stride,
                         double metric, int32_t steps) {
  const st_model_info *mi = w->pool->mi;
  const st_server_config *cfg = w->pool->cfg;
  st_learner *l = job->learner;
  uint64_t t0 = uv_hrtime();
  uint64_t client = job->frame.version;
  /* A client inside [floor, version] will have applied every update up to
   * `version` by the time this one arrives (TCP keeps them in order). */
  int resync = client > l->version || client < l->floor_version;
  st_update_encoding enc =
      resync ? full_encoding(cfg->update_encoding) : cfg->update_encoding;
  size_t count = 0, total = 0;
  int send[ST_PROTO_MAX_TENSORS];
  size_t before = 0;
  for (size_t i = 0; i < mi->count && i < ST_PROTO_MAX_TENSORS; i++) {
    size_t numel;
    const float *v = st_student_state_values(l->state, i, &numel);
    const float *m = st_student_state_values(l->mirror, i, NULL);
    send[i] = resync ||
              (memcmp(v, w->before + before, numel * sizeof(float)) != 0 &&
               memcmp(v, m, numel * sizeof(float)) != 0);
    before += numel;
    if (send[i])
      total += st_codec_bytes(enc, numel);
  }
  ST_TRY(grow((void **)&w->payload, &w->payload_cap, total ? total : 1, 1));
  size_t off = 0;
  for (size_t i = 0; i < mi->count && i < ST_PROTO_MAX_TENSORS; i++) {
    if (!send[i])
      continue;
    size_t numel;
    const float *v = st_student_state_values(l->state, i, &numel);
    float *m = st_student_state_values(l->mirror, i, NULL);
    st_wire_tensor *t = &w->wire[count++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", mi->names[i]);
    t->ndim = mi->ndim[i];
    memcpy(t->shape, mi->shape[i], sizeof t->shape);
    t->dtype = st_codec_dtype(enc);
    t->bytes = st_codec_bytes(enc, numel);
    t->data = w->payload + off;
    ST_TRY(st_codec_encode(enc, numel, v, m, w->payload + off));
    off += t->bytes;
  }
  st_msg msg = {.type = ST_MSG_UPDATE};
  st_msg_update *u = &msg.u.update;
  u->seq = job->frame.seq;
  u->base_version = resync ? client : l->version;
  u->version = count ? l->version + 1 : l->version;
  u->full = resync;
  u->stride = stride;
  u->metric = metric;
  u->steps = steps;
  u->encoding = enc;
  u->tensor_count = count;
  u->tensors = w->wire;
  /* The payloads are the encoding work; packing is a copy. */
  job->timing.encode_ms = ms_since(t0);
  u->timing = job->timing;
  if (resync)
    l->floor_version = u->version;
  l->version = u->version;
  job->resync = resync;
  job->tensors = count;
  return st_msg_encode(&msg, &job->reply, &job->reply_len);
}

static int run_keyframe(worker *w, st_job *job) {
  const st_server_config *cfg = w->pool->cfg;
  st_learner *l = job->learner;
  st_stride_params sp = st_student_config_stride(&cfg->student);
  if (cfg->null_compute) {
    /* The loop alone: no pixels are touched, the stride stays. */
    job->metric = cfg->student.threshold;
    st_msg msg = {.type = ST_MSG_UPDATE};
    msg.u.update.seq = job->frame.seq;
    msg.u.update.version = msg.u.update.base_version = l->version;
    msg.u.update.stride = l->stride;
    msg.u.update.metric = job->metric;
    msg.u.update.encoding = cfg->update_encoding;
    msg.u.update.timing = job->timing;
    return st_msg_encode(&msg, &job->reply, &job->reply_len);
  }
  uint64_t t = uv_hrtime();
  st_tensor image;
  ST_TRY(frame_image(w, &job->frame, &image));
  job->timing.decode_ms = ms_since(t);

  t = uv_hrtime();
  ST_TRY(label_frame(w, job->learner, &image));
  job->timing.teacher_ms = ms_since(t);

  t = uv_hrtime();
  st_student *s = w->partial;
  if (l->bootstrapping && l->keyframes < (uint64_t)cfg->bootstrap_full_keyframes) {
    ST_TRY(full_student(w, &s));
  } else if (l->bootstrapping) {
    /* Bootstrap over: partial distillation from here on, with a fresh
     * optimiser for the new trainable set (as set_trainable does). */
    l->bootstrapping = 0;
    st_student_state_reset_optimizer(l->state);
    /* The layers that freeze now are trained on exactly what the client
     * holds: a lossy codec left the client's copy a rounding residual away
     * from ours, which no later update would send (frozen tensors never
     * change again), so adopt the client's values instead. */
    const st_model_info *mi = w->pool->mi;
    for (size_t i = 0; i < mi->count; i++) {
      if (mi->partial[i])
        continue;
      size_t numel;
      float *v = st_student_state_values(l->state, i, &numel);
      memcpy(v, st_student_state_values(l->mirror, i, NULL),
             numel * sizeof(float));
    }
  }
  const int64_t mshape[2] = {image.shape[0], image.shape[1]};
  st_tensor lab = st_tensor_view(w->label, ST_U8, 2, mshape);
  st_tensor wt = st_tensor_view(w->weight, ST_F32, 2, mshape);
  ST_TRY(snapshot_values(w, l));
  ST_TRY(st_student_state_load(s, l->state));
  ST_TRY(st_student_set_example(s, &image, &lab, &wt));
  st_distill_learner learner = st_student_learner(s);
  st_distill_params dp = st_student_config_distill(&cfg->student);
  st_distill_result res;
  ST_TRY(st_distill_run(&learner, &dp, &res));
  ST_TRY(st_student_state_save(s, l->state));
  ST_TRY(st_backend_sync(w->student_be));
  l->keyframes++;
  job->metric = res.metric;
  job->steps = res.steps;
  l->stride = st_next_stride(l->stride, res.metric, &sp);
  job->timing.distill_ms = ms_since(t);
  st_metrics_add(w->pool->metrics, ST_CTR_DISTILL_STEPS, (uint64_t)res.steps);

  return encode_update(w, job, l->stride, res.metric, res.steps);
}

static int run_offload(worker *w, st_job *job) {
  st_msg msg = {.type = ST_MSG_LABELS};
  st_msg_labels *lm = &msg.u.labels;
  lm->seq = job->frame.seq;
  lm->width = job->frame.width;
  lm->height = job->frame.height;
  size_t px = (size_t)job->frame.width * job->frame.height;
  if (w->pool->cfg->null_compute) {
    ST_TRY(grow((void **)&w->label, &w->map_cap, px, 1));
    memset(w->label, 0, px);
  } else {
    uint64_t t = uv_hrtime();
    st_tensor image;
    ST_TRY(frame_image(w, &job->frame, &image));
    job->timing.decode_ms = ms_since(t);
    t = uv_hrtime();
    ST_TRY(label_frame(w, job->learner, &image));
    job->timing.teacher_ms = ms_since(t);
  }
  lm->data = w->label;
  lm->data_len = px;
  uint64_t t = uv_hrtime();
  int rc = st_msg_encode(&msg, &job->reply, &job->reply_len);
  job->timing.encode_ms = ms_since(t);
  return rc;
}

/* After a failed job: when one of the worker's contexts can no longer run
 * anything (a CUDA kernel fault is sticky for the whole process), the pool
 * is marked lost, once, with one error line: from then on every job fails
 * at once with ST_ENODEV and /healthz and /readyz answer 503, so that a
 * supervisor restarts the server instead of clients being served errors. */
static void worker_check_device(worker *w) {
  st_workers *p = w->pool;
  st_backend *ctx[2] = {w->teacher_be, w->student_be};
  for (int i = 0; i < 2; i++) {
    if (!ctx[i] || st_backend_check(ctx[i]) == ST_OK)
      continue;
    pthread_mutex_lock(&p->mu);
    const int first = !p->device_lost;
    if (first) {
      p->device_lost = 1;
      snprintf(p->lost_detail, sizeof p->lost_detail, "worker %d: %s",
               w->index, st_error_detail());
    }
    pthread_mutex_unlock(&p->mu);
    if (first)
      st_log(ST_LOG_ERROR, "event=device_lost %s", p->lost_detail);
    return;
  }
}

/* The pool's loss, as a job's status: ST_ENODEV with the cause, or ST_OK
 * while the device is fine. */
static int device_lost(st_workers *p) {
  pthread_mutex_lock(&p->mu);
  int rc = p->device_lost ? st_error_set(ST_ENODEV, "%s", p->lost_detail)
                          : ST_OK;
  pthread_mutex_unlock(&p->mu);
  return rc;
}

static void worker_run_job(worker *w, st_job *job) {
  job->timing.queue_ms = ms_since(job->enqueued_ns);
  st_metrics_observe_ms(w->pool->metrics, ST_STAGE_QUEUE, job->timing.queue_ms);
  st_error_clear();
  int rc = device_lost(w->pool);
  const int refused = rc != ST_OK; /* the pool's loss, already known */
  if (!refused)
    rc = job->kind == ST_JOB_KEYFRAME ? run_keyframe(w, job)
                                      : run_offload(w, job);
  job->status = rc;
  if (rc) {
    snprintf(job->detail, sizeof job->detail, "%s", st_error_detail());
    if (!refused)
      worker_check_device(w);
    free(job->reply);
    job->reply = NULL;
    job->reply_len = 0;
    return;
  }
  st_metrics *m = w->pool->metrics;
  st_metrics_observe_ms(m, ST_STAGE_DECODE, job->timing.decode_ms);
  st_metrics_observe_ms(m, ST_STAGE_TEACHER, job->timing.teacher_ms);
  if (job->kind == ST_JOB_KEYFRAME)
    st_metrics_observe_ms(m, ST_STAGE_DISTILL, job->timing.distill_ms);
  st_metrics_observe_ms(m, ST_STAGE_ENCODE, job->timing.encode_ms);
}

static void *worker_main(void *arg) {
  worker *w = arg;
  st_workers *p = w->pool;
  st_error_clear();
  int rc = worker_open(w);
  pthread_mutex_lock(&p->mu);
  if (rc && !p->load_failed) {
    p->load_failed = rc;
    snprintf(p->load_detail, sizeof p->load_detail, "worker %d: %s", w->index,
             st_error_detail());
  }
  p->loaded++;
  pthread_cond_broadcast(&p->ready_cv);
  pthread_mutex_unlock(&p->mu);
  if (rc) {
    worker_close(w);
    return NULL;
  }
  for (;;) {
    pthread_mutex_lock(&p->mu);
    while (!p->queue_head && !p->stopping)
      pthread_cond_wait(&p->work_cv, &p->mu);
    if (p->stopping) {
      pthread_mutex_unlock(&p->mu);
      break;
    }
    st_job *job = p->queue_head;
    p->queue_head = job->next;
    if (!p->queue_head)
      p->queue_tail = NULL;
    job->next = NULL;
    p->queued--;
    p->running++;
    st_metrics_gauge_set(p->metrics, ST_GAUGE_QUEUE_DEPTH, (int64_t)p->queued);
    st_metrics_gauge_set(p->metrics, ST_GAUGE_JOBS_RUNNING, (int64_t)p->running);
    pthread_mutex_unlock(&p->mu);

    worker_run_job(w, job);

    pthread_mutex_lock(&p->mu);
    p->running--;
    st_metrics_gauge_set(p->metrics, ST_GAUGE_JOBS_RUNNING, (int64_t)p->running);
    if (p->done_tail)
      p->done_tail->next = job;
    else
      p->done_head = job;
    p->done_tail = job;
    pthread_mutex_unlock(&p->mu);
    uv_async_send(&p->async);
  }
  worker_close(w);
  return NULL;
}

/* Loop thread: hands every finished job to the done callback. */
static void workers_async_cb(uv_async_t *h) {
  st_workers *p = h->data;
  pthread_mutex_lock(&p->mu);
  st_job *job = p->done_head;
  p->done_head = p->done_tail = NULL;
  pthread_mutex_unlock(&p->mu);
  while (job) {
    st_job *next = job->next;
    job->next = NULL;
    p->done(job, p->done_data);
    job = next;
  }
}

int st_workers_start(uv_loop_t *loop, const st_server_config *cfg,
                     const st_model_info *mi, st_metrics *metrics,
                     st_job_done_cb done, void *data, st_workers **out) {
  *out = NULL;
  st_workers *p = calloc(1, sizeof *p);
  if (!p)
    return st_error_set(ST_ENOMEM, "workers: out of memory");
  p->loop = loop;
  p->cfg = cfg;
  p->mi = mi;
  p->metrics = metrics;
  p->done = done;
  p->done_data = data;
  p->count = cfg->workers;
  p->workers = calloc((size_t)p->count, sizeof *p->workers);
  if (!p->workers) {
    free(p);
    return st_error_set(ST_ENOMEM, "workers: out of memory");
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->work_cv, NULL);
  pthread_cond_init(&p->ready_cv, NULL);
  int rc = uv_async_init(loop, &p->async, workers_async_cb);
  if (rc) {
    free(p->workers);
    free(p);
    return st_error_set(ST_EIO, "workers: uv_async_init: %s", uv_strerror(rc));
  }
  p->async.data = p;
  for (int i = 0; i < p->count; i++) {
    worker *w = &p->workers[i];
    w->pool = p;
    w->index = i;
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
      /* Count the missing workers as loaded-and-failed so waiters wake. */
      pthread_mutex_lock(&p->mu);
      if (!p->load_failed) {
        p->load_failed = ST_ENOMEM;
        snprintf(p->load_detail, sizeof p->load_detail,
                 "worker %d: pthread_create failed", i);
      }
      p->loaded += p->count - i;
      pthread_mutex_unlock(&p->mu);
      break;
    }
    w->started = 1;
  }
  *out = p;
  return ST_OK;
}

int st_workers_wait_ready(st_workers *p) {
  pthread_mutex_lock(&p->mu);
  while (p->loaded < p->count)
    pthread_cond_wait(&p->ready_cv, &p->mu);
  int rc = p->load_failed;
  pthread_mutex_unlock(&p->mu);
  if (rc)
    return st_error_set(rc, "%s", p->load_detail);
  return ST_OK;
}

int st_workers_ready(const st_workers *p) {
  st_workers *mp = (st_workers *)p;
  pthread_mutex_lock(&mp->mu);
  int ready = p->loaded == p->count && !p->load_failed && !p->device_lost;
  pthread_mutex_unlock(&mp->mu);
  return ready;
}

int st_workers_healthy(const st_workers *p) {
  st_workers *mp = (st_workers *)p;
  pthread_mutex_lock(&mp->mu);
  int healthy = !p->device_lost;
  pthread_mutex_unlock(&mp->mu);
  return healthy;
}

void st_workers_submit(st_workers *p, st_job *job) {
  job->next = NULL;
  job->enqueued_ns = uv_hrtime();
  pthread_mutex_lock(&p->mu);
  if (p->queue_tail)
    p->queue_tail->next = job;
  else
    p->queue_head = job;
  p->queue_tail = job;
  p->queued++;
  st_metrics_gauge_set(p->metrics, ST_GAUGE_QUEUE_DEPTH, (int64_t)p->queued);
  pthread_cond_signal(&p->work_cv);
  pthread_mutex_unlock(&p->mu);
}

size_t st_workers_pending(const st_workers *p) {
  st_workers *mp = (st_workers *)p;
  pthread_mutex_lock(&mp->mu);
  size_t n = p->queued + p->running;
  /* Finished jobs not yet delivered still belong to their sessions. */
  for (st_job *j = p->done_head; j; j = j->next)
    n++;
  pthread_mutex_unlock(&mp->mu);
  return n;
}

void st_workers_cancel_queued(st_workers *p) {
  pthread_mutex_lock(&p->mu);
  st_job *job = p->queue_head;
  p->queue_head = p->queue_tail = NULL;
  p->queued = 0;
  st_metrics_gauge_set(p->metrics, ST_GAUGE_QUEUE_DEPTH, 0);
  pthread_mutex_unlock(&p->mu);
  while (job) {
    st_job *next = job->next;
    job->next = NULL;
    job->status = ST_ESHUTDOWN;
    snprintf(job->detail, sizeof job->detail, "server is shutting down");
    p->done(job, p->done_data);
    job = next;
  }
}

static void workers_closed_cb(uv_handle_t *h) {
  st_workers *p = h->data;
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->work_cv);
  pthread_cond_destroy(&p->ready_cv);
  free(p->workers);
  free(p);
}

void st_workers_stop(st_workers *p) {
  if (!p)
    return;
  pthread_mutex_lock(&p->mu);
  p->stopping = 1;
  pthread_cond_broadcast(&p->work_cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->count; i++)
    if (p->workers[i].started)
      pthread_join(p->workers[i].thread, NULL);
  /* Every job still held goes back to its session (results included), so
   * no session waits forever for a learner it lent. */
  st_workers_cancel_queued(p);
  workers_async_cb(&p->async);
  uv_close((uv_handle_t *)&p->async, workers_closed_cb);
}
