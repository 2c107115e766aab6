#include "run.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libavutil/mem.h>
#include <libavutil/sha.h>

#include "base/error.h"
#include "base/file.h"
#include "base/log.h"
#include "models/config.h"
#include "models/safetensors.h"
#include "models/student.h"
#include "net.h"
#include "schedule.h"
#include "video_in.h"
#include "video_out.h"

#define SHA256_BITS 256
#define SHA256_BYTES 32
#define NS_PER_MS 1000000LL
#define NS_PER_S 1000000000LL
#define MS_PER_S 1000.0
#define BITS_PER_BYTE 8.0
#define BITS_PER_KBIT 1000.0
#define PROGRESS_LINE_BYTES 160
#define STATS_LINE_BYTES 2048
#define HOST_NAME_BYTES 256
/* Frame-to-frame times are kept as a histogram of 0.1 ms buckets up to
 * 5 s (longer ones count in the last bucket), for their percentiles. */
#define FRAME_HIST_BUCKET_NS 100000LL
#define FRAME_HIST_BUCKETS 50000
#define PERCENTILE_MEDIAN 0.5
#define PERCENTILE_TAIL 0.99

static volatile sig_atomic_t stop_requested = 0;

void st_client_request_stop(void) { stop_requested = 1; }

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* Everything one run holds; released by client_free. */
typedef struct client {
  const st_client_config *cfg;
  st_backend *be;
  st_student *student;
  st_student_config scfg;
  st_tensor labels; /* U8 [H,W], host */
  st_video_in *in;
  st_video_info info;
  st_video_out *out;
  st_net *net;
  FILE *stats;
  int progress; /* draw the progress line */
  int have_weights;
  char weights_hash[SHA256_BYTES * 2 + 1];
  /* Inference state. */
  st_schedule sched;
  int online;
  uint64_t version;
  int64_t processed; /* frames the student ran on */
  int64_t updates_applied;
  int64_t models_applied;
  double last_metric; /* the last update's metric; NAN: none */
  int32_t last_steps;
  int64_t t0_ns;
  /* Statistics intervals. */
  int64_t last_stats_ns, last_progress_ns;
  int64_t stats_frames; /* processed at the last line */
  uint64_t stats_up, stats_down;
  double kbps_up, kbps_down; /* of the last interval */
  int64_t progress_frames;
  int64_t progress_ns;
  int64_t student_ns;           /* time in the student, all frames */
  uint32_t *frame_hist;         /* frame-to-frame times (FRAME_HIST_*) */
  int64_t last_done_ns;         /* when the previous frame was done */
  int64_t stats_student_ns;     /* at the last line */
  double fps_now;
} client;

/* The one line a failure gets. */
static int fail(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int fail(int status, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "shadowtutor-client: %s\n", line);
  return status;
}

/* ---- start-up ------------------------------------------------------------ */

static void sha256_hex(const uint8_t *buf, size_t len, char *hex) {
  uint8_t digest[SHA256_BYTES];
  struct AVSHA *sha = av_sha_alloc();
  if (!sha) {
    hex[0] = '\0';
    return;
  }
  av_sha_init(sha, SHA256_BITS);
  av_sha_update(sha, buf, len);
  av_sha_final(sha, digest);
  av_free(sha);
  for (int i = 0; i < SHA256_BYTES; i++)
    snprintf(hex + 2 * i, 3, "%02x", digest[i]);
}

/* Loads the base weights and hashes the very bytes that were loaded. */
static int load_weights(client *cl, const char *path) {
  uint8_t *buf = NULL;
  size_t len = 0;
  int rc =
      st_read_file(path, ST_CLIENT_MAX_WEIGHTS_BYTES, ST_ERANGE, &buf, &len);
  if (rc)
    return rc;
  sha256_hex(buf, len, cl->weights_hash);
  st_safetensors *file = NULL;
  rc = st_safetensors_parse(buf, len, path, &file);
  free(buf);
  if (!rc)
    rc = st_student_load(cl->student, file, path);
  st_safetensors_free(file);
  if (!rc && !cl->weights_hash[0])
    rc = st_error_set(ST_ENOMEM, "%s: cannot hash it", path);
  return rc;
}

static int open_model(client *cl) {
  const st_client_config *c = cl->cfg;
  int rc = st_student_config_load(c->student, &cl->scfg);
  if (rc)
    return fail(ST_CLIENT_EXIT_USAGE, "%s", st_error_detail());
  st_backend_options bo = {.threads = (int)c->threads,
                           .device = (int)c->device,
                           .conv_exhaustive =
                               !strcmp(c->conv_search, "exhaustive"),
                           .graphs_off = !c->cuda_graphs};
  if ((rc = st_backend_kind_from_name(c->backend, &bo.kind)) ||
      (rc = st_backend_new(&bo, &cl->be)) ||
      (rc = st_student_new_from_config(cl->be, &cl->scfg, &cl->student)))
    return fail(ST_CLIENT_EXIT_FAILURE, "student: %s", st_error_detail());
  if (c->weights[0]) {
    if (load_weights(cl, c->weights))
      return fail(ST_CLIENT_EXIT_FAILURE, "weights: %s", st_error_detail());
    cl->have_weights = 1;
  }
  return ST_CLIENT_EXIT_OK;
}

static int open_input(client *cl) {
  const st_client_config *c = cl->cfg;
  st_video_in_options o = {
      .input = c->input,
      .format = c->input_format[0] ? c->input_format : NULL,
      .rtsp_transport = c->rtsp_transport,
      .loops = c->loop,
      .realtime = c->realtime,
      .max_frames = c->max_frames,
      .decode_threads = (int)c->decode_threads,
      .queue_frames = (int)c->queue_frames,
      .nice = (int)c->helper_nice,
  };
  if (c->size[0] && st_client_parse_size(c->size, &o.width, &o.height))
    return fail(ST_CLIENT_EXIT_USAGE, "%s", st_error_detail());
  if (st_video_in_open(&o, &cl->in))
    return fail(ST_CLIENT_EXIT_FAILURE, "%s", st_error_detail());
  st_video_in_get_info(cl->in, &cl->info);
  const int64_t shape[2] = {cl->info.height, cl->info.width};
  if (st_tensor_alloc(NULL, &cl->labels, ST_U8, 2, shape))
    return fail(ST_CLIENT_EXIT_FAILURE, "%s", st_error_detail());
  st_log(ST_LOG_INFO,
         "event=input input=\"%s\" format=%s codec=%s size=%dx%d "
         "source=%dx%d fps=%.3f frames=%lld live=%d",
         c->input, cl->info.format, cl->info.codec, cl->info.width,
         cl->info.height, cl->info.src_width, cl->info.src_height,
         (double)cl->info.fps_num / cl->info.fps_den,
         (long long)cl->info.frames_total, cl->info.live);
  return ST_CLIENT_EXIT_OK;
}

static int open_outputs(client *cl) {
  const st_client_config *c = cl->cfg;
  if (c->stats[0] && !(cl->stats = fopen(c->stats, "w")))
    return fail(ST_CLIENT_EXIT_FAILURE, "cannot create stats file '%s': %s",
                c->stats, strerror(errno));
  if (!c->output[0] && !c->masks[0])
    return ST_CLIENT_EXIT_OK;
  st_video_out_options o = {
      .path = c->output[0] ? c->output : NULL,
      .codec = c->output_codec,
      .fps_num = cl->info.fps_num,
      .fps_den = cl->info.fps_den,
      .width = cl->info.width,
      .height = cl->info.height,
      .alpha = c->overlay_alpha,
      .masks_dir = c->masks[0] ? c->masks : NULL,
      .queue_frames = (int)c->queue_frames,
      .nice = (int)c->helper_nice,
  };
  if (st_video_out_open(&o, &cl->out))
    return fail(ST_CLIENT_EXIT_FAILURE, "%s", st_error_detail());
  if (o.path)
    st_log(ST_LOG_INFO, "event=output path=\"%s\" codec=%s", o.path,
           st_video_out_codec(cl->out));
  return ST_CLIENT_EXIT_OK;
}

/* ---- weights and events -------------------------------------------------- */

static int apply_weights(client *cl, const st_net_event *e) {
  for (size_t k = 0; k < e->count; k++) {
    st_tensor *t = st_student_tensor(cl->student, e->index[k]);
    int rc = st_tensor_upload(cl->be, t, e->values[k], st_tensor_nbytes(t));
    if (rc)
      return rc;
  }
  cl->version = e->version;
  return ST_OK;
}

static void write_update_line(client *cl, const st_net_event *e, int applied);

/* Applies one network event to the inference state. */
static int handle_event(client *cl, const st_net_event *e) {
  st_schedule *s = &cl->sched;
  switch (e->kind) {
  case ST_NET_ONLINE:
    cl->online = 1;
    cl->version = e->version;
    st_schedule_on_online(s, e->stride, e->min_stride, !e->first);
    break;
  case ST_NET_OFFLINE:
    cl->online = 0;
    st_schedule_on_offline(s);
    break;
  case ST_NET_WEIGHTS: {
    int rc = apply_weights(cl, e);
    if (rc)
      return rc;
    if (e->is_model) {
      cl->models_applied++;
      cl->have_weights = 1;
      break;
    }
    cl->updates_applied++;
    cl->last_metric = e->metric;
    cl->last_steps = e->steps;
    st_schedule_on_update(s, e->seq, e->stride);
    write_update_line(cl, e, 1);
    st_log(ST_LOG_DEBUG,
           "event=update_applied seq=%llu frame=%lld version=%llu "
           "full=%d tensors=%zu stride=%d metric=%.4f delay=%lld",
           (unsigned long long)e->seq, (long long)s->frame,
           (unsigned long long)e->version, e->full, e->count, e->stride,
           e->metric, (long long)s->last_update_delay);
    break;
  }
  case ST_NET_UPDATE_IGNORED:
    cl->last_metric = e->metric;
    st_schedule_on_update(s, e->seq, e->stride);
    write_update_line(cl, e, 0);
    st_log(ST_LOG_DEBUG,
           "event=update_not_applied seq=%llu frame=%lld stride=%d",
           (unsigned long long)e->seq, (long long)s->frame, e->stride);
    break;
  case ST_NET_KEY_LOST:
    st_schedule_on_key_lost(s, e->seq);
    break;
  case ST_NET_FAILED:
    break;
  }
  return ST_OK;
}

/* Applies every event waiting (never blocks). */
static int drain_events(client *cl) {
  if (!cl->net)
    return ST_OK;
  st_net_event *e;
  while ((e = st_net_next_event(cl->net, 0))) {
    int rc = handle_event(cl, e);
    st_net_event_free(e);
    if (rc)
      return rc;
  }
  return ST_OK;
}

/* ---- statistics ---------------------------------------------------------- */

/* The p-th quantile of the frame-to-frame times, ms (-1: none). */
static double frame_ms_quantile(const client *cl, double p) {
  if (!cl->frame_hist)
    return -1;
  uint64_t total = 0;
  for (int b = 0; b < FRAME_HIST_BUCKETS; b++)
    total += cl->frame_hist[b];
  if (!total)
    return -1;
  uint64_t rank = (uint64_t)ceil(p * (double)total), seen = 0;
  for (int b = 0; b < FRAME_HIST_BUCKETS; b++) {
    seen += cl->frame_hist[b];
    if (seen >= rank && seen > 0)
      return ((double)b + 0.5) * FRAME_HIST_BUCKET_NS / NS_PER_MS;
  }
  return -1;
}

static double seconds_since(int64_t t0, int64_t t1) {
  return (double)(t1 - t0) / (double)NS_PER_S;
}

/* Appends `"key": value` pairs. */
#define JSON_ADD(fmt_, ...)                                                    \
  do {                                                                         \
    if (off < sizeof line)                                                     \
      off +=                                                                   \
          (size_t)snprintf(line + off, sizeof line - off, fmt_, __VA_ARGS__);  \
  } while (0)

static void write_stats(client *cl, int64_t now, int summary) {
  st_net_counters nc = {0};
  if (cl->net)
    st_net_get_counters(cl->net, &nc);
  st_video_in_counters vc;
  st_video_in_get_counters(cl->in, &vc);
  int64_t out_frames = 0, out_masks = 0;
  if (cl->out)
    st_video_out_get_counters(cl->out, &out_frames, &out_masks);
  double t = seconds_since(cl->t0_ns, now);
  double span = summary ? t : seconds_since(cl->last_stats_ns, now);
  int64_t frames = summary ? cl->processed : cl->processed - cl->stats_frames;
  uint64_t up = summary ? nc.bytes_up : nc.bytes_up - cl->stats_up;
  uint64_t down = summary ? nc.bytes_down : nc.bytes_down - cl->stats_down;
  double fps = span > 0 ? (double)frames / span : 0.0;
  int64_t student = summary ? cl->student_ns
                            : cl->student_ns - cl->stats_student_ns;
  double student_ms =
      frames > 0 ? (double)student / (double)frames / NS_PER_MS : 0.0;
  double kup = span > 0 ? (double)up * BITS_PER_BYTE / BITS_PER_KBIT / span : 0;
  double kdown =
      span > 0 ? (double)down * BITS_PER_BYTE / BITS_PER_KBIT / span : 0;
  if (!summary) {
    cl->kbps_up = kup;
    cl->kbps_down = kdown;
    cl->fps_now = fps;
    cl->last_stats_ns = now;
    cl->stats_frames = cl->processed;
    cl->stats_student_ns = cl->student_ns;
    cl->stats_up = nc.bytes_up;
    cl->stats_down = nc.bytes_down;
  }
  if (!cl->stats)
    return;
  const st_schedule *s = &cl->sched;
  char line[STATS_LINE_BYTES];
  size_t off = 0;
  JSON_ADD("{\"type\":\"%s\",\"t\":%.3f,\"frames\":%lld,\"fps\":%.3f",
           summary ? "summary" : "interval", t, (long long)cl->processed, fps);
  JSON_ADD(",\"interval_frames\":%lld,\"student_ms\":%.3f", (long long)frames,
           student_ms);
  JSON_ADD(",\"keyframes\":%lld,\"stride\":%d,\"version\":%llu",
           (long long)s->keyframes, s->stride, (unsigned long long)cl->version);
  JSON_ADD(",\"bytes_up\":%llu,\"bytes_down\":%llu,\"kbps_up\":%.3f,"
           "\"kbps_down\":%.3f",
           (unsigned long long)nc.bytes_up, (unsigned long long)nc.bytes_down,
           kup, kdown);
  if (s->last_update_delay >= 0)
    JSON_ADD(",\"update_delay_frames\":%lld", (long long)s->last_update_delay);
  else
    JSON_ADD("%s", ",\"update_delay_frames\":null");
  if (isnan(cl->last_metric))
    JSON_ADD("%s", ",\"metric\":null");
  else
    JSON_ADD(",\"metric\":%.6f", cl->last_metric);
  JSON_ADD(",\"frames_past_due\":%lld,\"waits\":%lld,\"wait_timeouts\":%lld",
           (long long)s->frames_past_due, (long long)s->waits,
           (long long)s->wait_timeouts);
  JSON_ADD(",\"reconnects\":%llu,\"resumed\":%llu,\"online\":%s",
           (unsigned long long)nc.reconnects, (unsigned long long)nc.resumed,
           cl->online ? "true" : "false");
  JSON_ADD(",\"updates_applied\":%lld,\"updates_ignored\":%llu,"
           "\"keyframes_lost\":%lld",
           (long long)cl->updates_applied,
           (unsigned long long)nc.updates_ignored,
           (long long)s->keyframes_lost);
  JSON_ADD(",\"malformed\":%llu,\"server_errors\":%llu",
           (unsigned long long)nc.malformed,
           (unsigned long long)nc.server_errors);
  JSON_ADD(",\"decoded\":%lld,\"dropped\":%lld,\"decode_errors\":%lld,"
           "\"corrupt_frames\":%lld",
           (long long)vc.decoded, (long long)vc.dropped,
           (long long)vc.decode_errors, (long long)vc.corrupt);
  if (summary) {
    JSON_ADD(
        ",\"seconds\":%.3f,\"frames_total\":%lld,\"models_adopted\":%llu,"
        "\"models_ignored\":%llu,\"sessions\":%llu,\"keyframes_sent\":%llu",
        t, (long long)cl->info.frames_total,
        (unsigned long long)nc.models_adopted,
        (unsigned long long)nc.models_ignored, (unsigned long long)nc.sessions,
        (unsigned long long)nc.keyframes_sent);
    JSON_ADD(",\"frame_ms_p50\":%.2f,\"frame_ms_p99\":%.2f",
             frame_ms_quantile(cl, PERCENTILE_MEDIAN),
             frame_ms_quantile(cl, PERCENTILE_TAIL));
    JSON_ADD(",\"overlay_frames\":%lld,\"masks_written\":%lld,"
             "\"width\":%d,\"height\":%d",
             (long long)out_frames, (long long)out_masks, cl->info.width,
             cl->info.height);
  }
  JSON_ADD("%s", "}\n");
  fputs(line, cl->stats);
  fflush(cl->stats);
}

/* One "update" line per answered key frame: where it landed, what it
 * carried and the wire totals at that moment (bench/eval.sh plots them). */
static void write_update_line(client *cl, const st_net_event *e,
                              int applied) {
  if (!cl->stats)
    return;
  st_net_counters nc = {0};
  st_net_get_counters(cl->net, &nc);
  const st_schedule *s = &cl->sched;
  char line[STATS_LINE_BYTES];
  size_t off = 0;
  JSON_ADD("{\"type\":\"update\",\"t\":%.3f,\"frame\":%lld,\"seq\":%llu",
           seconds_since(cl->t0_ns, now_ns()), (long long)s->frame,
           (unsigned long long)e->seq);
  JSON_ADD(",\"applied\":%s,\"full\":%s,\"version\":%llu,\"stride\":%d",
           applied ? "true" : "false", e->full ? "true" : "false",
           (unsigned long long)e->version, e->stride);
  JSON_ADD(",\"metric\":%.6f,\"steps\":%d,\"tensors\":%zu,\"bytes\":%zu",
           e->metric, e->steps, e->count, e->bytes);
  JSON_ADD(",\"delay_frames\":%lld,\"bytes_up\":%llu,\"bytes_down\":%llu}\n",
           (long long)s->last_update_delay, (unsigned long long)nc.bytes_up,
           (unsigned long long)nc.bytes_down);
  fputs(line, cl->stats);
}

static void draw_progress(client *cl, int64_t now, int final) {
  if (!cl->progress)
    return;
  if (!final && now - cl->last_progress_ns < ST_CLIENT_PROGRESS_MS * NS_PER_MS)
    return;
  double span = seconds_since(cl->progress_ns, now);
  if (span > 0 && !final) {
    cl->fps_now = (double)(cl->processed - cl->progress_frames) / span;
    cl->progress_frames = cl->processed;
    cl->progress_ns = now;
  }
  cl->last_progress_ns = now;
  char total[32] = "?";
  if (cl->info.frames_total >= 0)
    snprintf(total, sizeof total, "%lld", (long long)cl->info.frames_total);
  char line[PROGRESS_LINE_BYTES];
  snprintf(line, sizeof line,
           "frame %lld/%s  %5.1f fps  stride %d  v%llu  up %.1f kbit/s  "
           "down %.1f kbit/s  %s",
           (long long)cl->processed, total, cl->fps_now, cl->sched.stride,
           (unsigned long long)cl->version, cl->kbps_up, cl->kbps_down,
           !cl->net     ? "no server"
           : cl->online ? "online"
                        : "offline");
  /* \r and clear-to-end-of-line: the line is redrawn in place. */
  printf("\r%s\x1b[K%s", line, final ? "\n" : "");
  fflush(stdout);
}

static void tick(client *cl) {
  int64_t now = now_ns();
  if (now - cl->last_stats_ns >=
      (int64_t)cl->cfg->stats_interval_ms * NS_PER_MS)
    write_stats(cl, now, 0);
  draw_progress(cl, now, 0);
}

/* Plans the student's buffers and builds its primitives at the frame size
 * before the first frame (the first pass at a size costs several passes),
 * so the first key frame is not late and the frame rate is steady from the
 * start. The weights do not matter for that. */
static int warm_up(client *cl) {
  int64_t t0 = now_ns();
  size_t bytes = (size_t)cl->info.width * (size_t)cl->info.height * 3;
  uint8_t *zero = calloc(1, bytes);
  if (!zero)
    return fail(ST_CLIENT_EXIT_FAILURE, "out of memory for a frame");
  const int64_t shape[3] = {cl->info.height, cl->info.width, 3};
  st_tensor image = st_tensor_view(zero, ST_U8, 3, shape);
  int rc = st_student_predict(cl->student, &image, &cl->labels);
  free(zero);
  if (rc)
    return fail(ST_CLIENT_EXIT_FAILURE, "student: %s", st_error_detail());
  const char *isa = st_backend_cpu_isa(cl->be);
  st_log(ST_LOG_INFO, "event=warm_up backend=%s%s%s ms=%.1f",
         st_backend_name(cl->be), isa ? " cpu_isa=" : "", isa ? isa : "",
         (double)(now_ns() - t0) / NS_PER_MS);
  return ST_CLIENT_EXIT_OK;
}

/* ---- the network --------------------------------------------------------- */

static int start_network(client *cl) {
  const st_client_config *c = cl->cfg;
  st_net_options o;
  memset(&o, 0, sizeof o);
  if (st_client_parse_host_port(c->server, o.host, sizeof o.host, &o.port))
    return fail(ST_CLIENT_EXIT_USAGE, "server: %s", st_error_detail());
  if (c->client_id[0]) {
    snprintf(o.client_id, sizeof o.client_id, "%.*s", ST_PROTO_CLIENT_ID_BYTES,
             c->client_id);
  } else {
    char host[HOST_NAME_BYTES] = "";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0])
      snprintf(host, sizeof host, "shadowtutor-client");
    snprintf(o.client_id, sizeof o.client_id, "%.*s", ST_PROTO_CLIENT_ID_BYTES,
             host);
  }
  snprintf(o.token, sizeof o.token, "%.*s", ST_PROTO_TOKEN_BYTES, c->token);
  if (cl->have_weights)
    snprintf(o.student_hash, sizeof o.student_hash, "%s", cl->weights_hash);
  o.width = (uint32_t)cl->info.width;
  o.height = (uint32_t)cl->info.height;
  st_frame_encoding_from_name(c->keyframe_encoding, &o.keyframe_encoding);
  o.jpeg_quality = (int)c->jpeg_quality;
  o.encoder_nice = (int)c->helper_nice;
  o.connect_timeout_ms = c->connect_timeout_ms;
  o.handshake_timeout_ms = c->handshake_timeout_ms;
  o.reconnect_initial_ms = c->reconnect_initial_ms;
  o.reconnect_max_ms = c->reconnect_max_ms;
  o.reconnect_jitter = c->reconnect_jitter;
  o.ping_interval_ms = c->ping_interval_ms;
  o.server_timeout_ms = c->server_timeout_ms;
  o.max_message_bytes = (uint32_t)c->max_message_bytes;
  o.seed = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);
  size_t count = st_student_tensor_count(cl->student);
  o.tensor_count = count;
  st_net_tensor_desc *descs = calloc(count ? count : 1, sizeof *descs);
  float **weights =
      cl->have_weights ? calloc(count ? count : 1, sizeof *weights) : NULL;
  int rc = descs && (!cl->have_weights || weights)
               ? ST_OK
               : st_error_set(ST_ENOMEM, "out of memory");
  for (size_t i = 0; !rc && i < count; i++) {
    const st_tensor *t = st_student_tensor(cl->student, i);
    snprintf(descs[i].name, sizeof descs[i].name, "%s",
             st_student_tensor_name(cl->student, i));
    descs[i].ndim = t->ndim;
    for (int d = 0; d < t->ndim && d < ST_PROTO_MAX_NDIM; d++)
      descs[i].shape[d] = t->shape[d];
    descs[i].numel = (size_t)st_tensor_numel(t);
    if (weights) {
      size_t bytes = st_tensor_nbytes(t);
      weights[i] = malloc(bytes ? bytes : 1);
      rc = weights[i] ? st_tensor_download(cl->be, t, weights[i], bytes)
                      : st_error_set(ST_ENOMEM, "out of memory");
    }
  }
  o.tensors = descs;
  o.weights = (const float *const *)weights;
  if (!rc)
    rc = st_net_new(&o, &cl->net);
  if (weights)
    for (size_t i = 0; i < count; i++)
      free(weights[i]);
  free(weights);
  free(descs);
  if (rc)
    return fail(ST_CLIENT_EXIT_FAILURE, "network: %s", st_error_detail());
  /* The first session must come up before the first frame: it is a key
   * frame, and a blank device has no weights before it. */
  for (;;) {
    st_net_event *e = st_net_next_event(cl->net, ST_CLIENT_WAIT_SLICE_MS);
    if (stop_requested) {
      st_net_event_free(e);
      return fail(ST_CLIENT_EXIT_OK, "stopped before the server answered");
    }
    if (!e)
      continue;
    if (e->kind == ST_NET_FAILED) {
      int status = fail(ST_CLIENT_EXIT_FAILURE, "%s", e->reason);
      st_net_event_free(e);
      return status;
    }
    rc = handle_event(cl, e);
    int up = e->kind == ST_NET_ONLINE;
    st_net_event_free(e);
    if (rc)
      return fail(ST_CLIENT_EXIT_FAILURE, "student: %s", st_error_detail());
    if (up)
      return ST_CLIENT_EXIT_OK;
  }
}

/* ---- the frame loop ------------------------------------------------------ */

/* Waits for the overdue update (block policy), up to wait_timeout_ms. */
static int wait_for_update(client *cl) {
  st_schedule *s = &cl->sched;
  s->waits++;
  int64_t deadline = now_ns() + cl->cfg->wait_timeout_ms * NS_PER_MS;
  while (st_schedule_decide(s, cl->online) == ST_SCHED_WAIT) {
    if (stop_requested)
      return ST_OK;
    if (now_ns() >= deadline) {
      st_schedule_give_up(s);
      st_log(ST_LOG_WARN, "event=wait_timeout seq=%llu waited_ms=%lld",
             (unsigned long long)s->awaited,
             (long long)cl->cfg->wait_timeout_ms);
      return ST_OK;
    }
    st_net_event *e = st_net_next_event(cl->net, ST_CLIENT_WAIT_SLICE_MS);
    if (e) {
      int rc = handle_event(cl, e);
      st_net_event_free(e);
      if (rc)
        return rc;
    }
    tick(cl);
  }
  return ST_OK;
}

static int process_frame(client *cl, st_video_frame *f) {
  const st_client_config *c = cl->cfg;
  st_schedule *s = &cl->sched;
  int rc = drain_events(cl);
  if (!rc && st_schedule_decide(s, cl->online) == ST_SCHED_WAIT)
    rc = wait_for_update(cl);
  if (rc)
    return fail(ST_CLIENT_EXIT_FAILURE, "student: %s", st_error_detail());
  if (st_schedule_decide(s, cl->online) == ST_SCHED_KEYFRAME) {
    uint64_t seq = st_schedule_keyframe_sent(s);
    st_log(ST_LOG_DEBUG,
           "event=keyframe seq=%llu frame=%lld input_frame=%lld "
           "version=%llu stride=%d",
           (unsigned long long)seq, (long long)s->last_key, (long long)f->index,
           (unsigned long long)cl->version, s->stride);
    if (st_net_post_keyframe(cl->net, seq, (uint64_t)f->index, cl->version,
                             f->rgb))
      st_schedule_on_key_lost(s, seq);
  }
  const int64_t shape[3] = {cl->info.height, cl->info.width, 3};
  st_tensor image = st_tensor_view(f->rgb, ST_U8, 3, shape);
  int64_t t_student = now_ns();
  /* Every frame's class map, the student's product, whether or not an
   * output shows it: made from the small logits (st_argmax_resized), it
   * costs less than frame-sized logits would, and never holds them. */
  int mask = c->masks[0] && cl->processed % c->masks_every == 0;
  int overlay = c->output[0] != '\0';
  rc = st_student_predict(cl->student, &image, &cl->labels);
  cl->student_ns += now_ns() - t_student;
  if (rc)
    return fail(ST_CLIENT_EXIT_FAILURE, "student: %s", st_error_detail());
  if ((overlay || mask) &&
      st_video_out_push(cl->out, f->rgb, cl->labels.data, f->index, mask))
    return fail(ST_CLIENT_EXIT_FAILURE, "%s", st_error_detail());
  st_schedule_frame_done(s);
  cl->processed++;
  int64_t done = now_ns();
  if (cl->frame_hist && cl->last_done_ns) {
    int64_t b = (done - cl->last_done_ns) / FRAME_HIST_BUCKET_NS;
    cl->frame_hist[b < FRAME_HIST_BUCKETS ? b : FRAME_HIST_BUCKETS - 1]++;
  }
  cl->last_done_ns = done;
  return ST_CLIENT_EXIT_OK;
}

static int frame_loop(client *cl) {
  for (;;) {
    if (stop_requested) {
      st_log(ST_LOG_INFO, "event=stop_requested frames=%lld",
             (long long)cl->processed);
      return ST_CLIENT_EXIT_OK;
    }
    st_video_frame *f = NULL;
    int rc = st_video_in_next(cl->in, ST_CLIENT_WAIT_SLICE_MS, &f);
    if (rc == ST_ETIMEDOUT) {
      /* Nothing to infer on yet: keep weights and statistics current. */
      if (drain_events(cl))
        return fail(ST_CLIENT_EXIT_FAILURE, "student: %s", st_error_detail());
      tick(cl);
      continue;
    }
    if (rc)
      return fail(ST_CLIENT_EXIT_FAILURE, "%s", st_error_detail());
    if (!f)
      return ST_CLIENT_EXIT_OK; /* the input ended */
    int status = process_frame(cl, f);
    st_video_in_release(cl->in, f);
    if (status)
      return status;
    tick(cl);
  }
}

/* ---- the whole run ------------------------------------------------------- */

static void client_free(client *cl) {
  st_video_in_free(cl->in);
  st_video_out_free(cl->out);
  st_net_free(cl->net);
  st_tensor_free(&cl->labels);
  st_student_free(cl->student);
  st_backend_free(cl->be);
  if (cl->stats)
    fclose(cl->stats);
  free(cl->frame_hist);
}

int st_client_run(const st_client_config *cfg) {
  client cl;
  memset(&cl, 0, sizeof cl);
  cl.cfg = cfg;
  cl.last_metric = NAN;
  st_wait_policy policy = ST_WAIT_BLOCK;
  st_wait_policy_from_name(cfg->wait_policy, &policy);
  st_schedule_init(&cl.sched, policy, ST_STUDENT_DEFAULT_MIN_STRIDE,
                   ST_STUDENT_DEFAULT_MIN_STRIDE);
  int status = open_model(&cl);
  if (!status)
    status = open_input(&cl);
  if (!status)
    status = open_outputs(&cl);
  if (!status)
    status = warm_up(&cl);
  if (!status && cfg->server[0])
    status = start_network(&cl);
  if (!status && !cl.have_weights)
    status = fail(ST_CLIENT_EXIT_FAILURE, "no weights: give --weights, or a "
                                          "server that sends its model");
  if (!status && st_video_in_start(cl.in))
    status = fail(ST_CLIENT_EXIT_FAILURE, "%s", st_error_detail());
  if (status || stop_requested) {
    client_free(&cl);
    return status;
  }
  /* Statistics only: without it the run goes on, minus percentiles. */
  cl.frame_hist = calloc(FRAME_HIST_BUCKETS, sizeof *cl.frame_hist);
  cl.progress = strcmp(cfg->progress, "on") == 0 ||
                (strcmp(cfg->progress, "auto") == 0 && isatty(STDOUT_FILENO));
  cl.t0_ns = cl.last_stats_ns = cl.last_progress_ns = cl.progress_ns = now_ns();
  status = frame_loop(&cl);
  /* Stop reading first (a live source would go on forever), then finish
   * the files: the overlay is only playable once its trailer is written. */
  st_video_in_stop(cl.in);
  if (cl.out && st_video_out_close(cl.out) && !status)
    status = fail(ST_CLIENT_EXIT_FAILURE, "%s", st_error_detail());
  int64_t end = now_ns();
  draw_progress(&cl, end, 1);
  /* Say bye before the summary, so its byte counts include it. */
  if (cl.net)
    st_net_stop(cl.net, ST_CLIENT_BYE_TIMEOUT_MS);
  cl.online = 0;
  write_stats(&cl, end, 1);
  double secs = seconds_since(cl.t0_ns, end);
  st_log(ST_LOG_INFO,
         "event=done frames=%lld seconds=%.3f fps=%.3f keyframes=%lld "
         "version=%llu",
         (long long)cl.processed, secs,
         secs > 0 ? (double)cl.processed / secs : 0.0,
         (long long)cl.sched.keyframes, (unsigned long long)cl.version);
  client_free(&cl);
  return status;
}
