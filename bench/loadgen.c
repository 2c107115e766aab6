/* shadowtutor-loadgen: many virtual clients in one process, each a real
 * protocol v1 client on its own TCP connection, driven by one libuv loop.
 *
 *   shadowtutor-loadgen --server HOST:PORT --input VIDEO
 *       [--mode shadowtutor|offload] [--clients N] [--duration S] [--json FILE]
 *       [--fps F] [--stride-policy server|fixed:K] [--encoding jpeg|raw]
 *       [--jpeg-quality Q] [--size WxH] [--frames N] [--ramp S]
 *       [--arrivals constant|poisson] [--concurrency-sweep 1,2,4,...]
 *       [--token T] [--metrics HOST:PORT] [--seed S] [--drain S]
 *
 * The video is decoded once (client/video_in: libavformat + libavcodec) into
 * --frames RGB frames at --size, each encoded once as JPEG when asked. Every
 * virtual client then plays those frames at --fps (constant or Poisson
 * inter-frame times): in `shadowtutor` mode it sends a key frame whenever
 * its stride says so (the server's strides, or every K frames) and applies
 * each update to its own mirror of the student exactly as a device would
 * (versions included, so the server never has to resync); in `offload` mode
 * it sends every frame and receives label maps (the paper's baseline).
 * --fps 0 is a closed loop: the next key frame leaves as soon as the last
 * answer arrived (the loop-throughput measurement).
 *
 * Key-frame messages are packed once per send with msgpack-c up to the
 * `data` key, and the frame's bytes are written from the shared frame
 * buffer as a second iovec, so the generator costs little next to the
 * server it measures.
 *
 * Each phase (one per --concurrency-sweep entry, or one of --clients)
 * runs for --duration seconds, then stops sending and waits up to --drain
 * seconds for outstanding answers. The report (terminal table and
 * --json) gives key frames/s answered, update latency p50/p90/p99 (sent ->
 * answer received), the server's stage times from update.timing, bytes up
 * and down per frame and per second, frames the server dropped (sent, never
 * answered), updates ignored for a version mismatch, errors by code, and
 * the server's /metrics text scraped at the end when --metrics is given.
 *
 * It only connects to the address given on the command line, and always
 * stops by itself.
 */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <sys/time.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <msgpack.h>
#include <uv.h>

#include "base/error.h"
#include "proto/codec.h"
#include "proto/jpeg.h"
#include "proto/proto.h"
#include "video_in.h"

#define EXIT_USAGE 2
#define MAX_SWEEP 32
#define MAX_DURATION_S 3600
#define MAX_CLIENTS 10000
#define MAX_FRAMES 10000
#define DEFAULT_FRAMES 64
#define DEFAULT_FPS 30.0
#define DEFAULT_DURATION_S 10.0
#define DEFAULT_DRAIN_S 5.0
#define DEFAULT_CLIENTS 1
#define SEQ_RING 256          /* send times kept per client, by seq */
#define MAX_ERROR_CODES 32
#define METRICS_MAX_BYTES (4u << 20)
#define FRAME_WAIT_MS 60000
#define NS_PER_MS 1e6
#define NS_PER_S 1e9
#define MS_PER_S 1000.0
#define HTTP_TIMEOUT_S 5

/* ---- options ----------------------------------------------------------------- */

typedef enum lg_mode { MODE_SHADOWTUTOR = 0, MODE_OFFLOAD } lg_mode;

typedef struct options {
  const char *server, *input, *json, *token, *metrics;
  char host[256];
  int port;
  lg_mode mode;
  int sweep[MAX_SWEEP], sweep_count;
  double duration_s, ramp_s, drain_s, fps;
  int fixed_stride;          /* 0: follow the server */
  st_frame_encoding encoding;
  int jpeg_quality;
  int width, height;         /* 0: the video's */
  int frames;
  int poisson;
  uint64_t seed;
} options;

/* ---- the shared frames ----------------------------------------------------- */

typedef struct frame_set {
  int count, width, height;
  uint8_t **data;            /* per frame: raw RGB or JPEG bytes */
  size_t *len;
  double mean_bytes;
} frame_set;

/* ---- statistics ---------------------------------------------------------------- */

typedef struct stats {
  double *lat_ms;            /* answer latencies */
  size_t lat_count, lat_cap;
  double stage_sum[5];       /* queue decode teacher distill encode, ms */
  uint64_t stage_count;
  uint64_t sent, answered, stale, frames_played;
  uint64_t bytes_up, bytes_down;
  uint64_t bytes_down_model; /* of bytes_down: `model` messages, framed */
  uint64_t connect_failures;
  char error_codes[MAX_ERROR_CODES][ST_PROTO_ERROR_CODE_BYTES + 1];
  uint64_t error_counts[MAX_ERROR_CODES];
  int error_kinds;
  double stride_sum;
  uint64_t stride_count;
} stats;

static void stats_latency(stats *s, double ms) {
  if (s->lat_count == s->lat_cap) {
    size_t cap = s->lat_cap ? 2 * s->lat_cap : 4096;
    double *p = realloc(s->lat_ms, cap * sizeof *p);
    if (!p)
      return;
    s->lat_ms = p;
    s->lat_cap = cap;
  }
  s->lat_ms[s->lat_count++] = ms;
}

static void stats_error(stats *s, const char *code) {
  for (int i = 0; i < s->error_kinds; i++)
    if (strcmp(s->error_codes[i], code) == 0) {
      s->error_counts[i]++;
      return;
    }
  if (s->error_kinds < MAX_ERROR_CODES) {
    snprintf(s->error_codes[s->error_kinds], sizeof s->error_codes[0], "%s",
             code);
    s->error_counts[s->error_kinds++] = 1;
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted values. */
static double percentile(const double *v, size_t n, double p) {
  if (!n)
    return NAN;
  size_t rank = (size_t)ceil(p / 100.0 * (double)n);
  return v[rank ? rank - 1 : 0];
}

/* ---- virtual clients ---------------------------------------------------------- */

typedef struct phase phase;

typedef struct mirror_tensor {
  char name[ST_PROTO_TENSOR_NAME_BYTES + 1];
  size_t numel;
  float *w;
} mirror_tensor;

typedef enum vc_state { VC_CONNECTING = 0, VC_HELLO, VC_READY, VC_CLOSED } vc_state;

typedef struct vclient {
  phase *ph;
  int id;
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  uv_timer_t timer;             /* the frame clock */
  int handles_open;
  vc_state state;
  st_framer rx;                 /* the reply being read */
  uint64_t version;             /* what our mirror holds */
  int32_t stride;
  uint64_t seq;                 /* last key frame sent */
  int64_t frame;                /* frames played */
  int64_t next_key;             /* frame number of the next key frame */
  uint64_t outstanding;         /* sent, not answered */
  uint64_t sent_ns[SEQ_RING];   /* send time by seq % SEQ_RING */
  mirror_tensor *mirror;        /* the student as this device holds it */
  size_t mirror_count;
  uint64_t rng;                 /* Poisson arrivals */
} vclient;

struct phase {
  uv_loop_t *loop;
  const options *opt;
  const frame_set *frames;
  struct sockaddr_storage addr;
  int clients;
  vclient *vc;
  uv_timer_t stop_timer;        /* end of sending, then end of drain */
  int sending;                  /* 0 after the duration */
  uint64_t start_ns, stop_ns;
  stats st;
};

typedef struct write_req {
  uv_write_t req;
  vclient *vc;
  uint8_t *owned;               /* freed after the write */
  size_t bytes;
} write_req;

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static void vc_handle_closed(uv_handle_t *h) {
  vclient *vc = h->data;
  vc->handles_open--;
}

static void vc_close(vclient *vc) {
  if (vc->state == VC_CLOSED)
    return;
  vc->state = VC_CLOSED;
  uv_timer_stop(&vc->timer);
  if (!uv_is_closing((uv_handle_t *)&vc->tcp))
    uv_close((uv_handle_t *)&vc->tcp, vc_handle_closed);
  if (!uv_is_closing((uv_handle_t *)&vc->timer))
    uv_close((uv_handle_t *)&vc->timer, vc_handle_closed);
}

static void write_cb(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  if (status == 0)
    w->vc->ph->st.bytes_up += w->bytes;
  free(w->owned);
  free(w);
}

static int vc_write(vclient *vc, uint8_t *owned, size_t len,
                    const uint8_t *extra, size_t extra_len) {
  write_req *w = malloc(sizeof *w);
  if (!w) {
    free(owned);
    return ST_ENOMEM;
  }
  w->vc = vc;
  w->owned = owned;
  w->bytes = len + extra_len;
  uv_buf_t bufs[2] = {uv_buf_init((char *)owned, (unsigned)len),
                      uv_buf_init((char *)extra, (unsigned)extra_len)};
  int rc = uv_write(&w->req, (uv_stream_t *)&vc->tcp, bufs, extra ? 2 : 1,
                    write_cb);
  if (rc) {
    free(owned);
    free(w);
    vc_close(vc);
    return ST_ECONN;
  }
  return ST_OK;
}

static void pack_str(msgpack_packer *pk, const char *s) {
  size_t n = strlen(s);
  msgpack_pack_str(pk, n);
  msgpack_pack_str_body(pk, s, n);
}

/* A keyframe/offload: everything up to the bin header of `data` packed
 * here, the frame's bytes written from the shared set. */
static void vc_send_frame(vclient *vc) {
  phase *ph = vc->ph;
  const frame_set *fs = ph->frames;
  int fi = (int)(vc->frame % fs->count);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  uint8_t prefix[ST_PROTO_HEADER_BYTES] = {0};
  msgpack_sbuffer_write(&sb, (const char *)prefix, sizeof prefix);
  msgpack_pack_map(&pk, 8);
  pack_str(&pk, "type");
  pack_str(&pk, ph->opt->mode == MODE_OFFLOAD ? "offload" : "keyframe");
  pack_str(&pk, "seq");
  msgpack_pack_uint64(&pk, ++vc->seq);
  pack_str(&pk, "frame_index");
  msgpack_pack_uint64(&pk, (uint64_t)vc->frame);
  pack_str(&pk, "encoding");
  pack_str(&pk, st_frame_encoding_name(ph->opt->encoding));
  pack_str(&pk, "width");
  msgpack_pack_uint32(&pk, (uint32_t)fs->width);
  pack_str(&pk, "height");
  msgpack_pack_uint32(&pk, (uint32_t)fs->height);
  pack_str(&pk, "version");
  msgpack_pack_uint64(&pk, vc->version);
  pack_str(&pk, "data");
  msgpack_pack_bin(&pk, fs->len[fi]);
  size_t body = sb.size - sizeof prefix + fs->len[fi];
  st_frame_header_write((uint8_t *)sb.data, (uint32_t)body);
  size_t len = sb.size;
  uint8_t *buf = (uint8_t *)msgpack_sbuffer_release(&sb);
  vc->sent_ns[vc->seq % SEQ_RING] = uv_hrtime();
  vc->outstanding++;
  ph->st.sent++;
  vc_write(vc, buf, len, fs->data[fi], fs->len[fi]);
}

static double next_interval_ms(vclient *vc) {
  double mean = MS_PER_S / vc->ph->opt->fps;
  if (!vc->ph->opt->poisson)
    return mean;
  double u = (double)(xorshift(&vc->rng) >> 11) / 9007199254740992.0;
  return -log(1.0 - u) * mean;
}

/* One frame of the device's video. */
static void vc_frame_tick(uv_timer_t *t) {
  vclient *vc = t->data;
  phase *ph = vc->ph;
  if (vc->state != VC_READY || !ph->sending)
    return;
  ph->st.frames_played++;
  int key = ph->opt->mode == MODE_OFFLOAD || vc->frame >= vc->next_key;
  if (key) {
    vc_send_frame(vc);
    int32_t stride = ph->opt->fixed_stride ? ph->opt->fixed_stride : vc->stride;
    vc->next_key = vc->frame + (stride > 0 ? stride : 1);
  }
  vc->frame++;
  uv_timer_start(&vc->timer, vc_frame_tick, (uint64_t)next_interval_ms(vc), 0);
}

static void vc_adopt_model(vclient *vc, const st_msg_model *m) {
  for (size_t i = 0; i < vc->mirror_count; i++)
    free(vc->mirror[i].w);
  free(vc->mirror);
  vc->mirror = calloc(m->tensor_count ? m->tensor_count : 1, sizeof *vc->mirror);
  vc->mirror_count = 0;
  if (!vc->mirror)
    return;
  for (size_t i = 0; i < m->tensor_count; i++) {
    const st_wire_tensor *t = &m->tensors[i];
    mirror_tensor *mt = &vc->mirror[vc->mirror_count];
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++)
      numel *= (size_t)t->shape[d];
    mt->w = malloc(numel * sizeof(float));
    if (!mt->w)
      break;
    snprintf(mt->name, sizeof mt->name, "%s", t->name);
    mt->numel = numel;
    st_codec_apply(ST_UPDATE_F32, t->dtype, t->data, t->bytes, numel, mt->w);
    vc->mirror_count++;
  }
  vc->version = m->version;
}

/* Applies an update as a device would; 0 when it was ignored (stale). */
static int vc_apply_update(vclient *vc, const st_msg_update *u) {
  if (!u->full && u->base_version != vc->version)
    return 0;
  for (size_t i = 0; i < u->tensor_count; i++) {
    const st_wire_tensor *t = &u->tensors[i];
    for (size_t k = 0; k < vc->mirror_count; k++) {
      mirror_tensor *mt = &vc->mirror[k];
      if (strcmp(mt->name, t->name) == 0) {
        st_codec_apply(u->encoding, t->dtype, t->data, t->bytes, mt->numel,
                       mt->w);
        break;
      }
    }
  }
  vc->version = u->version;
  return 1;
}

static void vc_answered(vclient *vc, uint64_t seq) {
  phase *ph = vc->ph;
  ph->st.answered++;
  if (vc->outstanding)
    vc->outstanding--;
  if (vc->seq - seq < SEQ_RING)
    stats_latency(&ph->st,
                  (double)(uv_hrtime() - vc->sent_ns[seq % SEQ_RING]) /
                      NS_PER_MS);
  /* Closed loop: the next key frame as soon as this answer is in. */
  if (ph->opt->fps <= 0 && ph->sending && vc->outstanding == 0) {
    ph->st.frames_played++;
    vc_send_frame(vc);
    vc->frame++;
  }
}

static void vc_on_message(vclient *vc, const uint8_t *body, uint32_t len) {
  phase *ph = vc->ph;
  st_proto_limits lim = {.max_message_bytes = ST_PROTO_MAX_MESSAGE_BYTES_CEILING};
  st_msg m;
  if (st_msg_decode(body, len, &lim, &m)) {
    stats_error(&ph->st, "undecodable_reply");
    vc_close(vc);
    return;
  }
  switch (m.type) {
  case ST_MSG_WELCOME:
    vc->state = VC_READY;
    vc->version = m.u.welcome.version;
    vc->stride = m.u.welcome.stride;
    vc->next_key = 0;
    if (ph->opt->fps > 0)
      uv_timer_start(&vc->timer, vc_frame_tick, 0, 0);
    else if (ph->sending) {
      ph->st.frames_played++;
      vc_send_frame(vc);
      vc->frame++;
    }
    break;
  case ST_MSG_MODEL:
    ph->st.bytes_down_model += (uint64_t)len + ST_PROTO_HEADER_BYTES;
    vc_adopt_model(vc, &m.u.model);
    break;
  case ST_MSG_UPDATE: {
    const st_msg_update *u = &m.u.update;
    if (!vc_apply_update(vc, u))
      ph->st.stale++;
    vc->stride = u->stride;
    ph->st.stride_sum += u->stride;
    ph->st.stride_count++;
    const double stage[5] = {u->timing.queue_ms, u->timing.decode_ms,
                             u->timing.teacher_ms, u->timing.distill_ms,
                             u->timing.encode_ms};
    for (int i = 0; i < 5; i++)
      ph->st.stage_sum[i] += stage[i];
    ph->st.stage_count++;
    vc_answered(vc, u->seq);
    break;
  }
  case ST_MSG_LABELS:
    vc_answered(vc, m.u.labels.seq);
    break;
  case ST_MSG_ERROR:
    stats_error(&ph->st, m.u.error.code);
    if (m.u.error.fatal)
      vc_close(vc);
    break;
  case ST_MSG_BYE:
    vc_close(vc);
    break;
  default:
    break;
  }
  st_msg_free(&m);
}

static void vc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  vclient *vc = h->data;
  static uint8_t chunk[64 * 1024]; /* one loop thread: one reader at a time */
  (void)suggested;
  /* The rest of a body is read in place, the rest through the chunk. */
  size_t n = 0;
  uint8_t *space = st_framer_body_space(&vc->rx, &n);
  if (space)
    *buf = uv_buf_init((char *)space, (unsigned)n);
  else
    *buf = uv_buf_init((char *)chunk, sizeof chunk);
}

static void vc_body_done(vclient *vc, uint8_t *body, uint32_t len) {
  vc_on_message(vc, body, len);
  free(body);
}

static void vc_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  vclient *vc = s->data;
  if (nread < 0) {
    if (vc->ph->sending)
      stats_error(&vc->ph->st, "connection_closed");
    vc_close(vc);
    return;
  }
  vc->ph->st.bytes_down += (uint64_t)nread;
  const uint8_t *p = (const uint8_t *)buf->base;
  size_t n = (size_t)nread;
  uint8_t *body = NULL;
  uint32_t len = 0;
  size_t room = 0;
  if (n && p == st_framer_body_space(&vc->rx, &room)) {
    st_framer_body_commit(&vc->rx, n, &body, &len);
    if (body)
      vc_body_done(vc, body, len);
    return;
  }
  while (n > 0 && vc->state != VC_CLOSED) {
    size_t used = 0;
    if (st_framer_feed(&vc->rx, p, n, &used, &body, &len)) {
      stats_error(&vc->ph->st, "bad_reply_length");
      vc_close(vc);
      return;
    }
    p += used;
    n -= used;
    if (body)
      vc_body_done(vc, body, len);
  }
}

static void vc_send_hello(vclient *vc) {
  const options *o = vc->ph->opt;
  st_msg m = {.type = ST_MSG_HELLO};
  st_msg_hello *h = &m.u.hello;
  h->proto = ST_PROTO_VERSION;
  snprintf(h->client_id, sizeof h->client_id, "loadgen-%d", vc->id);
  if (o->token) {
    h->has_token = 1;
    snprintf(h->token, sizeof h->token, "%s", o->token);
  }
  h->width = (uint32_t)vc->ph->frames->width;
  h->height = (uint32_t)vc->ph->frames->height;
  h->encodings = 1u << o->encoding;
  uint8_t *buf;
  size_t len;
  if (st_msg_encode(&m, &buf, &len)) {
    vc_close(vc);
    return;
  }
  vc->state = VC_HELLO;
  vc_write(vc, buf, len, NULL, 0);
}

static void vc_connected(uv_connect_t *req, int status) {
  vclient *vc = req->data;
  if (status < 0) {
    vc->ph->st.connect_failures++;
    stats_error(&vc->ph->st, "connect_failed");
    vc_close(vc);
    return;
  }
  uv_tcp_nodelay(&vc->tcp, 1);
  uv_read_start((uv_stream_t *)&vc->tcp, vc_alloc, vc_read);
  vc_send_hello(vc);
}

static void vc_start(uv_timer_t *t) {
  vclient *vc = t->data;
  if (!vc->ph->sending)
    return;
  vc->connect_req.data = vc;
  if (uv_tcp_connect(&vc->connect_req, &vc->tcp,
                     (const struct sockaddr *)&vc->ph->addr, vc_connected)) {
    vc->ph->st.connect_failures++;
    vc_close(vc);
  }
}

/* ---- phases ---------------------------------------------------------------------- */

static void phase_end_cb(uv_timer_t *t) {
  phase *ph = t->data;
  for (int i = 0; i < ph->clients; i++)
    vc_close(&ph->vc[i]);
  uv_close((uv_handle_t *)&ph->stop_timer, NULL);
}

static void phase_drain_check(uv_timer_t *t);

static void phase_stop_sending(uv_timer_t *t) {
  phase *ph = t->data;
  ph->sending = 0;
  ph->stop_ns = uv_hrtime();
  uv_timer_start(&ph->stop_timer, phase_drain_check, 10, 10);
}

/* Ends the drain early once every answer is in (or the drain time passed). */
static void phase_drain_check(uv_timer_t *t) {
  phase *ph = t->data;
  uint64_t outstanding = 0;
  for (int i = 0; i < ph->clients; i++)
    if (ph->vc[i].state != VC_CLOSED)
      outstanding += ph->vc[i].outstanding;
  double waited_s = (double)(uv_hrtime() - ph->stop_ns) / NS_PER_S;
  if (outstanding == 0 || waited_s >= ph->opt->drain_s) {
    uv_timer_stop(t);
    phase_end_cb(t);
  }
}

static int run_phase(phase *ph) {
  ph->vc = calloc((size_t)ph->clients, sizeof *ph->vc);
  if (!ph->vc)
    return st_error_set(ST_ENOMEM, "loadgen: out of memory");
  ph->sending = 1;
  ph->start_ns = uv_hrtime();
  uv_timer_init(ph->loop, &ph->stop_timer);
  ph->stop_timer.data = ph;
  uv_timer_start(&ph->stop_timer, phase_stop_sending,
                 (uint64_t)(ph->opt->duration_s * MS_PER_S), 0);
  for (int i = 0; i < ph->clients; i++) {
    vclient *vc = &ph->vc[i];
    vc->ph = ph;
    vc->id = i;
    st_framer_init(&vc->rx, ST_PROTO_MAX_MESSAGE_BYTES_CEILING);
    vc->rng = ph->opt->seed * 2654435761u + (uint64_t)i + 1;
    uv_tcp_init(ph->loop, &vc->tcp);
    uv_timer_init(ph->loop, &vc->timer);
    vc->tcp.data = vc->timer.data = vc;
    vc->handles_open = 2;
    /* --ramp spreads the connections evenly over its seconds. */
    uint64_t delay = ph->clients > 1
                         ? (uint64_t)(ph->opt->ramp_s * MS_PER_S * i /
                                      (ph->clients - 1))
                         : 0;
    uv_timer_start(&vc->timer, vc_start, delay, 0);
  }
  uv_run(ph->loop, UV_RUN_DEFAULT);
  for (int i = 0; i < ph->clients; i++) {
    vclient *vc = &ph->vc[i];
    st_framer_reset(&vc->rx);
    for (size_t k = 0; k < vc->mirror_count; k++)
      free(vc->mirror[k].w);
    free(vc->mirror);
  }
  free(ph->vc);
  ph->vc = NULL;
  return ST_OK;
}

/* ---- frames ---------------------------------------------------------------------- */

static int load_frames(const options *o, frame_set *fs) {
  st_video_in_options vo = {.input = o->input,
                            .rtsp_transport = "tcp",
                            .width = o->width,
                            .height = o->height,
                            .loops = 1,
                            .max_frames = o->frames,
                            .queue_frames = 4};
  st_video_in *v = NULL;
  int rc = st_video_in_open(&vo, &v);
  if (rc)
    return rc;
  st_video_info info;
  st_video_in_get_info(v, &info);
  fs->width = info.width;
  fs->height = info.height;
  fs->data = calloc((size_t)o->frames, sizeof *fs->data);
  fs->len = calloc((size_t)o->frames, sizeof *fs->len);
  st_jpeg *jpeg = NULL;
  if (!fs->data || !fs->len)
    rc = st_error_set(ST_ENOMEM, "loadgen: out of memory");
  if (!rc && o->encoding == ST_FRAME_JPEG)
    rc = st_jpeg_new(&jpeg);
  if (!rc)
    rc = st_video_in_start(v);
  size_t raw = (size_t)fs->width * fs->height * 3;
  while (!rc && fs->count < o->frames) {
    st_video_frame *f = NULL;
    rc = st_video_in_next(v, FRAME_WAIT_MS, &f);
    if (rc || !f)
      break;
    uint8_t **dst = &fs->data[fs->count];
    if (jpeg) {
      rc = st_jpeg_encode(jpeg, f->rgb, fs->width, fs->height, o->jpeg_quality,
                          dst, &fs->len[fs->count]);
    } else if ((*dst = malloc(raw))) {
      memcpy(*dst, f->rgb, raw);
      fs->len[fs->count] = raw;
    } else {
      rc = st_error_set(ST_ENOMEM, "loadgen: out of memory");
    }
    st_video_in_release(v, f);
    if (!rc)
      fs->count++;
  }
  st_jpeg_free(jpeg);
  st_video_in_free(v);
  if (!rc && fs->count == 0)
    rc = st_error_set(ST_EFORMAT, "%s: no frames decoded", o->input);
  double total = 0;
  for (int i = 0; i < fs->count; i++)
    total += (double)fs->len[i];
  fs->mean_bytes = fs->count ? total / fs->count : 0;
  return rc;
}

static void frames_free(frame_set *fs) {
  for (int i = 0; i < fs->count; i++)
    free(fs->data[i]);
  free(fs->data);
  free(fs->len);
}

/* ---- /metrics ---------------------------------------------------------------------- */

/* A plain blocking GET (the run is over; nothing else is going on). */
static char *scrape_metrics(const char *hostport) {
  char host[256];
  const char *colon = strrchr(hostport, ':');
  if (!colon || (size_t)(colon - hostport) >= sizeof host)
    return NULL;
  memcpy(host, hostport, (size_t)(colon - hostport));
  host[colon - hostport] = '\0';
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
  if (getaddrinfo(host, colon + 1, &hints, &ai))
    return NULL;
  int fd = socket(ai->ai_family, SOCK_STREAM, 0);
  struct timeval tv = {.tv_sec = HTTP_TIMEOUT_S};
  if (fd >= 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen)) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(ai);
  if (fd < 0)
    return NULL;
  char req[512];
  int n = snprintf(req, sizeof req,
                   "GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                   host);
  if (write(fd, req, (size_t)n) != n) {
    close(fd);
    return NULL;
  }
  char *buf = malloc(METRICS_MAX_BYTES + 1);
  size_t have = 0;
  ssize_t r;
  while (buf && have < METRICS_MAX_BYTES &&
         (r = read(fd, buf + have, METRICS_MAX_BYTES - have)) > 0)
    have += (size_t)r;
  close(fd);
  if (!buf)
    return NULL;
  buf[have] = '\0';
  char *body = strstr(buf, "\r\n\r\n");
  char *out = body ? strdup(body + 4) : NULL;
  free(buf);
  return out;
}

/* ---- report ---------------------------------------------------------------------- */

static json_t *phase_report(const phase *ph) {
  const stats *s = &ph->st;
  double secs = (double)(ph->stop_ns - ph->start_ns) / NS_PER_S;
  qsort(s->lat_ms, s->lat_count, sizeof *s->lat_ms, cmp_double);
  double p50 = percentile(s->lat_ms, s->lat_count, 50);
  double p90 = percentile(s->lat_ms, s->lat_count, 90);
  double p99 = percentile(s->lat_ms, s->lat_count, 99);
  double mean = 0;
  for (size_t i = 0; i < s->lat_count; i++)
    mean += s->lat_ms[i];
  mean = s->lat_count ? mean / (double)s->lat_count : NAN;
  double frames = (double)(s->frames_played ? s->frames_played : 1);
  const char *stage_names[5] = {"queue", "decode", "teacher", "distill",
                                "encode"};
  json_t *stages = json_object();
  for (int i = 0; i < 5; i++)
    json_object_set_new(stages, stage_names[i],
                        json_real(s->stage_count
                                      ? s->stage_sum[i] / (double)s->stage_count
                                      : 0.0));
  json_t *errors = json_object();
  for (int i = 0; i < s->error_kinds; i++)
    json_object_set_new(errors, s->error_codes[i],
                        json_integer((json_int_t)s->error_counts[i]));
  json_t *lat = json_pack("{s:f, s:f, s:f, s:f, s:f}", "p50", p50, "p90", p90,
                          "p99", p99, "mean", mean,
                          "max", s->lat_count ? s->lat_ms[s->lat_count - 1] : NAN);
  json_t *r = json_pack(
      "{s:i, s:f, s:I, s:I, s:I, s:f, s:f, s:o, s:o, s:I, s:I, s:f, s:f, s:f,"
      " s:f, s:I, s:I, s:I, s:f, s:o}",
      "clients", ph->clients, "seconds", secs, "frames_played",
      (json_int_t)s->frames_played, "sent", (json_int_t)s->sent, "answered",
      (json_int_t)s->answered, "answers_per_s", s->answered / secs,
      "sent_per_s", s->sent / secs, "latency_ms", lat, "server_stage_ms_mean",
      stages, "bytes_up", (json_int_t)s->bytes_up, "bytes_down",
      (json_int_t)s->bytes_down, "bytes_up_per_frame", s->bytes_up / frames,
      "bytes_down_per_frame", s->bytes_down / frames, "bytes_up_per_s",
      s->bytes_up / secs, "bytes_down_per_s", s->bytes_down / secs,
      "dropped", (json_int_t)(s->sent - s->answered), "stale_updates",
      (json_int_t)s->stale, "connect_failures",
      (json_int_t)s->connect_failures, "mean_stride",
      s->stride_count ? s->stride_sum / (double)s->stride_count : 0.0,
      "errors", errors);
  /* The student download at the handshake, apart: naive offloading (the
   * paper's baseline) never needs it. */
  if (r)
    json_object_set_new(r, "bytes_down_model",
                        json_integer((json_int_t)s->bytes_down_model));
  return r;
}

static void print_phase(const json_t *r) {
  json_t *lat = json_object_get(r, "latency_ms");
  json_t *st = json_object_get(r, "server_stage_ms_mean");
  printf("%7lld %9.1f %9.1f %8.2f %8.2f %8.2f %9.2f %9.2f %12.0f %12.0f %7lld %6lld\n",
         (long long)json_integer_value(json_object_get(r, "clients")),
         json_real_value(json_object_get(r, "sent_per_s")),
         json_real_value(json_object_get(r, "answers_per_s")),
         json_real_value(json_object_get(lat, "p50")),
         json_real_value(json_object_get(lat, "p90")),
         json_real_value(json_object_get(lat, "p99")),
         json_real_value(json_object_get(st, "teacher")),
         json_real_value(json_object_get(st, "distill")),
         json_real_value(json_object_get(r, "bytes_up_per_s")),
         json_real_value(json_object_get(r, "bytes_down_per_s")),
         (long long)json_integer_value(json_object_get(r, "dropped")),
         (long long)json_object_size(json_object_get(r, "errors")));
  json_t *errors = json_object_get(r, "errors");
  const char *code;
  json_t *n;
  json_object_foreach(errors, code, n)
      printf("        error %s: %lld\n", code, (long long)json_integer_value(n));
}

/* ---- command line ---------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: shadowtutor-loadgen --server HOST:PORT --input VIDEO\n"
          "  [--mode shadowtutor|offload] [--clients N] [--duration S] [--json FILE]\n"
          "  [--fps F (0: closed loop)] [--stride-policy server|fixed:K]\n"
          "  [--encoding jpeg|raw] [--jpeg-quality Q] [--size WxH] [--frames N]\n"
          "  [--ramp S] [--arrivals constant|poisson] [--concurrency-sweep 1,2,4]\n"
          "  [--token T] [--metrics HOST:PORT] [--seed S] [--drain S]\n");
}

static int parse_double(const char *s, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= lo && v <= hi))
    return -1;
  *out = v;
  return 0;
}

static int parse_int(const char *s, long lo, long hi, int *out) {
  double v;
  if (parse_double(s, (double)lo, (double)hi, &v) || v != floor(v))
    return -1;
  *out = (int)v;
  return 0;
}

static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->duration_s = DEFAULT_DURATION_S;
  o->drain_s = DEFAULT_DRAIN_S;
  o->fps = DEFAULT_FPS;
  o->frames = DEFAULT_FRAMES;
  o->encoding = ST_FRAME_JPEG;
  o->jpeg_quality = ST_JPEG_DEFAULT_QUALITY;
  o->sweep[0] = DEFAULT_CLIENTS;
  o->sweep_count = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      exit(0);
    }
    if (!v) {
      fprintf(stderr, "shadowtutor-loadgen: %s needs a value\n", a);
      return -1;
    }
    i++;
    if (strcmp(a, "--server") == 0) {
      o->server = v;
    } else if (strcmp(a, "--input") == 0) {
      o->input = v;
    } else if (strcmp(a, "--json") == 0) {
      o->json = v;
    } else if (strcmp(a, "--token") == 0) {
      o->token = v;
    } else if (strcmp(a, "--metrics") == 0) {
      o->metrics = v;
    } else if (strcmp(a, "--mode") == 0) {
      if (strcmp(v, "shadowtutor") == 0)
        o->mode = MODE_SHADOWTUTOR;
      else if (strcmp(v, "offload") == 0)
        o->mode = MODE_OFFLOAD;
      else
        bad = 1;
    } else if (strcmp(a, "--clients") == 0) {
      bad = parse_int(v, 1, MAX_CLIENTS, &o->sweep[0]);
      o->sweep_count = 1;
    } else if (strcmp(a, "--concurrency-sweep") == 0) {
      char tmp[512];
      snprintf(tmp, sizeof tmp, "%s", v);
      o->sweep_count = 0;
      for (char *tok = strtok(tmp, ","); tok && !bad; tok = strtok(NULL, ",")) {
        if (o->sweep_count == MAX_SWEEP)
          bad = 1;
        else
          bad = parse_int(tok, 1, MAX_CLIENTS, &o->sweep[o->sweep_count++]);
      }
      bad |= o->sweep_count == 0;
    } else if (strcmp(a, "--duration") == 0) {
      bad = parse_double(v, 0.1, MAX_DURATION_S, &o->duration_s);
    } else if (strcmp(a, "--drain") == 0) {
      bad = parse_double(v, 0, 600, &o->drain_s);
    } else if (strcmp(a, "--ramp") == 0) {
      bad = parse_double(v, 0, MAX_DURATION_S, &o->ramp_s);
    } else if (strcmp(a, "--fps") == 0) {
      bad = parse_double(v, 0, 1000, &o->fps);
    } else if (strcmp(a, "--stride-policy") == 0) {
      if (strcmp(v, "server") == 0)
        o->fixed_stride = 0;
      else if (strncmp(v, "fixed:", 6) == 0)
        bad = parse_int(v + 6, 1, 1000000, &o->fixed_stride);
      else
        bad = 1;
    } else if (strcmp(a, "--encoding") == 0) {
      bad = st_frame_encoding_from_name(v, &o->encoding) != 0;
    } else if (strcmp(a, "--jpeg-quality") == 0) {
      bad = parse_int(v, 1, 100, &o->jpeg_quality);
    } else if (strcmp(a, "--size") == 0) {
      bad = sscanf(v, "%dx%d", &o->width, &o->height) != 2 || o->width < 1 ||
            o->height < 1 || o->width > ST_PROTO_MAX_SIDE ||
            o->height > ST_PROTO_MAX_SIDE;
    } else if (strcmp(a, "--frames") == 0) {
      bad = parse_int(v, 1, MAX_FRAMES, &o->frames);
    } else if (strcmp(a, "--arrivals") == 0) {
      if (strcmp(v, "poisson") == 0)
        o->poisson = 1;
      else if (strcmp(v, "constant") != 0)
        bad = 1;
    } else if (strcmp(a, "--seed") == 0) {
      int seed;
      bad = parse_int(v, 0, 2147483647, &seed);
      o->seed = (uint64_t)seed;
    } else {
      fprintf(stderr, "shadowtutor-loadgen: unknown option %s\n", a);
      return -1;
    }
    if (bad) {
      fprintf(stderr, "shadowtutor-loadgen: bad value for %s: '%s'\n", a, v);
      return -1;
    }
  }
  if (!o->server || !o->input) {
    fprintf(stderr, "shadowtutor-loadgen: --server and --input are required\n");
    return -1;
  }
  const char *colon = strrchr(o->server, ':');
  if (!colon || colon == o->server ||
      (size_t)(colon - o->server) >= sizeof o->host ||
      parse_int(colon + 1, 1, 65535, &o->port)) {
    fprintf(stderr, "shadowtutor-loadgen: --server must be HOST:PORT\n");
    return -1;
  }
  size_t hl = (size_t)(colon - o->server);
  const char *h = o->server;
  if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') {
    h++;
    hl -= 2;
  }
  memcpy(o->host, h, hl);
  o->host[hl] = '\0';
  return 0;
}

static int resolve(const options *o, struct sockaddr_storage *out) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
  char port[16];
  snprintf(port, sizeof port, "%d", o->port);
  int rc = getaddrinfo(o->host, port, &hints, &ai);
  if (rc)
    return st_error_set(ST_ENOENT, "%s: %s", o->host, gai_strerror(rc));
  memcpy(out, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  return ST_OK;
}

int main(int argc, char **argv) {
  static options o;
  if (parse_args(argc, argv, &o)) {
    usage(stderr);
    return EXIT_USAGE;
  }
  signal(SIGPIPE, SIG_IGN);
  struct sockaddr_storage addr;
  if (resolve(&o, &addr)) {
    fprintf(stderr, "shadowtutor-loadgen: %s\n", st_error_detail());
    return EXIT_USAGE;
  }
  frame_set fs = {0};
  if (load_frames(&o, &fs)) {
    fprintf(stderr, "shadowtutor-loadgen: %s\n", st_error_detail());
    frames_free(&fs);
    return EXIT_USAGE;
  }
  printf("loadgen: %s, %d frames %dx%d %s (mean %.0f bytes), mode %s, fps %g%s, "
         "stride %s, %.1f s per phase\n",
         o.input, fs.count, fs.width, fs.height,
         st_frame_encoding_name(o.encoding), fs.mean_bytes,
         o.mode == MODE_OFFLOAD ? "offload" : "shadowtutor", o.fps,
         o.fps <= 0 ? " (closed loop)" : (o.poisson ? " poisson" : ""),
         o.fixed_stride ? "fixed" : "server", o.duration_s);
  printf("%7s %9s %9s %8s %8s %8s %9s %9s %12s %12s %7s %6s\n", "clients",
         "sent/s", "answers/s", "p50_ms", "p90_ms", "p99_ms", "teach_ms",
         "distil_ms", "up_B/s", "down_B/s", "dropped", "errors");
  json_t *phases = json_array();
  uv_loop_t loop;
  uv_loop_init(&loop);
  for (int i = 0; i < o.sweep_count; i++) {
    phase ph = {.loop = &loop, .opt = &o, .frames = &fs, .addr = addr,
                .clients = o.sweep[i]};
    run_phase(&ph);
    json_t *r = phase_report(&ph);
    print_phase(r);
    json_array_append_new(phases, r);
    free(ph.st.lat_ms);
  }
  uv_loop_close(&loop);
  json_t *root = json_pack(
      "{s:s, s:s, s:s, s:s, s:f, s:b, s:i, s:i, s:i, s:f, s:i, s:o}",
      "server", o.server, "input", o.input, "mode",
      o.mode == MODE_OFFLOAD ? "offload" : "shadowtutor", "encoding",
      st_frame_encoding_name(o.encoding), "fps", o.fps, "poisson", o.poisson,
      "width", fs.width, "height", fs.height, "frames", fs.count,
      "frame_bytes_mean", fs.mean_bytes, "fixed_stride", o.fixed_stride,
      "phases", phases);
  if (o.metrics) {
    char *text = scrape_metrics(o.metrics);
    json_object_set_new(root, "server_metrics", text ? json_string(text) : json_null());
    if (!text)
      fprintf(stderr, "shadowtutor-loadgen: could not scrape %s/metrics\n",
              o.metrics);
    free(text);
  }
  int rc = 0;
  if (o.json && json_dump_file(root, o.json, JSON_INDENT(2))) {
    fprintf(stderr, "shadowtutor-loadgen: cannot write %s\n", o.json);
    rc = 1;
  }
  json_decref(root);
  frames_free(&fs);
  return rc;
}
