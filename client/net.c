/* syscall(SYS_gettid), for the encoding thread's own nice value. */
#define _DEFAULT_SOURCE
#include "net.h"

#include <float.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "base/error.h"
#include "base/log.h"
#include "proto/codec.h"
#include "proto/jpeg.h"

/* TCP keep-alive probe delay: a peer that vanished without a FIN is found
 * by the silence check sooner; this only keeps middleboxes from expiring
 * an idle session. */
#define TCP_KEEPALIVE_S 30
#define PORT_TEXT_BYTES 8
#define NS_PER_MS 1000000LL

/* Codes of a fatal `error` that no retry can cure: at start, the client
 * gives up at once instead of retrying until connect_timeout_ms. */
static const char *const permanent_codes[] = {
    "unauthorized", "unsupported_protocol", "out_of_range", "bad_message"};

typedef enum net_state {
  NET_WAITING = 0, /* between attempts (backoff), or before the first */
  NET_RESOLVING,   /* uv_getaddrinfo in flight */
  NET_CONNECTING,  /* uv_tcp_connect in flight */
  NET_HANDSHAKE,   /* hello + ping sent; waiting for welcome .. pong */
  NET_READY,       /* the session is up */
  NET_BYE,         /* bye sent while stopping; waiting for the server's */
  NET_DONE,        /* stopped, or the start failed: no more attempts */
} net_state;

/* A key frame on its way out; owned by whichever list or work holds it. */
typedef struct keyframe_req {
  struct keyframe_req *next;
  uint64_t seq, frame_index, version;
  uint64_t conn_id; /* the connection it was accepted on */
  uint8_t *rgb;     /* width*height*3 */
  uint8_t *jpeg;    /* after encoding (malloc'd by st_jpeg_encode) */
  size_t jpeg_len;
  int rc; /* of the encoding */
  char err[ST_NET_REASON_BYTES];
} keyframe_req;

/* One TCP connection; freed in its close callback. */
typedef struct conn {
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  struct st_net *net;
  uint64_t id;
  int closing;
  st_framer rx; /* the message being read */
  /* What the welcome said. */
  int welcomed, model_seen;
  char session[ST_PROTO_SESSION_BYTES + 1];
  uint64_t welcome_version;
  int32_t stride, min_stride, max_stride;
  double threshold;
  uint64_t ping_nonce;      /* the handshake's ping */
  uint64_t last_sent_seq;   /* highest key frame seq sent here */
  uint64_t last_update_seq; /* highest seq an update answered */
  uint8_t chunk[ST_NET_READ_CHUNK_BYTES];
} conn;

typedef struct write_req {
  uv_write_t req;
  struct st_net *net;
  uint64_t conn_id;
  uint8_t *buf; /* owned */
  size_t len;
} write_req;

typedef struct jpeg_work {
  uv_work_t req;
  struct st_net *net;
  keyframe_req *kf;
} jpeg_work;

struct st_net {
  st_net_options o;
  st_net_tensor_desc *descs; /* o.tensors points here */
  /* The weights the client will hold once every WEIGHTS event handed out
   * is applied, and their version (network thread only). */
  float **weights;
  int have_weights;
  uint64_t version;
  char session[ST_PROTO_SESSION_BYTES + 1]; /* the last session, to resume */
  int has_session;
  uint64_t sessions_up;
  /* Loop state (network thread only). */
  uv_loop_t loop;
  uv_async_t wake; /* a post, or stop */
  uv_timer_t tick; /* deadlines, backoff, pings */
  uv_getaddrinfo_t gai;
  int gai_busy;
  conn *c; /* the current connection, or NULL */
  net_state state;
  uint64_t conn_ids;
  uint64_t start_deadline_ms;   /* the first session must be up by then */
  uint64_t attempt_deadline_ms; /* this attempt's handshake must end */
  uint64_t retry_at_ms;
  uint64_t backoff_ms; /* the next delay before jitter */
  uint64_t last_rx_ms, next_ping_ms, bye_deadline_ms;
  int started, stopping, handles_closed;
  uint64_t rng;
  char last_reason[ST_NET_REASON_BYTES];
  int last_code;
  st_jpeg *jpeg;
  int jpeg_busy;
  keyframe_req *enc_head, *enc_tail; /* waiting for the encoder */
  /* Shared with the caller, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t ev_cv;
  keyframe_req *post_head, *post_tail;
  int stop;
  int64_t bye_timeout_ms;
  st_net_event *ev_head, *ev_tail;
  st_net_counters counters;
  pthread_t thread;
  int thread_started, loop_ready, sync_ready;
};

/* ---- small helpers ------------------------------------------------------- */

/* xorshift64* (Vigna): shifts and multiplier of the published generator.
 * Jitter only needs to differ between clients, not to be secret. */
#define XORSHIFT_A 12
#define XORSHIFT_B 25
#define XORSHIFT_C 27
#define XORSHIFT_MULTIPLIER 2685821657736338717ULL

static uint64_t next_rand(st_net *n) {
  n->rng ^= n->rng >> XORSHIFT_A;
  n->rng ^= n->rng << XORSHIFT_B;
  n->rng ^= n->rng >> XORSHIFT_C;
  return n->rng * XORSHIFT_MULTIPLIER;
}

/* Bounded copy that cuts long text (reasons are for people). */
static void set_text(char *dst, size_t size, const char *src) {
  size_t n = strnlen(src, size - 1);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

/* Adds to a counter of the st_net `n` in scope, under its lock. */
#define COUNT(field, delta)                                                    \
  do {                                                                         \
    pthread_mutex_lock(&n->mu);                                                \
    n->counters.field += (delta);                                              \
    pthread_mutex_unlock(&n->mu);                                              \
  } while (0)

static st_net_event *event_new(st_net_event_kind kind) {
  st_net_event *e = calloc(1, sizeof *e);
  if (e)
    e->kind = kind;
  return e;
}

void st_net_event_free(st_net_event *e) {
  if (!e)
    return;
  if (e->values)
    for (size_t i = 0; i < e->count; i++)
      free(e->values[i]);
  free(e->values);
  free(e->index);
  free(e);
}

static void emit(st_net *n, st_net_event *e) {
  pthread_mutex_lock(&n->mu);
  if (n->ev_tail)
    n->ev_tail->next = e;
  else
    n->ev_head = e;
  n->ev_tail = e;
  if (e->kind == ST_NET_ONLINE)
    n->counters.online = 1;
  else if (e->kind == ST_NET_OFFLINE || e->kind == ST_NET_FAILED)
    n->counters.online = 0;
  pthread_cond_signal(&n->ev_cv);
  pthread_mutex_unlock(&n->mu);
}

/* An event without tensors. Out of memory here loses one notification,
 * which costs at most a stride (the inference thread never blocks on it
 * for longer than its wait timeout). */
static void emit_note(st_net *n, st_net_event_kind kind, int code, uint64_t seq,
                      const char *reason) {
  st_net_event *e = event_new(kind);
  if (!e)
    return;
  e->code = code;
  e->seq = seq;
  set_text(e->reason, sizeof e->reason, reason ? reason : "");
  emit(n, e);
}

static void keyframe_req_free(keyframe_req *k) {
  if (!k)
    return;
  free(k->rgb);
  free(k->jpeg);
  free(k);
}

static void schedule_retry(st_net *n);
static void finish(st_net *n);

/* ---- connection teardown ------------------------------------------------- */

static void conn_close_cb(uv_handle_t *h) {
  conn *c = h->data;
  st_framer_reset(&c->rx);
  free(c);
}

/* The current attempt or session is over: closes its connection (if any),
 * tells the inference thread when a session was up, and schedules the
 * next attempt (or finishes when stopping). */
static void drop(st_net *n, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void drop(st_net *n, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(n->last_reason, sizeof n->last_reason, fmt, ap);
  va_end(ap);
  n->last_code = code;
  conn *c = n->c;
  n->c = NULL;
  if (c && !c->closing) {
    c->closing = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
  }
  net_state was = n->state;
  if (was == NET_READY) {
    st_log(ST_LOG_WARN, "event=disconnected session=%s reason=\"%s\"",
           n->session, n->last_reason);
    emit_note(n, ST_NET_OFFLINE, code, 0, n->last_reason);
  } else if (was != NET_BYE && was != NET_DONE) {
    st_log(ST_LOG_DEBUG, "event=attempt_failed reason=\"%s\"", n->last_reason);
  }
  if (n->stopping || was == NET_BYE || was == NET_DONE) {
    n->state = NET_DONE;
    finish(n);
    return;
  }
  schedule_retry(n);
}

/* A message that cannot be trusted: counted, and the connection goes. */
static void malformed(st_net *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void malformed(st_net *n, const char *fmt, ...) {
  char reason[ST_NET_REASON_BYTES];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  COUNT(malformed, 1);
  st_log(ST_LOG_WARN, "event=malformed reason=\"%s\"", reason);
  drop(n, ST_EBADMSG, "malformed message from the server: %s", reason);
}

static void fail_start(st_net *n) {
  char reason[ST_NET_HOST_BYTES + ST_NET_REASON_BYTES + 128];
  snprintf(reason, sizeof reason,
           "no session with the server at %s:%d within %lld ms: %s", n->o.host,
           n->o.port, (long long)n->o.connect_timeout_ms,
           n->last_reason[0] ? n->last_reason : "no answer");
  n->state = NET_DONE;
  emit_note(n, ST_NET_FAILED, n->last_code ? n->last_code : ST_ECONN, 0,
            reason);
}

static void schedule_retry(st_net *n) {
  uint64_t now = uv_now(&n->loop);
  if (!n->started && now >= n->start_deadline_ms) {
    fail_start(n);
    return;
  }
  /* Exponential backoff, each delay cut by a random share of up to
   * `jitter`, so clients dropped together do not return together. */
  /* The top 53 bits as a double in [0, 1). */
  double share = (double)(next_rand(n) >> (64 - DBL_MANT_DIG)) /
                 (double)(1ULL << DBL_MANT_DIG);
  uint64_t delay =
      (uint64_t)((double)n->backoff_ms * (1.0 - n->o.reconnect_jitter * share));
  n->backoff_ms *= 2;
  if (n->backoff_ms > (uint64_t)n->o.reconnect_max_ms)
    n->backoff_ms = (uint64_t)n->o.reconnect_max_ms;
  n->retry_at_ms = now + delay;
  n->state = NET_WAITING;
  st_log(ST_LOG_DEBUG, "event=reconnect_wait ms=%llu",
         (unsigned long long)delay);
}

/* ---- writing ------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status) {
  write_req *w = req->data;
  st_net *n = w->net;
  if (status == 0) {
    COUNT(bytes_up, w->len);
  } else if (status != UV_ECANCELED && n->c && n->c->id == w->conn_id) {
    drop(n, ST_ECONN, "write failed: %s", uv_strerror(status));
  }
  free(w->buf);
  free(w);
}

/* Queues a framed message on the current connection; takes ownership of
 * buf. */
static int write_buf(st_net *n, uint8_t *buf, size_t len) {
  conn *c = n->c;
  write_req *w = calloc(1, sizeof *w);
  if (!w || !c) {
    free(buf);
    free(w);
    return st_error_set(ST_ENOMEM, "out of memory");
  }
  w->req.data = w;
  w->net = n;
  w->conn_id = c->id;
  w->buf = buf;
  w->len = len;
  uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
  int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (r < 0) {
    free(buf);
    free(w);
    return st_error_set(ST_ECONN, "write failed: %s", uv_strerror(r));
  }
  return ST_OK;
}

static int send_msg(st_net *n, const st_msg *m) {
  uint8_t *buf = NULL;
  size_t len = 0;
  int rc = st_msg_encode(m, &buf, &len);
  if (rc)
    return rc;
  return write_buf(n, buf, len);
}

/* ---- key frames ---------------------------------------------------------- */

static void send_keyframe(st_net *n, keyframe_req *kf, st_frame_encoding enc,
                          const uint8_t *data, size_t len) {
  st_msg m = {.type = ST_MSG_KEYFRAME};
  st_msg_frame *f = &m.u.frame;
  f->seq = kf->seq;
  f->frame_index = kf->frame_index;
  f->encoding = enc;
  f->width = n->o.width;
  f->height = n->o.height;
  f->data = data;
  f->data_len = len;
  f->version = kf->version;
  int rc = send_msg(n, &m);
  if (rc) {
    st_log(ST_LOG_WARN, "event=keyframe_not_sent seq=%llu reason=\"%s\"",
           (unsigned long long)kf->seq, st_error_detail());
    emit_note(n, ST_NET_KEY_LOST, rc, kf->seq, st_error_detail());
    if (rc == ST_ECONN)
      drop(n, ST_ECONN, "%s", st_error_detail());
    return;
  }
  n->c->last_sent_seq = kf->seq;
  COUNT(keyframes_sent, 1);
  st_log(ST_LOG_DEBUG,
         "event=keyframe_sent seq=%llu frame=%llu version=%llu "
         "encoding=%s bytes=%zu",
         (unsigned long long)kf->seq, (unsigned long long)kf->frame_index,
         (unsigned long long)kf->version, st_frame_encoding_name(enc), len);
}

static int same_session(st_net *n, const keyframe_req *kf) {
  return n->state == NET_READY && n->c && n->c->id == kf->conn_id;
}

static void jpeg_work_cb(uv_work_t *req) {
  jpeg_work *jw = req->data;
  st_net *n = jw->net;
  keyframe_req *kf = jw->kf;
  st_error_clear();
  /* A pool thread: the nice value sticks, which only matters for our own
   * work (key frames, name resolution). */
  if (n->o.encoder_nice)
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid),
                      n->o.encoder_nice);
  kf->rc = st_jpeg_encode(n->jpeg, kf->rgb, (int)n->o.width, (int)n->o.height,
                          n->o.jpeg_quality, &kf->jpeg, &kf->jpeg_len);
  if (kf->rc)
    snprintf(kf->err, sizeof kf->err, "%s", st_error_detail());
}

static void pump_encoder(st_net *n);

static void jpeg_after_cb(uv_work_t *req, int status) {
  jpeg_work *jw = req->data;
  st_net *n = jw->net;
  keyframe_req *kf = jw->kf;
  free(jw);
  n->jpeg_busy = 0;
  if (status != 0 || kf->rc) {
    st_log(ST_LOG_WARN, "event=keyframe_not_sent seq=%llu reason=\"%s\"",
           (unsigned long long)kf->seq,
           kf->rc ? kf->err : "encoding cancelled");
    emit_note(n, ST_NET_KEY_LOST, kf->rc ? kf->rc : ST_EIO, kf->seq,
              kf->rc ? kf->err : "encoding cancelled");
  } else if (!same_session(n, kf)) {
    emit_note(n, ST_NET_KEY_LOST, ST_ECONN, kf->seq, "the session ended");
  } else {
    send_keyframe(n, kf, ST_FRAME_JPEG, kf->jpeg, kf->jpeg_len);
  }
  keyframe_req_free(kf);
  pump_encoder(n);
}

/* Starts the next JPEG encoding on libuv's thread pool (one at a time:
 * the encoder is not thread-safe). */
static void pump_encoder(st_net *n) {
  while (!n->jpeg_busy && n->enc_head) {
    keyframe_req *kf = n->enc_head;
    n->enc_head = kf->next;
    if (!n->enc_head)
      n->enc_tail = NULL;
    kf->next = NULL;
    jpeg_work *jw = calloc(1, sizeof *jw);
    int r = jw ? 0 : UV_ENOMEM;
    if (jw) {
      jw->req.data = jw;
      jw->net = n;
      jw->kf = kf;
      r = uv_queue_work(&n->loop, &jw->req, jpeg_work_cb, jpeg_after_cb);
    }
    if (r < 0) {
      free(jw);
      emit_note(n, ST_NET_KEY_LOST, ST_ENOMEM, kf->seq, "cannot encode");
      keyframe_req_free(kf);
      continue;
    }
    n->jpeg_busy = 1;
  }
}

static void handle_keyframe(st_net *n, keyframe_req *kf) {
  if (n->state != NET_READY || !n->c) {
    emit_note(n, ST_NET_KEY_LOST, ST_ECONN, kf->seq, "no session");
    keyframe_req_free(kf);
    return;
  }
  kf->conn_id = n->c->id;
  if (n->o.keyframe_encoding == ST_FRAME_RAW) {
    send_keyframe(n, kf, ST_FRAME_RAW, kf->rgb,
                  (size_t)n->o.width * n->o.height * 3);
    keyframe_req_free(kf);
    return;
  }
  if (n->enc_tail)
    n->enc_tail->next = kf;
  else
    n->enc_head = kf;
  n->enc_tail = kf;
  pump_encoder(n);
}

/* ---- tensors from the server --------------------------------------------- */

static long find_tensor(const st_net *n, const char *name) {
  for (size_t i = 0; i < n->o.tensor_count; i++)
    if (strcmp(n->descs[i].name, name) == 0)
      return (long)i;
  return -1;
}

static void shape_text(int ndim, const int64_t *shape, char *buf, size_t len) {
  size_t off = (size_t)snprintf(buf, len, "[");
  for (int d = 0; d < ndim && off < len; d++)
    off += (size_t)snprintf(buf + off, len - off, "%s%lld", d ? "," : "",
                            (long long)shape[d]);
  if (off < len)
    snprintf(buf + off, len - off, "]");
}

/* Checks the tensors of a model (enc < 0: absolute values in each tensor's
 * dtype) or an update (its encoding) against the student, and computes
 * their new values from the current weights into fresh arrays; nothing of
 * the client's state changes. `need_all`: every tensor must be there. */
static int stage_tensors(st_net *n, const st_wire_tensor *t, size_t count,
                         int enc, int need_all, size_t **index_out,
                         float ***values_out) {
  *index_out = NULL;
  *values_out = NULL;
  if (count > n->o.tensor_count)
    return st_error_set(ST_EBADMSG, "%zu tensors, the student has %zu", count,
                        n->o.tensor_count);
  if (need_all && count != n->o.tensor_count)
    return st_error_set(ST_EBADMSG,
                        "%zu of the student's %zu tensors where "
                        "every one is required",
                        count, n->o.tensor_count);
  size_t *index = calloc(count ? count : 1, sizeof *index);
  float **values = calloc(count ? count : 1, sizeof *values);
  uint8_t *seen = calloc(n->o.tensor_count ? n->o.tensor_count : 1, 1);
  int rc = index && values && seen ? ST_OK
                                   : st_error_set(ST_ENOMEM, "out of memory");
  for (size_t k = 0; !rc && k < count; k++) {
    long i = find_tensor(n, t[k].name);
    if (i < 0) {
      rc = st_error_set(ST_EBADMSG, "unknown tensor '%s'", t[k].name);
      break;
    }
    const st_net_tensor_desc *d = &n->descs[i];
    if (seen[i]) {
      rc = st_error_set(ST_EBADMSG, "tensor '%s' twice", t[k].name);
      break;
    }
    seen[i] = 1;
    int same = t[k].ndim == d->ndim;
    for (int a = 0; same && a < d->ndim; a++)
      same = t[k].shape[a] == d->shape[a];
    if (!same) {
      char got[96], want[96];
      shape_text(t[k].ndim, t[k].shape, got, sizeof got);
      shape_text(d->ndim, d->shape, want, sizeof want);
      rc = st_error_set(ST_EBADMSG, "tensor '%s' is %s, the student's is %s",
                        t[k].name, got, want);
      break;
    }
    values[k] = malloc(d->numel ? d->numel * sizeof(float) : 1);
    if (!values[k]) {
      rc = st_error_set(ST_ENOMEM, "out of memory");
      break;
    }
    index[k] = (size_t)i;
    memcpy(values[k], n->weights[i], d->numel * sizeof(float));
    st_update_encoding e =
        enc >= 0 ? (st_update_encoding)enc
                 : (t[k].dtype == ST_WIRE_F32 ? ST_UPDATE_F32 : ST_UPDATE_F16);
    if ((rc = st_codec_apply(e, t[k].dtype, t[k].data, t[k].bytes, d->numel,
                             values[k]))) {
      /* The detail is copied first: st_error_set writes where it lives. */
      char why[ST_NET_REASON_BYTES];
      set_text(why, sizeof why, st_error_detail());
      rc = st_error_set(rc, "tensor '%s': %s", t[k].name, why);
      break;
    }
  }
  free(seen);
  if (rc) {
    if (values)
      for (size_t k = 0; k < count; k++)
        free(values[k]);
    free(values);
    free(index);
    return rc;
  }
  *index_out = index;
  *values_out = values;
  return ST_OK;
}

/* Makes staged values the network's weights (the event keeps its own). */
static void commit(st_net *n, const st_net_event *e) {
  for (size_t k = 0; k < e->count; k++)
    memcpy(n->weights[e->index[k]], e->values[k],
           n->descs[e->index[k]].numel * sizeof(float));
}

/* ---- messages ------------------------------------------------------------ */

static void on_welcome(st_net *n, conn *c, const st_msg_welcome *w) {
  c->welcomed = 1;
  snprintf(c->session, sizeof c->session, "%s", w->session);
  c->welcome_version = w->version;
  c->stride = w->stride;
  c->min_stride = w->min_stride;
  c->max_stride = w->max_stride;
  c->threshold = w->threshold;
  st_log(ST_LOG_DEBUG,
         "event=welcome session=%s version=%llu stride=%d "
         "update_encoding=%s",
         w->session, (unsigned long long)w->version, w->stride,
         st_update_encoding_name(w->update_encoding));
  (void)n;
}

static void on_model(st_net *n, conn *c, const st_msg_model *m, size_t bytes) {
  size_t *index;
  float **values;
  st_error_clear();
  if (stage_tensors(n, m->tensors, m->tensor_count, -1, 1, &index, &values)) {
    malformed(n, "model: %s", st_error_detail());
    return;
  }
  c->model_seen = 1;
  /* A client that has run updates keeps them: its next key frame reports
   * its version, and the server answers with a full update. */
  int adopt = !n->have_weights || n->sessions_up == 0 || n->version == 0;
  st_net_event *e = adopt ? event_new(ST_NET_WEIGHTS) : NULL;
  if (!adopt || !e) {
    for (size_t k = 0; k < m->tensor_count; k++)
      free(values[k]);
    free(values);
    free(index);
    if (adopt) {
      drop(n, ST_ENOMEM, "out of memory for the model");
      return;
    }
    COUNT(models_ignored, 1);
    st_log(ST_LOG_INFO,
           "event=model_ignored version=%llu reason=\"the client runs "
           "updated weights; its next key frame resyncs them\"",
           (unsigned long long)n->version);
    return;
  }
  e->is_model = 1;
  e->full = 1;
  e->version = m->version;
  e->count = m->tensor_count;
  e->index = index;
  e->values = values;
  e->bytes = bytes;
  commit(n, e);
  n->have_weights = 1;
  n->version = m->version;
  COUNT(models_adopted, 1);
  st_log(ST_LOG_INFO, "event=model_adopted version=%llu tensors=%zu",
         (unsigned long long)m->version, m->tensor_count);
  emit(n, e);
}

static int32_t clamp_stride(const conn *c, int32_t s) {
  if (s < c->min_stride)
    return c->min_stride;
  return s > c->max_stride ? c->max_stride : s;
}

static void on_update(st_net *n, conn *c, const st_msg_update *u,
                      size_t bytes) {
  COUNT(updates, 1);
  if (u->seq == 0 || u->seq > c->last_sent_seq ||
      u->seq <= c->last_update_seq) {
    malformed(n,
              "update for key frame %llu, which was not sent or was "
              "already answered (last sent %llu)",
              (unsigned long long)u->seq, (unsigned long long)c->last_sent_seq);
    return;
  }
  c->last_update_seq = u->seq;
  int applies = n->have_weights && (u->full || u->base_version == n->version);
  st_net_event *e = NULL;
  if (!applies) {
    e = event_new(ST_NET_UPDATE_IGNORED);
    if (!e) {
      drop(n, ST_ENOMEM, "out of memory for an update");
      return;
    }
    COUNT(updates_ignored, 1);
    st_log(ST_LOG_INFO,
           "event=update_ignored seq=%llu base_version=%llu "
           "client_version=%llu",
           (unsigned long long)u->seq, (unsigned long long)u->base_version,
           (unsigned long long)n->version);
  } else {
    size_t *index;
    float **values;
    st_error_clear();
    if (stage_tensors(n, u->tensors, u->tensor_count, (int)u->encoding, u->full,
                      &index, &values)) {
      malformed(n, "update %llu: %s", (unsigned long long)u->seq,
                st_error_detail());
      return;
    }
    e = event_new(ST_NET_WEIGHTS);
    if (!e) {
      for (size_t k = 0; k < u->tensor_count; k++)
        free(values[k]);
      free(values);
      free(index);
      drop(n, ST_ENOMEM, "out of memory for an update");
      return;
    }
    e->count = u->tensor_count;
    e->index = index;
    e->values = values;
    commit(n, e);
    n->version = u->version;
    COUNT(updates_applied, 1);
  }
  e->seq = u->seq;
  e->full = u->full;
  e->version = u->version;
  e->base_version = u->base_version;
  e->stride = clamp_stride(c, u->stride);
  e->metric = u->metric;
  e->steps = u->steps;
  e->timing = u->timing;
  e->bytes = bytes;
  emit(n, e);
}

static void session_up(st_net *n, conn *c) {
  if (!n->have_weights) {
    drop(n, ST_ESTATE,
         "the server sent no model to a client without "
         "weights");
    return;
  }
  int first = n->sessions_up == 0;
  int resumed = n->has_session && strcmp(c->session, n->session) == 0;
  /* The first session's weights are the server's base (its hash matched,
   * or its model was adopted): the session's version is the client's. */
  if (first && !c->model_seen)
    n->version = c->welcome_version;
  n->sessions_up++;
  snprintf(n->session, sizeof n->session, "%s", c->session);
  n->has_session = 1;
  n->state = NET_READY;
  n->started = 1;
  n->backoff_ms = (uint64_t)n->o.reconnect_initial_ms;
  uint64_t now = uv_now(&n->loop);
  n->last_rx_ms = now;
  n->next_ping_ms = now + (uint64_t)n->o.ping_interval_ms;
  pthread_mutex_lock(&n->mu);
  n->counters.sessions++;
  if (!first)
    n->counters.reconnects++;
  if (resumed)
    n->counters.resumed++;
  pthread_mutex_unlock(&n->mu);
  st_log(ST_LOG_INFO,
         "event=online session=%s resumed=%d version=%llu stride=%d "
         "min_stride=%d max_stride=%d",
         c->session, resumed, (unsigned long long)n->version, c->stride,
         c->min_stride, c->max_stride);
  st_net_event *e = event_new(ST_NET_ONLINE);
  if (!e) {
    drop(n, ST_ENOMEM, "out of memory");
    return;
  }
  snprintf(e->session, sizeof e->session, "%s", c->session);
  e->resumed = resumed;
  e->first = first;
  e->stride = c->stride;
  e->min_stride = c->min_stride;
  e->max_stride = c->max_stride;
  e->threshold = c->threshold;
  e->version = n->version;
  emit(n, e);
}

static int is_permanent(const char *code) {
  for (size_t i = 0; i < sizeof permanent_codes / sizeof permanent_codes[0];
       i++)
    if (strcmp(code, permanent_codes[i]) == 0)
      return 1;
  return 0;
}

static void on_server_error(st_net *n, conn *c, const st_msg_error *e) {
  COUNT(server_errors, 1);
  st_log(ST_LOG_WARN, "event=server_error code=%s fatal=%d message=\"%s\"",
         e->code, e->fatal, e->message);
  if (e->fatal) {
    if (!n->started && is_permanent(e->code)) {
      snprintf(n->last_reason, sizeof n->last_reason,
               "the server refused the client: %s: %.300s", e->code,
               e->message);
      n->last_code = ST_ECONN;
      conn *cc = n->c;
      n->c = NULL;
      if (cc && !cc->closing) {
        cc->closing = 1;
        uv_read_stop((uv_stream_t *)&cc->tcp);
        uv_close((uv_handle_t *)&cc->tcp, conn_close_cb);
      }
      fail_start(n);
      return;
    }
    drop(n, ST_ECONN, "server error %s: %.300s", e->code, e->message);
    return;
  }
  /* A refusal that keeps the session: the key frame it was about gets no
   * update. */
  if (c->last_sent_seq > c->last_update_seq)
    emit_note(n, ST_NET_KEY_LOST, ST_ESTATE, c->last_sent_seq, e->message);
}

/* Handles one whole message; takes ownership of body. */
static void on_message(st_net *n, conn *c, uint8_t *body, uint32_t len) {
  st_proto_limits lim = {.max_message_bytes = n->o.max_message_bytes};
  st_msg m;
  st_error_clear();
  if (st_msg_decode(body, len, &lim, &m)) {
    free(body);
    malformed(n, "%s", st_error_detail());
    return;
  }
  size_t bytes = (size_t)len + ST_PROTO_HEADER_BYTES;
  switch (m.type) {
  case ST_MSG_WELCOME:
    if (c->welcomed || n->state != NET_HANDSHAKE)
      malformed(n, "welcome out of turn");
    else
      on_welcome(n, c, &m.u.welcome);
    break;
  case ST_MSG_MODEL:
    if (!c->welcomed || c->model_seen || n->state != NET_HANDSHAKE)
      malformed(n, "model out of turn");
    else
      on_model(n, c, &m.u.model, bytes);
    break;
  case ST_MSG_UPDATE:
    if (n->state != NET_READY && n->state != NET_BYE)
      malformed(n, "update before the session was up");
    else
      on_update(n, c, &m.u.update, bytes);
    break;
  case ST_MSG_PONG:
    if (n->state == NET_HANDSHAKE) {
      if (!c->welcomed || m.u.ping.t != c->ping_nonce)
        malformed(n, "pong before welcome, or for another ping");
      else
        session_up(n, c);
    }
    break;
  case ST_MSG_ERROR:
    on_server_error(n, c, &m.u.error);
    break;
  case ST_MSG_BYE:
    drop(n, ST_ESHUTDOWN, "the server said bye");
    break;
  default:
    malformed(n, "unexpected %s message", st_msg_type_name(m.type));
    break;
  }
  st_msg_free(&m);
  free(body);
}

/* ---- reading ------------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  conn *c = h->data;
  *buf = uv_buf_init((char *)c->chunk, sizeof c->chunk);
}

static void consume(st_net *n, conn *c, const uint8_t *p, size_t len) {
  /* A message may drop the connection: stop as soon as it is not ours. */
  while (len > 0 && n->c == c) {
    size_t used = 0;
    uint8_t *body = NULL;
    uint32_t blen = 0;
    st_error_clear();
    int rc = st_framer_feed(&c->rx, p, len, &used, &body, &blen);
    if (rc == ST_ENOMEM) {
      drop(n, rc, "%s", st_error_detail());
      return;
    }
    if (rc) {
      malformed(n, "%s", st_error_detail());
      return;
    }
    p += used;
    len -= used;
    if (body)
      on_message(n, c, body, blen);
  }
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  conn *c = s->data;
  st_net *n = c->net;
  if (c->closing || n->c != c)
    return;
  if (nread < 0) {
    if (nread == UV_EOF)
      drop(n, ST_ECONN, "the server closed the connection");
    else
      drop(n, ST_ECONN, "read failed: %s", uv_strerror((int)nread));
    return;
  }
  if (nread == 0)
    return;
  COUNT(bytes_down, (uint64_t)nread);
  n->last_rx_ms = uv_now(&n->loop);
  consume(n, c, c->chunk, (size_t)nread);
}

/* ---- connecting ---------------------------------------------------------- */

static void send_hello(st_net *n, conn *c) {
  st_msg m = {.type = ST_MSG_HELLO};
  st_msg_hello *h = &m.u.hello;
  h->proto = ST_PROTO_VERSION;
  snprintf(h->client_id, sizeof h->client_id, "%s", n->o.client_id);
  if (n->o.token[0]) {
    h->has_token = 1;
    snprintf(h->token, sizeof h->token, "%s", n->o.token);
  }
  if (n->o.student_hash[0]) {
    h->has_student = 1;
    snprintf(h->student, sizeof h->student, "%s", n->o.student_hash);
  }
  h->width = n->o.width;
  h->height = n->o.height;
  h->encodings = 1u << n->o.keyframe_encoding;
  if (n->has_session) {
    h->has_resume = 1;
    snprintf(h->resume_session, sizeof h->resume_session, "%s", n->session);
    h->resume_version = n->version;
  }
  /* The pong marks the end of what the server says to a hello: welcome,
   * then the model when one is sent. */
  c->ping_nonce = next_rand(n) >> 1;
  st_msg ping = {.type = ST_MSG_PING};
  ping.u.ping.t = c->ping_nonce;
  int rc = send_msg(n, &m);
  if (!rc)
    rc = send_msg(n, &ping);
  if (rc)
    drop(n, rc, "cannot send hello: %s", st_error_detail());
}

static void on_connect(uv_connect_t *req, int status) {
  conn *c = req->data;
  st_net *n = c->net;
  if (c->closing || n->c != c)
    return;
  if (status < 0) {
    drop(n, ST_ECONN, "cannot connect to %s:%d: %s", n->o.host, n->o.port,
         uv_strerror(status));
    return;
  }
  COUNT(connects, 1);
  uv_tcp_nodelay(&c->tcp, 1);
  uv_tcp_keepalive(&c->tcp, 1, TCP_KEEPALIVE_S);
  int r = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
  if (r < 0) {
    drop(n, ST_ECONN, "cannot read: %s", uv_strerror(r));
    return;
  }
  n->state = NET_HANDSHAKE;
  send_hello(n, c);
}

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  st_net *n = req->data;
  n->gai_busy = 0;
  if (n->state != NET_RESOLVING) { /* abandoned: timed out or stopping */
    uv_freeaddrinfo(res);
    if (n->state == NET_DONE)
      finish(n);
    return;
  }
  if (status < 0) {
    uv_freeaddrinfo(res);
    drop(n, ST_ECONN, "cannot resolve '%s': %s", n->o.host,
         uv_strerror(status));
    return;
  }
  conn *c = calloc(1, sizeof *c);
  if (!c) {
    uv_freeaddrinfo(res);
    drop(n, ST_ENOMEM, "out of memory");
    return;
  }
  c->net = n;
  st_framer_init(&c->rx, n->o.max_message_bytes);
  c->id = ++n->conn_ids;
  c->tcp.data = c;
  c->connect_req.data = c;
  uv_tcp_init(&n->loop, &c->tcp);
  n->c = c;
  n->state = NET_CONNECTING;
  int r = uv_tcp_connect(&c->connect_req, &c->tcp, res->ai_addr, on_connect);
  uv_freeaddrinfo(res);
  if (r < 0)
    drop(n, ST_ECONN, "cannot connect to %s:%d: %s", n->o.host, n->o.port,
         uv_strerror(r));
}

static void start_attempt(st_net *n) {
  uint64_t now = uv_now(&n->loop);
  n->attempt_deadline_ms = now + (uint64_t)n->o.handshake_timeout_ms;
  if (!n->started && n->attempt_deadline_ms > n->start_deadline_ms)
    n->attempt_deadline_ms = n->start_deadline_ms;
  char port[PORT_TEXT_BYTES];
  snprintf(port, sizeof port, "%d", n->o.port);
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  n->gai.data = n;
  n->state = NET_RESOLVING;
  int r =
      uv_getaddrinfo(&n->loop, &n->gai, on_resolved, n->o.host, port, &hints);
  if (r < 0) {
    drop(n, ST_ECONN, "cannot resolve '%s': %s", n->o.host, uv_strerror(r));
    return;
  }
  n->gai_busy = 1;
}

/* ---- housekeeping, commands and shutdown --------------------------------- */

static void on_tick(uv_timer_t *t) {
  st_net *n = t->data;
  uint64_t now = uv_now(&n->loop);
  switch (n->state) {
  case NET_WAITING:
    if (!n->started && now >= n->start_deadline_ms)
      fail_start(n);
    else if (now >= n->retry_at_ms && !n->gai_busy)
      start_attempt(n);
    break;
  case NET_RESOLVING:
  case NET_CONNECTING:
  case NET_HANDSHAKE:
    if (now >= n->attempt_deadline_ms)
      drop(n, ST_ETIMEDOUT, "no session within %lld ms of trying (%s)",
           (long long)n->o.handshake_timeout_ms,
           n->state == NET_HANDSHAKE ? "connected, no welcome" : "connecting");
    break;
  case NET_READY:
    if (now - n->last_rx_ms > (uint64_t)n->o.server_timeout_ms) {
      drop(n, ST_ETIMEDOUT, "the server was silent for %lld ms",
           (long long)n->o.server_timeout_ms);
    } else if (now >= n->next_ping_ms) {
      st_msg ping = {.type = ST_MSG_PING};
      ping.u.ping.t = now;
      n->next_ping_ms = now + (uint64_t)n->o.ping_interval_ms;
      if (send_msg(n, &ping))
        drop(n, ST_ECONN, "cannot send ping: %s", st_error_detail());
    }
    break;
  case NET_BYE:
    if (now >= n->bye_deadline_ms)
      drop(n, ST_ETIMEDOUT, "no bye from the server");
    break;
  case NET_DONE:
    break;
  }
}

/* Closes the loop's own handles once nothing else needs them; uv_run then
 * returns when the last request (a resolve, an encoding) has finished. */
static void finish(st_net *n) {
  if (!n->stopping || n->handles_closed || n->state != NET_DONE)
    return;
  n->handles_closed = 1;
  /* Key frames still waiting for the encoder will never be sent. */
  while (n->enc_head) {
    keyframe_req *kf = n->enc_head;
    n->enc_head = kf->next;
    keyframe_req_free(kf);
  }
  n->enc_tail = NULL;
  uv_close((uv_handle_t *)&n->wake, NULL);
  uv_close((uv_handle_t *)&n->tick, NULL);
}

static void begin_stop(st_net *n, int64_t bye_timeout_ms) {
  if (n->stopping)
    return;
  n->stopping = 1;
  if (n->state == NET_READY && n->c) {
    st_msg bye = {.type = ST_MSG_BYE};
    if (send_msg(n, &bye) == ST_OK) {
      n->state = NET_BYE;
      n->bye_deadline_ms = uv_now(&n->loop) + (uint64_t)bye_timeout_ms;
      return;
    }
  }
  if (n->c) {
    drop(n, ST_ESHUTDOWN, "stopping");
    return;
  }
  n->state = NET_DONE;
  finish(n);
}

static void on_wake(uv_async_t *a) {
  st_net *n = a->data;
  pthread_mutex_lock(&n->mu);
  keyframe_req *list = n->post_head;
  n->post_head = n->post_tail = NULL;
  int stop = n->stop;
  int64_t bye_ms = n->bye_timeout_ms;
  pthread_mutex_unlock(&n->mu);
  while (list) {
    keyframe_req *kf = list;
    list = kf->next;
    kf->next = NULL;
    if (n->stopping)
      keyframe_req_free(kf);
    else
      handle_keyframe(n, kf);
  }
  if (stop)
    begin_stop(n, bye_ms);
}

static void *net_main(void *arg) {
  st_net *n = arg;
  uv_run(&n->loop, UV_RUN_DEFAULT);
  return NULL;
}

/* ---- the caller's side --------------------------------------------------- */

static void net_release(st_net *n) {
  if (n->loop_ready) {
    if (!n->handles_closed) {
      uv_close((uv_handle_t *)&n->wake, NULL);
      uv_close((uv_handle_t *)&n->tick, NULL);
      uv_run(&n->loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(&n->loop) != 0)
      st_log(ST_LOG_WARN, "event=net_loop_busy_at_exit");
  }
  while (n->ev_head) {
    st_net_event *e = n->ev_head;
    n->ev_head = e->next;
    st_net_event_free(e);
  }
  while (n->post_head) {
    keyframe_req *k = n->post_head;
    n->post_head = k->next;
    keyframe_req_free(k);
  }
  if (n->weights)
    for (size_t i = 0; i < n->o.tensor_count; i++)
      free(n->weights[i]);
  free(n->weights);
  free(n->descs);
  st_jpeg_free(n->jpeg);
  if (n->sync_ready) {
    pthread_cond_destroy(&n->ev_cv);
    pthread_mutex_destroy(&n->mu);
  }
  free(n);
}

static int net_init(st_net *n, const st_net_options *o) {
  n->o = *o;
  size_t count = o->tensor_count;
  n->descs = calloc(count ? count : 1, sizeof *n->descs);
  n->weights = calloc(count ? count : 1, sizeof *n->weights);
  if (!n->descs || !n->weights)
    return st_error_set(ST_ENOMEM, "network: out of memory");
  memcpy(n->descs, o->tensors, count * sizeof *n->descs);
  n->o.tensors = n->descs;
  n->o.weights = NULL;
  for (size_t i = 0; i < count; i++) {
    size_t bytes = n->descs[i].numel * sizeof(float);
    n->weights[i] = calloc(1, bytes ? bytes : 1);
    if (!n->weights[i])
      return st_error_set(ST_ENOMEM, "network: out of memory");
    if (o->weights)
      memcpy(n->weights[i], o->weights[i], bytes);
  }
  n->have_weights = o->weights != NULL;
  n->rng = o->seed ? o->seed : (uint64_t)time(NULL) | 1u;
  n->backoff_ms = (uint64_t)o->reconnect_initial_ms;
  if (o->keyframe_encoding == ST_FRAME_JPEG) {
    int rc = st_jpeg_new(&n->jpeg);
    if (rc)
      return rc;
  }
  pthread_condattr_t ca;
  if (pthread_condattr_init(&ca))
    return st_error_set(ST_ENOMEM, "network: cannot create a condition");
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int bad = pthread_mutex_init(&n->mu, NULL);
  if (!bad && pthread_cond_init(&n->ev_cv, &ca)) {
    pthread_mutex_destroy(&n->mu);
    bad = 1;
  }
  pthread_condattr_destroy(&ca);
  if (bad)
    return st_error_set(ST_ENOMEM, "network: cannot create a lock");
  n->sync_ready = 1;
  int r = uv_loop_init(&n->loop);
  if (r < 0)
    return st_error_set(ST_ENOMEM, "network: %s", uv_strerror(r));
  if ((r = uv_async_init(&n->loop, &n->wake, on_wake)) < 0) {
    uv_loop_close(&n->loop);
    return st_error_set(ST_ENOMEM, "network: %s", uv_strerror(r));
  }
  uv_timer_init(&n->loop, &n->tick);
  n->loop_ready = 1;
  n->wake.data = n;
  n->tick.data = n;
  uint64_t now = uv_now(&n->loop);
  n->start_deadline_ms = now + (uint64_t)o->connect_timeout_ms;
  n->retry_at_ms = now;
  n->state = NET_WAITING;
  uv_timer_start(&n->tick, on_tick, 0, ST_NET_TICK_MS);
  return ST_OK;
}

int st_net_new(const st_net_options *o, st_net **out) {
  *out = NULL;
  st_net *n = calloc(1, sizeof *n);
  if (!n)
    return st_error_set(ST_ENOMEM, "network: out of memory");
  int rc = net_init(n, o);
  if (!rc && pthread_create(&n->thread, NULL, net_main, n))
    rc = st_error_set(ST_ENOMEM, "network: cannot start its thread");
  if (rc) {
    net_release(n);
    return rc;
  }
  n->thread_started = 1;
  *out = n;
  return ST_OK;
}

int st_net_post_keyframe(st_net *n, uint64_t seq, uint64_t frame_index,
                         uint64_t version, const uint8_t *rgb) {
  size_t bytes = (size_t)n->o.width * n->o.height * 3;
  keyframe_req *k = calloc(1, sizeof *k);
  uint8_t *copy = malloc(bytes);
  if (!k || !copy) {
    free(k);
    free(copy);
    return st_error_set(ST_ENOMEM, "network: out of memory for a key frame");
  }
  memcpy(copy, rgb, bytes);
  k->rgb = copy;
  k->seq = seq;
  k->frame_index = frame_index;
  k->version = version;
  pthread_mutex_lock(&n->mu);
  if (n->post_tail)
    n->post_tail->next = k;
  else
    n->post_head = k;
  n->post_tail = k;
  pthread_mutex_unlock(&n->mu);
  uv_async_send(&n->wake);
  return ST_OK;
}

st_net_event *st_net_next_event(st_net *n, int64_t timeout_ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t at = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec +
               (timeout_ms > 0 ? timeout_ms : 0) * NS_PER_MS;
  ts.tv_sec = at / 1000000000LL;
  ts.tv_nsec = at % 1000000000LL;
  pthread_mutex_lock(&n->mu);
  while (!n->ev_head && timeout_ms > 0)
    if (pthread_cond_timedwait(&n->ev_cv, &n->mu, &ts) != 0)
      break;
  st_net_event *e = n->ev_head;
  if (e) {
    n->ev_head = e->next;
    if (!n->ev_head)
      n->ev_tail = NULL;
    e->next = NULL;
  }
  pthread_mutex_unlock(&n->mu);
  return e;
}

void st_net_get_counters(st_net *n, st_net_counters *c) {
  pthread_mutex_lock(&n->mu);
  *c = n->counters;
  pthread_mutex_unlock(&n->mu);
}

void st_net_stop(st_net *n, int64_t bye_timeout_ms) {
  if (!n->thread_started)
    return;
  pthread_mutex_lock(&n->mu);
  n->stop = 1;
  n->bye_timeout_ms = bye_timeout_ms;
  pthread_mutex_unlock(&n->mu);
  uv_async_send(&n->wake);
  pthread_join(n->thread, NULL);
  n->thread_started = 0;
  pthread_mutex_lock(&n->mu);
  n->counters.online = 0;
  pthread_mutex_unlock(&n->mu);
}

void st_net_free(st_net *n) {
  if (!n)
    return;
  st_net_stop(n, 0);
  net_release(n);
}
