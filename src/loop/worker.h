/* Compute workers: the threads that decode key frames, run the teacher and
 * distil each session's student, off the loop thread.
 *
 * A worker owns a stream pair (a teacher context and a student context of
 * the configured backend, ordered by an event), the teacher, planned
 * students (the configured partial set, and an all-layers one created on
 * first use for bootstrapping), a JPEG decoder and grow-only scratch. A
 * session owns an st_learner: its student state (weights and Adam moments),
 * the mirror of what its client holds, versions and stride. For one job the
 * session LENDS its learner to a worker, which loads the state into its
 * student, distils, saves it back and encodes the reply; a session has at
 * most one job in work, so nothing else touches the learner meanwhile.
 * That keeps the large activation plans per worker (bounded memory however
 * many clients connect) and a session down to a few MB of host memory.
 *
 * Hand-off: the loop thread submits jobs to one FIFO (mutex + condition
 * variable); workers push finished jobs to a completion queue and wake the
 * loop with uv_async_send; the loop's callback drains the whole queue
 * (sends coalesce) and calls the done callback once per job, on the loop
 * thread.
 *
 * The model description (st_model_info) is built once at start-up from the
 * configured student and base weights and is read-only afterwards, so
 * workers and the loop share it without locks.
 */
#ifndef ST_LOOP_WORKER_H
#define ST_LOOP_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "loop/metrics.h"
#include "loop/server_config.h"
#include "models/student.h"
#include "proto/proto.h"

/* Longest detail line a failed job carries back to the loop. */
#define ST_JOB_DETAIL_BYTES 256

/* The student as the server serves it: tensor names, shapes, which are
 * trained in steady state, the base weights and their hash, and the full
 * `model` message (version 0) encoded once for every blank client. */
typedef struct st_model_info {
  size_t count;                         /* tensors */
  char (*names)[ST_PROTO_TENSOR_NAME_BYTES + 1];
  int *ndim;
  int64_t (*shape)[ST_PROTO_MAX_NDIM];
  int *partial;                         /* 1: in the partial trainable set */
  size_t trainable_count;               /* tensors with partial == 1 */
  char (*trainable)[ST_PROTO_TENSOR_NAME_BYTES + 1]; /* their names */
  st_student_state *base;               /* base weights, no moments */
  char hash[ST_PROTO_HASH_HEX_BYTES + 1]; /* SHA-256 of the weights file;
                                             "" when none was given */
  uint8_t *model_msg;                   /* framed `model`, version 0 */
  size_t model_msg_len;
} st_model_info;

/* Builds the description on a throw-away CPU student (null_compute: an
 * empty one). */
int st_model_info_new(const st_server_config *cfg, st_model_info **out);
void st_model_info_free(st_model_info *mi); /* accepts NULL */

/* A session's learning state, lent to a worker for one job at a time. */
typedef struct st_learner {
  st_student_state *state;  /* weights and Adam state this session trains */
  st_student_state *mirror; /* exactly the client's weights (values only) */
  uint64_t version;         /* version of the mirror */
  /* Oldest version the client may report without a resync: every version
   * from here to `version` was sent on the current connection, in order,
   * so a client reporting one of them will apply the rest on arrival. */
  uint64_t floor_version;
  int32_t stride;           /* the stride last sent */
  uint64_t keyframes;       /* key frames distilled so far */
  /* The teacher's recurrent state along this client's video (RVM with
   * "recurrent": "session"); created by the first job, NULL before. Host
   * memory, so any worker continues it. */
  struct st_teacher_state *teacher_state;
  int bootstrapping;        /* 1 while every layer is trained */
} st_learner;

/* A fresh learner at the base weights, version 0, the minimum stride. */
int st_learner_new(const st_model_info *mi, const st_server_config *cfg,
                   st_learner **out);
void st_learner_free(st_learner *l); /* accepts NULL */

typedef enum st_job_kind { ST_JOB_KEYFRAME = 0, ST_JOB_OFFLOAD } st_job_kind;

typedef struct st_job {
  struct st_job *next;      /* queue link, owned by whichever queue holds it */
  st_job_kind kind;
  void *session;            /* the loop's session; opaque here */
  st_learner *learner;      /* lent by the session (NULL for offload) */
  uint8_t *body;            /* owned: the message body `frame` points into */
  st_msg_frame frame;       /* the key frame; data borrows body */
  uint64_t enqueued_ns;     /* uv_hrtime() at submission */
  /* results, written by the worker */
  int status;               /* ST_OK, or why the job failed */
  char detail[ST_JOB_DETAIL_BYTES];
  uint8_t *reply;           /* owned: framed update/labels to send */
  size_t reply_len;
  st_msg_timing timing;
  int resync;               /* 1: the reply is a full update */
  size_t tensors;           /* tensors the update carries */
  int32_t steps;
  double metric;
} st_job;

/* Frees the body, the reply and the job; accepts NULL. */
void st_job_free(st_job *job);

/* Called on the loop thread for every finished (or cancelled) job; the
 * callee takes ownership of the job. */
typedef void (*st_job_done_cb)(st_job *job, void *data);

typedef struct st_workers st_workers;

/* Starts cfg->workers threads on `loop`; each loads and warms up its
 * models. Returns at once; st_workers_ready tells when all are warm, and a
 * worker that fails to start is reported through st_workers_failed. */
int st_workers_start(uv_loop_t *loop, const st_server_config *cfg,
                     const st_model_info *mi, st_metrics *metrics,
                     st_job_done_cb done, void *data, st_workers **out);
/* Waits for every worker to finish loading: ST_OK when all are ready, else
 * the first failure (detail line included). Called before serving. */
int st_workers_wait_ready(st_workers *w);
int st_workers_ready(const st_workers *w);
/* 0 once a worker found its compute device lost (st_backend_check after a
 * failed job): the process can no longer compute and should be restarted;
 * every job fails at once with ST_ENODEV from then on. */
int st_workers_healthy(const st_workers *w);
/* Queues a job (loop thread). */
void st_workers_submit(st_workers *w, st_job *job);
/* Jobs queued or running. */
size_t st_workers_pending(const st_workers *w);
/* Takes every queued (not yet running) job back and hands each to the done
 * callback with status ST_ESHUTDOWN. */
void st_workers_cancel_queued(st_workers *w);
/* Stops and joins the threads (after the current jobs), closes the async
 * handle; the loop must run once more for the close to complete; `w` is
 * freed in its close callback. Jobs still held (queued: ST_ESHUTDOWN; finished) go to the done callback
 * before it returns. */
void st_workers_stop(st_workers *w);

#endif
