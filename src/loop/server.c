#include "loop/server.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/error.h"
#include "loop/http.h"
#include "loop/worker.h"
#include "proto/proto.h"

/* Smallest read buffer of a connection (it grows to the last message's
 * size, so a stream of equal key frames is read without copies). */
#define ST_SERVER_READ_CHUNK_BYTES (64u * 1024u)
/* The sweep that enforces deadlines runs this often, at most and at least. */
#define ST_SERVER_SWEEP_MIN_MS 5
#define ST_SERVER_SWEEP_MAX_MS 1000
/* A deadline is checked about this many times per its own length. */
#define ST_SERVER_SWEEPS_PER_TIMEOUT 4
#define ST_SERVER_PEER_BYTES 64
#define ST_SERVER_SESSION_ID_RANDOM_BYTES 8
#define NS_PER_MS 1000000ull

/* ---- types ------------------------------------------------------------------- */

typedef enum session_state {
  SESSION_HANDSHAKE = 0, /* connected, waiting for hello */
  SESSION_RESUMING,      /* hello resumes a session whose key frame is still
                            in work: welcome waits for its learner */
  SESSION_READY,         /* welcomed: key frames accepted */
  SESSION_CLOSING        /* error or bye sent; no more input is read */
} session_state;

typedef struct session {
  st_server *srv;                        /* owner */
  uv_tcp_t tcp;                          /* the client's socket */
  struct session *prev, *next;           /* server's list of live sessions */
  session_state state;
  int handle_open;                       /* uv_close not yet completed */
  int closing;                           /* uv_close or shutdown requested */
  int job_in_flight;                     /* a worker holds our learner */
  int welcomed;                          /* counted in sessions_active */
  int no_linger;                         /* bye, or the learner is unusable */
  char id[ST_PROTO_SESSION_BYTES + 1];   /* our session id */
  char client_id[ST_PROTO_CLIENT_ID_BYTES + 1];
  char peer[ST_SERVER_PEER_BYTES];       /* "addr:port" for logs */
  /* framing: bytes read and not yet handled, from a message boundary */
  uint8_t *rx;                           /* owned, or NULL between reads */
  size_t rx_len, rx_cap;
  uint32_t rx_body_len;                  /* body length of the message at
                                            rx[0] once its prefix is in */
  size_t rx_hint;                        /* size of the last message: the
                                            next buffer is made that big */
  /* deadlines (uv_now milliseconds) */
  uint64_t accepted_ms;                  /* connection accepted */
  uint64_t active_ms;                    /* last complete message or reply */
  uint64_t message_started_ms;           /* first byte of a partial message;
                                            0 when between messages */
  /* protocol */
  uint32_t width, height;                /* frame size from hello */
  unsigned encodings;                    /* bit per st_frame_encoding */
  uint64_t last_seq;                     /* highest key-frame seq seen */
  int have_seq;
  st_learner *learner;                   /* owned; lent to a running job */
  int knows_model;                       /* hello named the base student */
  int has_resume;                        /* hello asked to resume: */
  char resume_id[ST_PROTO_SESSION_BYTES + 1];
  uint64_t resume_version;
  /* A resume that arrives while the dropped connection's key frame is in
   * work: the new session waits (SESSION_RESUMING) for that job, then
   * takes the learner over, as it would from a lingering one. */
  struct session *resumer;               /* on the dropped session */
  struct session *awaiting;              /* on the waiting one */
  int detached;                          /* in srv->detached */
  st_job *waiting;                       /* owned: next job, at most one */
  /* counters for the close log line */
  uint64_t keyframes, updates, drops, bytes_in, bytes_out;
} session;

struct st_server {
  uv_loop_t *loop;                       /* borrowed */
  const st_server_config *cfg;           /* borrowed */
  st_model_info *mi;
  st_metrics *metrics;
  st_workers *workers;
  st_http_server *http;
  uv_tcp_t listener;
  int listener_open;
  int port, metrics_port;
  uv_timer_t sweep;                      /* deadline enforcement */
  uv_timer_t shutdown_timer;             /* bounds the drain */
  uv_async_t shutdown_async;             /* st_server_request_shutdown */
  int draining;                          /* shutdown begun */
  int finished;                          /* everything closed or closing */
  session *sessions;                     /* live sessions */
  session *detached;                     /* closed, their job still in work */
  size_t session_count;                  /* connections with an open handle */
  uint64_t next_session;                 /* counter part of session ids */
  struct lingering *lingers;             /* newest first */
  size_t linger_count;
};

/* A session whose connection dropped: its learner waits for a `hello`
 * with `resume` (limits.session_linger_ms). */
typedef struct lingering {
  struct lingering *next;
  char id[ST_PROTO_SESSION_BYTES + 1];
  char client_id[ST_PROTO_CLIENT_ID_BYTES + 1];
  st_learner *learner;                   /* owned */
  uint64_t expires_ms;                   /* uv_now deadline */
} lingering;

typedef struct write_req {
  uv_write_t req;
  session *s;
  uint8_t *buf;                          /* owned unless shared */
  size_t len;
  int shared;                            /* 1: buf belongs to someone else */
} write_req;

static void session_close(session *s);
static void server_maybe_finish(st_server *srv);
static void session_welcome(session *s, st_learner *learner, const char *id);

/* ---- session life ------------------------------------------------------------ */

static void session_free(session *s) {
  st_learner_free(s->learner);
  st_job_free(s->waiting);
  free(s->rx);
  free(s);
}

static void linger_free(lingering *g) {
  st_learner_free(g->learner);
  free(g);
}

/* Keeps a dropped session's learner for a resume; the oldest goes when
 * max_clients are already kept (memory stays bounded). */
static void linger_add(st_server *srv, session *s) {
  lingering *g = calloc(1, sizeof *g);
  if (!g)
    return;
  snprintf(g->id, sizeof g->id, "%s", s->id);
  snprintf(g->client_id, sizeof g->client_id, "%s", s->client_id);
  g->learner = s->learner;
  s->learner = NULL;
  g->expires_ms = uv_now(srv->loop) + srv->cfg->limits.session_linger_ms;
  g->next = srv->lingers;
  srv->lingers = g;
  if (++srv->linger_count > srv->cfg->limits.max_clients) {
    lingering **pp = &srv->lingers;
    while ((*pp)->next)
      pp = &(*pp)->next;
    linger_free(*pp);
    *pp = NULL;
    srv->linger_count--;
  }
}

/* Takes the lingering learner of session `id` of client `client_id`; NULL
 * when there is none (expired, evicted, another client's, never existed). */
static lingering *linger_take(st_server *srv, const char *id,
                              const char *client_id) {
  for (lingering **pp = &srv->lingers; *pp; pp = &(*pp)->next) {
    lingering *g = *pp;
    if (strcmp(g->id, id) == 0 && strcmp(g->client_id, client_id) == 0) {
      *pp = g->next;
      srv->linger_count--;
      return g;
    }
  }
  return NULL;
}

static void linger_expire(st_server *srv, int all) {
  uint64_t now = uv_now(srv->loop);
  for (lingering **pp = &srv->lingers; *pp;) {
    lingering *g = *pp;
    if (all || now >= g->expires_ms) {
      *pp = g->next;
      srv->linger_count--;
      linger_free(g);
    } else {
      pp = &g->next;
    }
  }
}

/* A session is freed when both its handle is closed and no job holds its
 * learner (libuv: memory of a handle is freed only in its close callback). */
/* The server's two session lists (live, and detached) are doubly linked
 * through prev/next; a session is in at most one. */
static void list_push(session **head, session *s) {
  s->prev = NULL;
  s->next = *head;
  if (*head)
    (*head)->prev = s;
  *head = s;
}

static void list_remove(session **head, session *s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    *head = s->next;
  if (s->next)
    s->next->prev = s->prev;
}

static void session_release(session *s) {
  if (s->handle_open || s->job_in_flight)
    return;
  st_server *srv = s->srv;
  if (s->detached)
    list_remove(&srv->detached, s);
  /* A resume waits for this session: hand the learner over (an unusable
   * one, after a failed job, is not: the resumer gets a new session). */
  session *r = s->resumer;
  st_learner *l = NULL;
  char id[ST_PROTO_SESSION_BYTES + 1] = "";
  if (r) {
    r->awaiting = NULL;
    s->resumer = NULL;
    if (r->closing || r->state != SESSION_RESUMING)
      r = NULL;
  }
  if (r && !s->no_linger) {
    l = s->learner;
    s->learner = NULL;
    snprintf(id, sizeof id, "%s", s->id);
  }
  if (s->welcomed && s->learner && !s->no_linger && !srv->draining &&
      srv->cfg->limits.session_linger_ms > 0)
    linger_add(srv, s);
  session_free(s);
  if (r)
    session_welcome(r, l, id);
}

static void session_closed_cb(uv_handle_t *h) {
  session *s = h->data;
  st_server *srv = s->srv;
  list_remove(&srv->sessions, s);
  srv->session_count--;
  if (s->awaiting) {
    /* Gave up waiting: the dropped session lingers as usual. */
    s->awaiting->resumer = NULL;
    s->awaiting = NULL;
  }
  if (s->job_in_flight) {
    /* Findable by a resume until its job is done (session_release). */
    list_push(&srv->detached, s);
    s->detached = 1;
  }
  st_metrics_gauge_add(srv->metrics, ST_GAUGE_CONNECTIONS_ACTIVE, -1);
  if (s->welcomed)
    st_metrics_gauge_add(srv->metrics, ST_GAUGE_SESSIONS_ACTIVE, -1);
  st_log(ST_LOG_INFO,
         "session=%s client=%s peer=%s event=closed keyframes=%llu "
         "updates=%llu drops=%llu bytes_in=%llu bytes_out=%llu",
         s->id[0] ? s->id : "-", s->client_id[0] ? s->client_id : "-", s->peer,
         (unsigned long long)s->keyframes, (unsigned long long)s->updates,
         (unsigned long long)s->drops, (unsigned long long)s->bytes_in,
         (unsigned long long)s->bytes_out);
  s->handle_open = 0;
  session_release(s);
  server_maybe_finish(srv);
}

static void session_close(session *s) {
  if (s->closing)
    return;
  s->closing = 1;
  s->state = SESSION_CLOSING;
  st_job_free(s->waiting);
  s->waiting = NULL;
  uv_close((uv_handle_t *)&s->tcp, session_closed_cb);
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  (void)status;
  session *s = req->data;
  free(req);
  s->closing = 0; /* the flush is done: now really close */
  session_close(s);
}

/* Closes after every queued write has been flushed (an error or bye must
 * reach the client before the connection goes). */
static void session_close_after_flush(session *s) {
  if (s->closing)
    return;
  s->state = SESSION_CLOSING;
  uv_read_stop((uv_stream_t *)&s->tcp);
  st_job_free(s->waiting);
  s->waiting = NULL;
  uv_shutdown_t *req = malloc(sizeof *req);
  if (req) {
    req->data = s;
    if (uv_shutdown(req, (uv_stream_t *)&s->tcp, shutdown_cb) == 0) {
      s->closing = 1;
      return;
    }
    free(req);
  }
  session_close(s);
}

/* ---- writing ----------------------------------------------------------------- */

static void write_cb(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  session *s = w->s;
  if (status == 0) {
    s->bytes_out += w->len;
    st_metrics_add(s->srv->metrics, ST_CTR_BYTES_OUT, w->len);
  }
  if (!w->shared)
    free(w->buf);
  free(w);
}

/* Queues bytes for the client; takes ownership of buf unless `shared`.
 * A client whose unsent backlog would pass max_write_queue_bytes is a slow
 * reader and is disconnected rather than buffered without bound. */
static int session_write(session *s, uint8_t *buf, size_t len, int shared) {
  st_server *srv = s->srv;
  if (s->closing || !s->handle_open) {
    if (!shared)
      free(buf);
    return ST_ECONN;
  }
  size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&s->tcp);
  if (queued + len > srv->cfg->limits.max_write_queue_bytes) {
    st_log(ST_LOG_WARN,
           "session=%s peer=%s event=slow_reader queued=%zu limit=%llu",
           s->id[0] ? s->id : "-", s->peer, queued,
           (unsigned long long)srv->cfg->limits.max_write_queue_bytes);
    st_metrics_error(srv->metrics, ST_ETIMEDOUT);
    if (!shared)
      free(buf);
    session_close(s);
    return ST_ECONN;
  }
  write_req *w = malloc(sizeof *w);
  if (!w) {
    if (!shared)
      free(buf);
    session_close(s);
    return ST_ENOMEM;
  }
  w->s = s;
  w->buf = buf;
  w->len = len;
  w->shared = shared;
  uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
  int rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, write_cb);
  if (rc) {
    if (!shared)
      free(buf);
    free(w);
    session_close(s);
    return ST_ECONN;
  }
  s->active_ms = uv_now(srv->loop);
  return ST_OK;
}

static int session_send(session *s, const st_msg *m) {
  uint8_t *buf = NULL;
  size_t len = 0;
  int rc = st_msg_encode(m, &buf, &len);
  if (rc) {
    st_log(ST_LOG_ERROR, "session=%s event=encode_failed type=%s: %s", s->id,
           st_msg_type_name(m->type), st_error_detail());
    return rc;
  }
  return session_write(s, buf, len, 0);
}

/* Every error reply goes through here, so metrics and logs agree. A fatal
 * error closes the connection once the message is flushed. */
static void session_error(session *s, int code, int fatal, const char *fmt,
                          ...) __attribute__((format(printf, 4, 5)));
static void session_error(session *s, int code, int fatal, const char *fmt,
                          ...) {
  st_msg m = {.type = ST_MSG_ERROR};
  snprintf(m.u.error.code, sizeof m.u.error.code, "%s", st_err_name(code));
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m.u.error.message, sizeof m.u.error.message, fmt, ap);
  va_end(ap);
  m.u.error.fatal = fatal;
  st_metrics_error(s->srv->metrics, code);
  st_log(fatal ? ST_LOG_WARN : ST_LOG_INFO,
         "session=%s client=%s peer=%s event=error code=%s fatal=%d: %s",
         s->id[0] ? s->id : "-", s->client_id[0] ? s->client_id : "-",
         s->peer, m.u.error.code, fatal, m.u.error.message);
  if (s->closing)
    return;
  session_send(s, &m);
  if (fatal)
    session_close_after_flush(s);
}

/* ---- jobs ---------------------------------------------------------------------- */

static void session_submit(session *s, st_job *job) {
  s->job_in_flight = 1;
  st_workers_submit(s->srv->workers, job);
}

static void job_done_cb(st_job *job, void *data) {
  st_server *srv = data;
  session *s = job->session;
  s->job_in_flight = 0;
  if (!s->handle_open) {
    if (job->status != ST_OK)
      s->no_linger = 1;
    st_job_free(job);
    session_release(s);
    server_maybe_finish(srv);
    return;
  }
  if (job->status == ST_OK) {
    double total = (double)(uv_hrtime() - job->enqueued_ns) / (double)NS_PER_MS;
    st_metrics_observe_ms(srv->metrics, ST_STAGE_TOTAL, total);
    if (job->kind == ST_JOB_KEYFRAME) {
      st_metrics_add(srv->metrics, ST_CTR_UPDATES, 1);
      if (job->resync)
        st_metrics_add(srv->metrics, ST_CTR_RESYNCS, 1);
      if (!job->tensors)
        st_metrics_add(srv->metrics, ST_CTR_UPDATES_EMPTY, 1);
      s->updates++;
      st_log(ST_LOG_DEBUG,
             "session=%s event=update seq=%llu version=%llu stride=%d "
             "metric=%.4f steps=%d resync=%d ms=%.1f",
             s->id, (unsigned long long)job->frame.seq,
             (unsigned long long)s->learner->version, s->learner->stride,
             job->metric, job->steps, job->resync, total);
    } else {
      st_metrics_add(srv->metrics, ST_CTR_LABELS, 1);
    }
    uint8_t *reply = job->reply;
    job->reply = NULL;
    session_write(s, reply, job->reply_len, 0);
  } else if (job->status == ST_ESHUTDOWN) {
    session_error(s, ST_ESHUTDOWN, 0, "key frame %llu not processed: %s",
                  (unsigned long long)job->frame.seq, job->detail);
  } else {
    /* A failed job leaves the learner in an unknown state: end the
     * session, never the process. */
    s->no_linger = 1;
    session_error(s, job->status, 1, "key frame %llu: %s",
                  (unsigned long long)job->frame.seq, job->detail);
  }
  st_job_free(job);
  if (s->waiting && !s->closing && !srv->draining) {
    st_job *next = s->waiting;
    s->waiting = NULL;
    session_submit(s, next);
  }
  server_maybe_finish(srv);
}

/* ---- messages ------------------------------------------------------------------ */

static int token_equal(const char *a, const char *b) {
  /* Constant time in the secret's length: every byte is compared. */
  size_t la = strlen(a), lb = strlen(b);
  unsigned diff = (unsigned)(la ^ lb);
  for (size_t i = 0; i < lb; i++)
    diff |= (unsigned)(unsigned char)b[i] ^
            (unsigned)(unsigned char)(i < la ? a[i] : 0);
  return diff == 0;
}

static void make_session_id(st_server *srv, char *out, size_t len) {
  uint8_t rnd[ST_SERVER_SESSION_ID_RANDOM_BYTES] = {0};
  /* Synchronous uv_random (no callback); a failure only weakens the id. */
  uv_random(NULL, NULL, rnd, sizeof rnd, 0, NULL);
  int n = snprintf(out, len, "%llx-", (unsigned long long)++srv->next_session);
  for (size_t i = 0; i < sizeof rnd && n + 2 < (int)len; i++)
    n += snprintf(out + n, len - (size_t)n, "%02x", rnd[i]);
}

/* The session `s` asks to resume when it is still held by a connection:
 * one that looks alive (the server has not seen the drop yet) or one
 * closed while its key frame is in work. NULL when there is none. */
static int resumable(const session *o, const session *s) {
  return o != s && o->welcomed && o->learner && !o->no_linger &&
         !o->resumer && strcmp(o->id, s->resume_id) == 0 &&
         strcmp(o->client_id, s->client_id) == 0;
}

static session *resume_source(st_server *srv, const session *s) {
  for (session *o = srv->sessions; o; o = o->next)
    if (resumable(o, s))
      return o;
  for (session *o = srv->detached; o; o = o->next)
    if (resumable(o, s))
      return o;
  return NULL;
}

/* Welcomes s: with `learner` (owned from here) the session `id` goes on
 * where it stopped; with NULL a new session starts at the base weights. */
static void session_welcome(session *s, st_learner *learner,
                            const char *id) {
  st_server *srv = s->srv;
  const st_server_config *cfg = srv->cfg;
  int resumed = learner != NULL;
  s->learner = learner;
  if (srv->draining) {
    session_error(s, ST_ESHUTDOWN, 1, "server is shutting down");
    return;
  }
  if (resumed) {
    /* The same learner, id and version: updates sent before the drop may
     * be lost, so only the version the client reports is trusted as is. */
    snprintf(s->id, sizeof s->id, "%s", id);
    s->learner->floor_version = s->learner->version;
    st_metrics_add(srv->metrics, ST_CTR_RESUMES, 1);
    st_log(ST_LOG_INFO,
           "session=%s client=%s event=resumed version=%llu client_version=%llu",
           s->id, s->client_id, (unsigned long long)s->learner->version,
           (unsigned long long)s->resume_version);
  } else {
    int rc = st_learner_new(srv->mi, cfg, &s->learner);
    if (rc) {
      session_error(s, rc, 1, "cannot create a session: %s",
                    st_error_detail());
      return;
    }
    make_session_id(srv, s->id, sizeof s->id);
    if (s->has_resume)
      /* Expired or unknown: a new session at the base weights; the
       * client's next key frame reports its old version and gets a full
       * update. */
      st_log(ST_LOG_INFO, "session=%s client=%s event=resume_unknown old=%s",
             s->id, s->client_id, s->resume_id);
  }
  st_msg m = {.type = ST_MSG_WELCOME};
  st_msg_welcome *w = &m.u.welcome;
  w->proto = ST_PROTO_VERSION;
  snprintf(w->session, sizeof w->session, "%s", s->id);
  w->version = s->learner->version;
  w->threshold = cfg->student.threshold;
  w->min_stride = cfg->student.min_stride;
  w->max_stride = cfg->student.max_stride;
  w->stride = s->learner->stride;
  w->trainable_count = srv->mi->trainable_count;
  w->trainable = srv->mi->trainable;
  w->update_encoding = cfg->update_encoding;
  if (session_send(s, &m))
    return;
  s->state = SESSION_READY;
  s->welcomed = 1;
  st_metrics_add(srv->metrics, ST_CTR_SESSIONS, 1);
  st_metrics_gauge_add(srv->metrics, ST_GAUGE_SESSIONS_ACTIVE, 1);
  /* A resumed client holds the session's weights; others get the base
   * student unless they already have that exact file. */
  int send_model = !resumed && srv->mi->model_msg && !s->knows_model;
  st_log(ST_LOG_INFO,
         "session=%s client=%s peer=%s event=welcome size=%ux%u model=%d "
         "resumed=%d",
         s->id, s->client_id, s->peer, s->width, s->height, send_model,
         resumed);
  if (send_model)
    session_write(s, srv->mi->model_msg, srv->mi->model_msg_len, 1);
}

static void on_hello(session *s, const st_msg_hello *h) {
  st_server *srv = s->srv;
  const st_server_config *cfg = srv->cfg;
  snprintf(s->client_id, sizeof s->client_id, "%s", h->client_id);
  if (cfg->has_token &&
      (!h->has_token || !token_equal(h->token, cfg->token))) {
    session_error(s, ST_EAUTH, 1, "a valid token is required");
    return;
  }
  if (h->width > cfg->limits.max_frame_width ||
      h->height > cfg->limits.max_frame_height) {
    session_error(s, ST_ERANGE, 1,
                  "frame size %ux%u exceeds this server's limit %ux%u",
                  h->width, h->height, cfg->limits.max_frame_width,
                  cfg->limits.max_frame_height);
    return;
  }
  if (srv->draining) {
    session_error(s, ST_ESHUTDOWN, 1, "server is shutting down");
    return;
  }
  if (!st_workers_healthy(srv->workers)) {
    session_error(s, ST_ENODEV, 1,
                  "this server's compute device is lost (it awaits a "
                  "restart)");
    return;
  }
  s->width = h->width;
  s->height = h->height;
  s->encodings = h->encodings;
  s->knows_model = h->has_student && srv->mi->hash[0] &&
                   strcmp(h->student, srv->mi->hash) == 0;
  s->has_resume = h->has_resume;
  if (h->has_resume) {
    snprintf(s->resume_id, sizeof s->resume_id, "%s", h->resume_session);
    s->resume_version = h->resume_version;
  }
  lingering *g = h->has_resume
                     ? linger_take(srv, h->resume_session, h->client_id)
                     : NULL;
  if (g) {
    st_learner *l = g->learner;
    g->learner = NULL;
    linger_free(g);
    session_welcome(s, l, s->resume_id);
    return;
  }
  /* The client knows its old connection is dead, the server may not yet:
   * the new connection takes the session over and the old one is closed. */
  session *o = h->has_resume ? resume_source(srv, s) : NULL;
  if (o && o->job_in_flight) {
    o->resumer = s;
    s->awaiting = o;
    s->state = SESSION_RESUMING;
    st_log(ST_LOG_INFO,
           "session=%s client=%s event=resume_waiting (its key frame is in "
           "work)",
           o->id, s->client_id);
    if (o->handle_open)
      session_close(o);
    return;
  }
  if (o) {
    st_learner *l = o->learner;
    o->learner = NULL;
    o->no_linger = 1;
    st_log(ST_LOG_INFO, "session=%s client=%s event=taken_over peer=%s",
           o->id, s->client_id, s->peer);
    session_close(o);
    session_welcome(s, l, s->resume_id);
    return;
  }
  session_welcome(s, NULL, NULL);
}

/* Takes ownership of body (the frame borrows it). */
static void on_frame(session *s, st_msg_type type, const st_msg_frame *f,
                     uint8_t *body) {
  st_server *srv = s->srv;
  int keyframe = type == ST_MSG_KEYFRAME;
  st_metrics_add(srv->metrics, keyframe ? ST_CTR_KEYFRAMES : ST_CTR_OFFLOADS,
                 1);
  s->keyframes++;
  if (f->width != s->width || f->height != s->height) {
    free(body);
    session_error(s, ST_EBADMSG, 0,
                  "%s %llu is %ux%u but hello announced %ux%u",
                  st_msg_type_name(type), (unsigned long long)f->seq,
                  f->width, f->height, s->width, s->height);
    return;
  }
  if (!(s->encodings & (1u << f->encoding))) {
    free(body);
    session_error(s, ST_EBADMSG, 0, "encoding %s was not announced in hello",
                  st_frame_encoding_name(f->encoding));
    return;
  }
  if (s->have_seq && f->seq <= s->last_seq) {
    free(body);
    session_error(s, ST_EBADMSG, 0, "seq %llu does not increase (last %llu)",
                  (unsigned long long)f->seq,
                  (unsigned long long)s->last_seq);
    return;
  }
  s->last_seq = f->seq;
  s->have_seq = 1;
  if (srv->draining) {
    free(body);
    session_error(s, ST_ESHUTDOWN, 0, "server is shutting down");
    return;
  }
  st_job *job = calloc(1, sizeof *job);
  if (!job) {
    free(body);
    session_error(s, ST_ENOMEM, 0, "out of memory");
    return;
  }
  job->kind = keyframe ? ST_JOB_KEYFRAME : ST_JOB_OFFLOAD;
  job->session = s;
  job->learner = s->learner;
  job->body = body;
  job->frame = *f;
  if (!s->job_in_flight) {
    session_submit(s, job);
    return;
  }
  /* One in work, one waiting: a newer frame makes the waiting one stale. */
  if (s->waiting) {
    st_job_free(s->waiting);
    s->drops++;
    st_metrics_add(srv->metrics, ST_CTR_DROPS, 1);
  }
  job->enqueued_ns = uv_hrtime();
  s->waiting = job;
}

/* Handles one complete message: `body` is the message buffer (prefix
 * first, then `len` body bytes); takes ownership of it. */
static void session_on_message(session *s, uint8_t *body, uint32_t len) {
  st_server *srv = s->srv;
  st_proto_limits lim = {.max_message_bytes = srv->cfg->limits.max_message_bytes};
  st_msg m;
  st_error_clear();
  int rc = st_msg_decode(body + ST_PROTO_HEADER_BYTES, len, &lim, &m);
  if (rc) {
    free(body);
    session_error(s, rc, 1, "%s", st_error_detail());
    return;
  }
  s->active_ms = uv_now(srv->loop);
  if (s->state == SESSION_HANDSHAKE && m.type != ST_MSG_HELLO) {
    session_error(s, ST_ESTATE, 1, "expected hello, got %s",
                  st_msg_type_name(m.type));
    st_msg_free(&m);
    free(body);
    return;
  }
  switch (m.type) {
  case ST_MSG_HELLO:
    if (s->state != SESSION_HANDSHAKE)
      session_error(s, ST_ESTATE, 1, "hello was already received");
    else
      on_hello(s, &m.u.hello);
    break;
  case ST_MSG_KEYFRAME:
  case ST_MSG_OFFLOAD:
    if (s->state != SESSION_READY) {
      session_error(s, ST_ESTATE, 1, "%s before welcome",
                    st_msg_type_name(m.type));
      break;
    }
    on_frame(s, m.type, &m.u.frame, body);
    body = NULL;
    break;
  case ST_MSG_PING: {
    st_msg pong = {.type = ST_MSG_PONG};
    pong.u.ping.t = m.u.ping.t;
    session_send(s, &pong);
    break;
  }
  case ST_MSG_BYE: {
    s->no_linger = 1; /* a goodbye ends the session for good */
    st_msg bye = {.type = ST_MSG_BYE};
    session_send(s, &bye);
    st_log(ST_LOG_INFO, "session=%s client=%s event=bye", s->id,
           s->client_id);
    session_close_after_flush(s);
    break;
  }
  default:
    session_error(s, ST_ESTATE, 1, "%s is a server-to-client message",
                  st_msg_type_name(m.type));
    break;
  }
  st_msg_free(&m);
  free(body);
}

/* ---- reading -----------------------------------------------------------------
 * Every message is read into one buffer that then becomes the message:
 * its prefix at the start, the body right after, so a key frame is never
 * copied on its way to the worker. A read never goes past the end of a
 * message whose length is known; only a read that starts a new message may
 * pull in the beginning of the next one (pipelined small messages), and
 * those few bytes move to a fresh buffer. Idle connections hold no buffer:
 * libuv asks for one only when the socket is readable. */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  session *s = h->data;
  if (!s->rx) {
    size_t cap = s->rx_hint > ST_SERVER_READ_CHUNK_BYTES
                     ? s->rx_hint
                     : ST_SERVER_READ_CHUNK_BYTES;
    s->rx = malloc(cap);
    s->rx_cap = s->rx ? cap : 0;
    s->rx_len = 0;
  }
  size_t want = s->rx_body_len
                    ? ST_PROTO_HEADER_BYTES + s->rx_body_len - s->rx_len
                    : s->rx_cap - s->rx_len;
  /* A NULL/0 buffer makes libuv report UV_ENOBUFS to read_cb. */
  *buf = uv_buf_init(s->rx ? (char *)s->rx + s->rx_len : NULL,
                     s->rx ? (unsigned)want : 0);
}

/* The prefix is in: check it, and make room for the whole message. */
static int session_start_message(session *s) {
  uint32_t len = 0;
  st_error_clear();
  int rc = st_frame_header_parse(s->rx, s->srv->cfg->limits.max_message_bytes,
                                 &len);
  if (rc) {
    session_error(s, rc, 1, "%s", st_error_detail());
    return rc;
  }
  size_t total = ST_PROTO_HEADER_BYTES + (size_t)len;
  if (total > s->rx_cap) {
    uint8_t *p = realloc(s->rx, total);
    if (!p) {
      session_error(s, ST_ENOMEM, 1, "out of memory for a %u-byte message",
                    len);
      return ST_ENOMEM;
    }
    s->rx = p;
    s->rx_cap = total;
  }
  s->rx_body_len = len;
  return ST_OK;
}

/* Handles every complete message in rx. */
static void session_drain_rx(session *s) {
  while (!s->closing && s->state != SESSION_CLOSING) {
    if (!s->rx_body_len) {
      if (s->rx_len < ST_PROTO_HEADER_BYTES)
        return;
      if (session_start_message(s))
        return;
    }
    size_t total = ST_PROTO_HEADER_BYTES + (size_t)s->rx_body_len;
    if (s->rx_len < total)
      return;
    uint8_t *msg = s->rx;
    uint32_t body_len = s->rx_body_len;
    size_t leftover = s->rx_len - total;
    s->rx = NULL;
    s->rx_len = s->rx_cap = 0;
    s->rx_body_len = 0;
    s->rx_hint = total;
    s->message_started_ms = 0;
    if (leftover) {
      size_t cap = total > ST_SERVER_READ_CHUNK_BYTES
                       ? total
                       : ST_SERVER_READ_CHUNK_BYTES;
      if (cap < leftover)
        cap = leftover;
      s->rx = malloc(cap);
      if (!s->rx) {
        free(msg);
        session_error(s, ST_ENOMEM, 1, "out of memory");
        return;
      }
      memcpy(s->rx, msg + total, leftover);
      s->rx_len = leftover;
      s->rx_cap = cap;
      s->message_started_ms = uv_now(s->srv->loop);
    }
    session_on_message(s, msg, body_len);
  }
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  session *s = stream->data;
  if (nread < 0) {
    if (nread != UV_EOF)
      st_log(ST_LOG_INFO, "session=%s peer=%s event=read_error: %s",
             s->id[0] ? s->id : "-", s->peer, uv_strerror((int)nread));
    session_close(s);
    return;
  }
  if (nread == 0)
    return;
  if (!s->message_started_ms)
    s->message_started_ms = uv_now(s->srv->loop);
  s->bytes_in += (uint64_t)nread;
  st_metrics_add(s->srv->metrics, ST_CTR_BYTES_IN, (uint64_t)nread);
  s->rx_len += (size_t)nread;
  session_drain_rx(s);
}

/* ---- accepting --------------------------------------------------------------- */

static void peer_name(uv_tcp_t *tcp, char *out, size_t len) {
  struct sockaddr_storage ss;
  int namelen = sizeof ss;
  snprintf(out, len, "?");
  if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &namelen))
    return;
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    uv_ip4_name(a, host, sizeof host);
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    uv_ip6_name(a, host, sizeof host);
    port = ntohs(a->sin6_port);
  }
  snprintf(out, len, "%s:%d", host, port);
}

static void on_connection(uv_stream_t *listener, int status) {
  st_server *srv = listener->data;
  if (status < 0) {
    st_log(ST_LOG_WARN, "event=accept_error: %s", uv_strerror(status));
    return;
  }
  session *s = calloc(1, sizeof *s);
  if (!s)
    return;
  s->srv = srv;
  uv_tcp_init(srv->loop, &s->tcp);
  s->tcp.data = s;
  s->handle_open = 1;
  list_push(&srv->sessions, s);
  srv->session_count++;
  st_metrics_add(srv->metrics, ST_CTR_CONNECTIONS, 1);
  st_metrics_gauge_add(srv->metrics, ST_GAUGE_CONNECTIONS_ACTIVE, 1);
  if (uv_accept(listener, (uv_stream_t *)&s->tcp)) {
    session_close(s);
    return;
  }
  uv_tcp_nodelay(&s->tcp, 1);
  peer_name(&s->tcp, s->peer, sizeof s->peer);
  s->accepted_ms = s->active_ms = uv_now(srv->loop);
  if (srv->session_count > srv->cfg->limits.max_clients) {
    session_error(s, ST_EFULL, 1, "server is at its limit of %u clients",
                  srv->cfg->limits.max_clients);
    return;
  }
  if (srv->draining) {
    session_error(s, ST_ESHUTDOWN, 1, "server is shutting down");
    return;
  }
  int rc = uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, read_cb);
  if (rc) {
    session_close(s);
    return;
  }
  st_log(ST_LOG_DEBUG, "peer=%s event=connected", s->peer);
}

/* ---- deadlines ----------------------------------------------------------------- */

static void sweep_cb(uv_timer_t *t) {
  st_server *srv = t->data;
  const st_server_limits *lim = &srv->cfg->limits;
  uint64_t now = uv_now(srv->loop);
  linger_expire(srv, 0);
  for (session *s = srv->sessions, *next; s; s = next) {
    next = s->next;
    if (s->closing || s->state == SESSION_CLOSING)
      continue;
    if (s->message_started_ms &&
        now - s->message_started_ms > lim->message_timeout_ms) {
      /* A peer trickling a message (slowloris) holds a buffer and a slot. */
      session_error(s, ST_ETIMEDOUT, 1,
                    "a message must arrive within %llu ms",
                    (unsigned long long)lim->message_timeout_ms);
    } else if (s->state == SESSION_RESUMING &&
               now - s->accepted_ms > lim->handshake_timeout_ms) {
      /* The dropped session's key frame takes too long: start afresh (its
       * learner lingers once the job is done). */
      st_log(ST_LOG_INFO, "client=%s event=resume_wait_timeout old=%s",
             s->client_id, s->resume_id);
      s->awaiting->resumer = NULL;
      s->awaiting = NULL;
      session_welcome(s, NULL, NULL);
    } else if (s->state == SESSION_HANDSHAKE &&
               now - s->accepted_ms > lim->handshake_timeout_ms) {
      session_error(s, ST_ETIMEDOUT, 1, "no hello within %llu ms",
                    (unsigned long long)lim->handshake_timeout_ms);
    } else if (!s->job_in_flight && s->state != SESSION_RESUMING &&
               now - s->active_ms > lim->idle_timeout_ms) {
      session_error(s, ST_ETIMEDOUT, 1, "idle for more than %llu ms",
                    (unsigned long long)lim->idle_timeout_ms);
    }
  }
}

static uint64_t sweep_interval_ms(const st_server_limits *lim) {
  uint64_t shortest = lim->handshake_timeout_ms;
  if (lim->idle_timeout_ms < shortest)
    shortest = lim->idle_timeout_ms;
  if (lim->message_timeout_ms < shortest)
    shortest = lim->message_timeout_ms;
  uint64_t every = shortest / ST_SERVER_SWEEPS_PER_TIMEOUT;
  if (every < ST_SERVER_SWEEP_MIN_MS)
    every = ST_SERVER_SWEEP_MIN_MS;
  if (every > ST_SERVER_SWEEP_MAX_MS)
    every = ST_SERVER_SWEEP_MAX_MS;
  return every;
}

/* ---- operators' endpoint --------------------------------------------------------- */

static int text_body(st_http_response *r, int status, const char *text) {
  r->status = status;
  r->content_type = "text/plain; charset=utf-8";
  r->body = strdup(text);
  if (!r->body)
    return ST_ENOMEM;
  r->body_len = strlen(text);
  return ST_OK;
}

static int http_handler(void *data, const char *path, st_http_response *r) {
  st_server *srv = data;
  if (strcmp(path, "/metrics") == 0) {
    r->status = 200;
    r->content_type = "text/plain; version=0.0.4; charset=utf-8";
    return st_metrics_render(srv->metrics, &r->body, &r->body_len);
  }
  if (strcmp(path, "/healthz") == 0) {
    const int healthy = st_workers_healthy(srv->workers);
    return text_body(r, healthy ? 200 : 503,
                     healthy ? "ok\n" : "device lost\n");
  }
  if (strcmp(path, "/readyz") == 0) {
    int ready = !srv->draining && st_workers_ready(srv->workers);
    return text_body(r, ready ? 200 : 503, ready ? "ready\n" : "not ready\n");
  }
  return text_body(r, 404, "not found\n");
}

/* ---- shutdown ------------------------------------------------------------------- */

static void handle_closed_noop(uv_handle_t *h) { (void)h; }

/* Sends bye to everyone, closes every handle: uv_run then returns. */
static void server_finish(st_server *srv) {
  if (srv->finished)
    return;
  srv->finished = 1;
  st_log(ST_LOG_INFO, "event=shutdown sessions=%zu", srv->session_count);
  linger_expire(srv, 1);
  for (session *s = srv->sessions, *next; s; s = next) {
    next = s->next;
    if (s->closing)
      continue;
    if (s->state == SESSION_READY) {
      st_msg bye = {.type = ST_MSG_BYE};
      session_send(s, &bye);
    }
    session_close_after_flush(s);
  }
  uv_timer_stop(&srv->sweep);
  uv_close((uv_handle_t *)&srv->sweep, handle_closed_noop);
  uv_timer_stop(&srv->shutdown_timer);
  uv_close((uv_handle_t *)&srv->shutdown_timer, handle_closed_noop);
  uv_close((uv_handle_t *)&srv->shutdown_async, handle_closed_noop);
  st_http_server_stop(srv->http);
  srv->http = NULL;
  /* Joins the threads: they are idle now, or finishing their last job. */
  st_workers_stop(srv->workers);
  srv->workers = NULL;
}

static void server_maybe_finish(st_server *srv) {
  if (srv->draining && !srv->finished && srv->workers &&
      st_workers_pending(srv->workers) == 0)
    server_finish(srv);
}

static void shutdown_timeout_cb(uv_timer_t *t) {
  st_server *srv = t->data;
  st_log(ST_LOG_WARN, "event=shutdown_timeout pending_jobs=%zu",
         srv->workers ? st_workers_pending(srv->workers) : 0);
  if (srv->workers)
    st_workers_cancel_queued(srv->workers);
  server_finish(srv);
}

static void server_begin_shutdown(st_server *srv) {
  if (srv->draining)
    return;
  srv->draining = 1;
  st_log(ST_LOG_INFO, "event=draining sessions=%zu", srv->session_count);
  if (srv->listener_open) {
    uv_close((uv_handle_t *)&srv->listener, handle_closed_noop);
    srv->listener_open = 0;
  }
  /* Queued jobs still run (their clients are waiting for them); frames
   * waiting behind a running job of their session are dropped. */
  for (session *s = srv->sessions; s; s = s->next) {
    st_job_free(s->waiting);
    s->waiting = NULL;
  }
  uv_timer_start(&srv->shutdown_timer, shutdown_timeout_cb,
                 srv->cfg->limits.shutdown_timeout_ms, 0);
  server_maybe_finish(srv);
}

static void shutdown_async_cb(uv_async_t *a) { server_begin_shutdown(a->data); }

void st_server_request_shutdown(st_server *srv) {
  uv_async_send(&srv->shutdown_async);
}

/* ---- construction ------------------------------------------------------------------ */

static int bind_listener(st_server *srv) {
  const st_server_config *cfg = srv->cfg;
  struct sockaddr_storage addr;
  int rc = uv_ip4_addr(cfg->listen_host, cfg->listen_port,
                       (struct sockaddr_in *)&addr);
  if (rc)
    rc = uv_ip6_addr(cfg->listen_host, cfg->listen_port,
                     (struct sockaddr_in6 *)&addr);
  if (rc)
    return st_error_set(ST_EINVAL, "server: listen address '%s' is not an IP "
                        "address", cfg->listen_host);
  uv_tcp_init(srv->loop, &srv->listener);
  srv->listener.data = srv;
  srv->listener_open = 1;
  rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0);
  if (!rc)
    rc = uv_listen((uv_stream_t *)&srv->listener, SOMAXCONN, on_connection);
  if (rc)
    return st_error_set(ST_EIO, "server: cannot listen on %s:%d: %s",
                        cfg->listen_host, cfg->listen_port, uv_strerror(rc));
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
  srv->port = ntohs(bound.ss_family == AF_INET6
                        ? ((struct sockaddr_in6 *)&bound)->sin6_port
                        : ((struct sockaddr_in *)&bound)->sin_port);
  return ST_OK;
}

int st_server_new(uv_loop_t *loop, const st_server_config *cfg,
                  st_server **out) {
  *out = NULL;
  st_server *srv = calloc(1, sizeof *srv);
  if (!srv)
    return st_error_set(ST_ENOMEM, "server: out of memory");
  srv->loop = loop;
  srv->cfg = cfg;
  st_log_set_level(cfg->log_level);
  int rc = st_metrics_new(&srv->metrics);
  if (!rc)
    rc = st_model_info_new(cfg, &srv->mi);
  if (!rc)
    rc = st_workers_start(loop, cfg, srv->mi, srv->metrics, job_done_cb, srv,
                          &srv->workers);
  if (!rc) {
    rc = st_workers_wait_ready(srv->workers);
    if (rc) {
      /* The threads that did start have exited; close the async handle. */
      st_workers_stop(srv->workers);
      srv->workers = NULL;
      uv_run(loop, UV_RUN_NOWAIT);
    }
  }
  if (rc) {
    st_model_info_free(srv->mi);
    st_metrics_free(srv->metrics);
    free(srv);
    return rc;
  }
  uv_timer_init(loop, &srv->sweep);
  srv->sweep.data = srv;
  uint64_t every = sweep_interval_ms(&cfg->limits);
  uv_timer_start(&srv->sweep, sweep_cb, every, every);
  uv_timer_init(loop, &srv->shutdown_timer);
  srv->shutdown_timer.data = srv;
  uv_async_init(loop, &srv->shutdown_async, shutdown_async_cb);
  srv->shutdown_async.data = srv;
  rc = bind_listener(srv);
  if (!rc && cfg->metrics_port > 0) {
    rc = st_http_server_start(loop, cfg->metrics_host, cfg->metrics_port,
                              http_handler, srv, &srv->http);
    if (!rc)
      srv->metrics_port = st_http_server_port(srv->http);
  }
  if (rc) {
    /* Close what was opened; the caller runs the loop to finish closing
     * and frees the server (st_server_free) after that. */
    int keep = rc;
    char detail[512];
    snprintf(detail, sizeof detail, "%s", st_error_detail());
    srv->draining = 1;
    if (srv->listener_open) {
      uv_close((uv_handle_t *)&srv->listener, handle_closed_noop);
      srv->listener_open = 0;
    }
    server_finish(srv);
    uv_run(loop, UV_RUN_DEFAULT);
    st_server_free(srv);
    return st_error_set(keep, "%s", detail);
  }
  st_log(ST_LOG_INFO,
         "event=listening addr=%s:%d metrics_port=%d backend=%s workers=%d "
         "teacher=%s",
         cfg->listen_host, srv->port, srv->metrics_port,
         cfg->null_compute ? "none (null_compute)"
                           : (cfg->backend == ST_BACKEND_CUDA
                                  ? "cuda"
                                  : cfg->backend == ST_BACKEND_AUTO ? "auto"
                                                                    : "cpu"),
         cfg->workers, cfg->null_compute ? "-" : cfg->teacher_path);
  *out = srv;
  return ST_OK;
}

int st_server_port(const st_server *s) { return s->port; }
int st_server_metrics_port(const st_server *s) { return s->metrics_port; }
st_metrics *st_server_metrics(st_server *s) { return s->metrics; }

void st_server_free(st_server *srv) {
  if (!srv)
    return;
  st_model_info_free(srv->mi);
  st_metrics_free(srv->metrics);
  free(srv);
}
