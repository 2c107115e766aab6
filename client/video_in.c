/* syscall(SYS_gettid), for the reader's own nice value. */
#define _DEFAULT_SOURCE
#include "video_in.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <libavcodec/avcodec.h>
#include <libavdevice/avdevice.h>
#include <libavformat/avformat.h>
#include <libavutil/error.h>
#include <libavutil/mathematics.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>

#include "base/error.h"

#define NS_PER_US 1000LL
#define NS_PER_MS 1000000LL
#define NS_PER_S 1000000000LL
#define US_PER_S 1000000LL
/* Frame slots beyond the queue: one held by the consumer, one being filled
 * by the reader. */
#define EXTRA_SLOTS 2
#define DETAIL_BYTES 512
/* Schemes of network streams: frames come at the sender's pace. */
static const char *const live_schemes[] = {"rtsp://",  "rtsps://", "rtmp://",
                                           "rtmps://", "udp://",   "rtp://",
                                           "srt://",   "tcp://"};

typedef enum slot_state {
  SLOT_FREE = 0, /* in the pool */
  SLOT_FILLING,  /* the reader writes it */
  SLOT_READY,    /* queued for the consumer */
  SLOT_HELD,     /* the consumer has it */
} slot_state;

typedef struct slot {
  st_video_frame frame; /* first: a frame pointer is its slot's pointer */
  slot_state state;
} slot;

struct st_video_in {
  st_video_in_options opts; /* strings point at the copies below */
  char *input;              /* owned copy of opts.input */
  st_video_info info;
  /* Reader-thread state (FFmpeg objects are touched by one thread at a
   * time: open on the caller's, then only the reader's). */
  AVFormatContext *fmt;
  AVCodecContext *dec;
  int stream;    /* index of the video stream */
  AVRational tb; /* its time base */
  struct SwsContext *sws;
  AVPacket *pkt;
  AVFrame *frame;
  int seekable;           /* loops are possible */
  int drop_when_full;     /* realtime or live */
  int pace;               /* realtime on a file */
  int64_t frame_us;       /* nominal frame duration */
  int64_t play_offset_us; /* pts_us of the current play's start */
  int64_t play_first_us;  /* first timestamp of the current play */
  int play_has_first;
  int64_t play_end_us; /* end of the latest frame, across plays */
  int64_t wall0_ns;    /* realtime: wall time of pts_us 0 */
  int64_t next_index;
  /* Shared with the consumer, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t ready_cv; /* a frame was queued, or the reader ended */
  pthread_cond_t free_cv;  /* a slot was released, or stop */
  slot *slots;
  int nslots;
  int *ring; /* queued slot indices, oldest first */
  int ring_head, ring_count;
  int done;  /* the reader has ended */
  int error; /* its status when it failed */
  char error_detail[DETAIL_BYTES];
  st_video_in_counters counters;
  atomic_int stop;
  pthread_t thread;
  int started;
  int sync_ready; /* mutex and condvars initialised */
};

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static struct timespec deadline_ts(int64_t at_ns) {
  struct timespec ts = {.tv_sec = at_ns / NS_PER_S,
                        .tv_nsec = at_ns % NS_PER_S};
  return ts;
}

/* An FFmpeg status as a ST_* status with a detail line. */
static int av_fail(int averr, int code, const char *fmt_, const char *what) {
  char msg[AV_ERROR_MAX_STRING_SIZE];
  av_strerror(averr, msg, sizeof msg);
  return st_error_set(code, fmt_, what, msg);
}

static int interrupt_cb(void *opaque) {
  st_video_in *v = opaque;
  return atomic_load(&v->stop);
}

static pthread_once_t devices_once = PTHREAD_ONCE_INIT;
static void register_devices(void) { avdevice_register_all(); }

static int is_live_url(const char *url) {
  for (size_t i = 0; i < sizeof live_schemes / sizeof live_schemes[0]; i++)
    if (strncmp(url, live_schemes[i], strlen(live_schemes[i])) == 0)
      return 1;
  return 0;
}

static int open_input(st_video_in *v) {
  const st_video_in_options *o = &v->opts;
  const char *url = strcmp(o->input, "-") == 0 ? "pipe:0" : o->input;
  const AVInputFormat *ifmt = NULL;
  pthread_once(&devices_once, register_devices);
  if (o->format && *o->format) {
    ifmt = av_find_input_format(o->format);
    if (!ifmt)
      return st_error_set(ST_EINVAL,
                          "input format '%s' is not known to "
                          "libavformat/libavdevice",
                          o->format);
  } else if (strncmp(url, "/dev/video", strlen("/dev/video")) == 0) {
    ifmt = av_find_input_format("v4l2");
    if (!ifmt)
      return st_error_set(ST_ENOTSUP, "%s: libavdevice has no v4l2 input", url);
  }
  AVDictionary *dopts = NULL;
  if (strncmp(url, "rtsp", strlen("rtsp")) == 0 && strstr(url, "://")) {
    av_dict_set(&dopts, "rtsp_transport", o->rtsp_transport, 0);
    av_dict_set_int(&dopts, "timeout", ST_VIDEO_NETWORK_TIMEOUT_US, 0);
  }
  v->fmt = avformat_alloc_context();
  if (!v->fmt) {
    av_dict_free(&dopts);
    return st_error_set(ST_ENOMEM, "input: out of memory");
  }
  v->fmt->interrupt_callback.callback = interrupt_cb;
  v->fmt->interrupt_callback.opaque = v;
  int ret = avformat_open_input(&v->fmt, url, ifmt, &dopts);
  av_dict_free(&dopts);
  if (ret < 0) /* avformat_open_input frees the context on failure */
    return av_fail(ret, ret == AVERROR(ENOENT) ? ST_ENOENT : ST_EIO,
                   "cannot open input '%s': %s", o->input);
  if ((ret = avformat_find_stream_info(v->fmt, NULL)) < 0)
    return av_fail(ret, ST_EFORMAT, "input '%s': cannot read stream info: %s",
                   o->input);
  const AVCodec *codec = NULL;
  ret = av_find_best_stream(v->fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
  if (ret == AVERROR_DECODER_NOT_FOUND)
    return st_error_set(ST_ENOTSUP,
                        "input '%s': no decoder for its video "
                        "codec",
                        o->input);
  if (ret < 0)
    return st_error_set(ST_EFORMAT, "input '%s' has no video stream", o->input);
  v->stream = ret;
  AVStream *st = v->fmt->streams[v->stream];
  v->tb = st->time_base;
  v->dec = avcodec_alloc_context3(codec);
  if (!v->dec)
    return st_error_set(ST_ENOMEM, "input: out of memory");
  if ((ret = avcodec_parameters_to_context(v->dec, st->codecpar)) < 0)
    return av_fail(ret, ST_EFORMAT, "input '%s': %s", o->input);
  v->dec->thread_count = o->decode_threads;
  v->dec->pkt_timebase = st->time_base;
  if ((ret = avcodec_open2(v->dec, codec, NULL)) < 0)
    return av_fail(ret, ST_EFORMAT, "input '%s': cannot open its decoder: %s",
                   o->input);

  st_video_info *in = &v->info;
  in->src_width = st->codecpar->width;
  in->src_height = st->codecpar->height;
  if (in->src_width <= 0 || in->src_height <= 0)
    return st_error_set(ST_EFORMAT,
                        "input '%s': the stream does not state "
                        "its frame size",
                        o->input);
  in->width = o->width > 0 ? o->width : in->src_width;
  in->height = o->height > 0 ? o->height : in->src_height;
  AVRational fps = st->avg_frame_rate;
  if (fps.num <= 0 || fps.den <= 0)
    fps = st->r_frame_rate;
  if (fps.num <= 0 || fps.den <= 0)
    fps = (AVRational){ST_VIDEO_DEFAULT_FPS, 1};
  in->fps_num = fps.num;
  in->fps_den = fps.den;
  v->frame_us = av_rescale(US_PER_S, fps.den, fps.num);
  if (v->frame_us <= 0)
    v->frame_us = 1;
  snprintf(in->codec, sizeof in->codec, "%s", codec->name);
  snprintf(in->format, sizeof in->format, "%s", v->fmt->iformat->name);
  in->live = is_live_url(url) || (v->fmt->iformat->flags & AVFMT_NOFILE) ||
             strcmp(v->fmt->iformat->name, "video4linux2,v4l2") == 0;
  v->seekable =
      !in->live && v->fmt->pb && (v->fmt->pb->seekable & AVIO_SEEKABLE_NORMAL);
  if (o->loops != 1 && !v->seekable)
    return st_error_set(ST_EINVAL,
                        "input '%s' cannot be rewound: --loop needs a file",
                        o->input);
  /* Frames the run will read, for the progress display. */
  int64_t per_play = st->nb_frames > 0 ? st->nb_frames : -1;
  in->frames_total = -1;
  if (per_play > 0 && !in->live && o->loops > 0)
    in->frames_total = per_play * o->loops;
  if (o->max_frames > 0) {
    if (in->frames_total > o->max_frames ||
        (per_play > 0 && !in->live && o->loops == 0))
      in->frames_total = o->max_frames;
  }
  v->drop_when_full = o->realtime || in->live;
  v->pace = o->realtime && !in->live;
  return ST_OK;
}

static int sync_init(st_video_in *v) {
  pthread_condattr_t ca;
  if (pthread_condattr_init(&ca))
    return st_error_set(ST_ENOMEM, "input: cannot create a condition");
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int bad = pthread_mutex_init(&v->mu, NULL);
  if (!bad && pthread_cond_init(&v->ready_cv, &ca)) {
    pthread_mutex_destroy(&v->mu);
    bad = 1;
  }
  if (!bad && pthread_cond_init(&v->free_cv, &ca)) {
    pthread_cond_destroy(&v->ready_cv);
    pthread_mutex_destroy(&v->mu);
    bad = 1;
  }
  pthread_condattr_destroy(&ca);
  if (bad)
    return st_error_set(ST_ENOMEM, "input: cannot create a lock");
  v->sync_ready = 1;
  return ST_OK;
}

static int slots_alloc(st_video_in *v) {
  v->nslots = v->opts.queue_frames + EXTRA_SLOTS;
  v->slots = calloc((size_t)v->nslots, sizeof *v->slots);
  v->ring = calloc((size_t)v->nslots, sizeof *v->ring);
  if (!v->slots || !v->ring)
    return st_error_set(ST_ENOMEM, "input: out of memory");
  size_t bytes = (size_t)v->info.width * (size_t)v->info.height * 3;
  for (int i = 0; i < v->nslots; i++) {
    v->slots[i].frame.rgb = malloc(bytes);
    if (!v->slots[i].frame.rgb)
      return st_error_set(ST_ENOMEM, "input: out of memory for frames");
  }
  return ST_OK;
}

int st_video_in_open(const st_video_in_options *o, st_video_in **out) {
  *out = NULL;
  if (!o->input || !*o->input || o->queue_frames < 1)
    return st_error_set(ST_EINVAL, "input: no input or queue");
  st_video_in *v = calloc(1, sizeof *v);
  if (!v)
    return st_error_set(ST_ENOMEM, "input: out of memory");
  v->opts = *o; /* format and rtsp_transport: borrowed during the open */
  v->input = strdup(o->input);
  v->opts.input = v->input;
  v->stream = -1;
  atomic_init(&v->stop, 0);
  int rc = v->input ? ST_OK : st_error_set(ST_ENOMEM, "input: out of memory");
  if (!rc)
    rc = open_input(v);
  if (!rc && (!(v->pkt = av_packet_alloc()) || !(v->frame = av_frame_alloc())))
    rc = st_error_set(ST_ENOMEM, "input: out of memory");
  if (!rc)
    rc = sync_init(v);
  if (!rc)
    rc = slots_alloc(v);
  if (rc) {
    st_video_in_free(v);
    return rc;
  }
  /* The caller's strings need not outlive the open. */
  v->opts.format = NULL;
  v->opts.rtsp_transport = NULL;
  *out = v;
  return ST_OK;
}

void st_video_in_get_info(const st_video_in *v, st_video_info *info) {
  *info = v->info;
}

/* ---- the reader thread --------------------------------------------------- */

/* A slot to decode into: a free one, or (when dropping) the oldest queued
 * one. NULL when asked to stop. */
static slot *acquire_slot(st_video_in *v) {
  pthread_mutex_lock(&v->mu);
  slot *s = NULL;
  while (!atomic_load(&v->stop)) {
    for (int i = 0; i < v->nslots && !s; i++)
      if (v->slots[i].state == SLOT_FREE)
        s = &v->slots[i];
    if (!s && v->drop_when_full && v->ring_count > 0) {
      s = &v->slots[v->ring[v->ring_head]];
      v->ring_head = (v->ring_head + 1) % v->nslots;
      v->ring_count--;
      v->counters.dropped++;
    }
    if (s)
      break;
    pthread_cond_wait(&v->free_cv, &v->mu);
  }
  if (s)
    s->state = SLOT_FILLING;
  pthread_mutex_unlock(&v->mu);
  return s;
}

static void queue_slot(st_video_in *v, slot *s) {
  pthread_mutex_lock(&v->mu);
  s->state = SLOT_READY;
  v->ring[(v->ring_head + v->ring_count) % v->nslots] = (int)(s - v->slots);
  v->ring_count++;
  pthread_cond_signal(&v->ready_cv);
  pthread_mutex_unlock(&v->mu);
}

static void return_slot(st_video_in *v, slot *s) {
  pthread_mutex_lock(&v->mu);
  s->state = SLOT_FREE;
  pthread_mutex_unlock(&v->mu);
}

/* Realtime: sleeps until the frame's presentation time (or stop). */
static void pace_until(st_video_in *v, int64_t pts_us) {
  if (!v->wall0_ns)
    v->wall0_ns = now_ns() - pts_us * NS_PER_US;
  int64_t at = v->wall0_ns + pts_us * NS_PER_US;
  struct timespec ts = deadline_ts(at);
  pthread_mutex_lock(&v->mu);
  while (!atomic_load(&v->stop) && now_ns() < at)
    if (pthread_cond_timedwait(&v->free_cv, &v->mu, &ts) == ETIMEDOUT)
      break;
  pthread_mutex_unlock(&v->mu);
}

/* One decoded frame to the queue. Returns 1 when reading should end
 * (max_frames reached, or stop), a negative status on failure. */
static int deliver(st_video_in *v, AVFrame *f) {
  int corrupt = (f->flags & AV_FRAME_FLAG_CORRUPT) || f->decode_error_flags;
  int64_t ts = f->best_effort_timestamp;
  int64_t t_us = ts == AV_NOPTS_VALUE ? AV_NOPTS_VALUE
                                      : av_rescale_q(ts, v->tb, AV_TIME_BASE_Q);
  int64_t pts_us;
  if (t_us == AV_NOPTS_VALUE) {
    pts_us = v->play_end_us;
  } else {
    if (!v->play_has_first) {
      v->play_first_us = t_us;
      v->play_has_first = 1;
    }
    pts_us = v->play_offset_us + (t_us - v->play_first_us);
    /* A stream whose timestamps jump backwards would stall the pacing. */
    if (pts_us < v->play_offset_us)
      pts_us = v->play_offset_us;
  }
  if (pts_us + v->frame_us > v->play_end_us)
    v->play_end_us = pts_us + v->frame_us;
  pthread_mutex_lock(&v->mu);
  v->counters.decoded++;
  if (corrupt)
    v->counters.corrupt++;
  pthread_mutex_unlock(&v->mu);

  if (v->pace)
    pace_until(v, pts_us);
  slot *s = acquire_slot(v);
  if (!s)
    return 1;
  v->sws = sws_getCachedContext(v->sws, f->width, f->height, f->format,
                                v->info.width, v->info.height, AV_PIX_FMT_RGB24,
                                SWS_BILINEAR, NULL, NULL, NULL);
  if (!v->sws) {
    return_slot(v, s);
    const char *name = av_get_pix_fmt_name(f->format);
    return st_error_set(ST_ENOTSUP,
                        "input '%s': cannot convert %s %dx%d "
                        "frames to RGB",
                        v->input, name ? name : "?", f->width, f->height);
  }
  uint8_t *dst[4] = {s->frame.rgb, NULL, NULL, NULL};
  int dst_stride[4] = {v->info.width * 3, 0, 0, 0};
  sws_scale(v->sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height,
            dst, dst_stride);
  s->frame.index = v->next_index++;
  s->frame.pts_us = pts_us;
  s->frame.corrupt = corrupt;
  queue_slot(v, s);
  if (v->opts.max_frames > 0 && v->next_index >= v->opts.max_frames)
    return 1;
  return atomic_load(&v->stop) ? 1 : 0;
}

static void count_decode_error(st_video_in *v) {
  pthread_mutex_lock(&v->mu);
  v->counters.decode_errors++;
  pthread_mutex_unlock(&v->mu);
}

/* Every frame the decoder has ready. 1: stop reading; < 0: failure. */
static int receive_frames(st_video_in *v) {
  for (;;) {
    int ret = avcodec_receive_frame(v->dec, v->frame);
    if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
      return 0;
    if (ret < 0) {
      /* A frame the decoder gave up on; the next one may be fine. */
      count_decode_error(v);
      return 0;
    }
    int rc = deliver(v, v->frame);
    av_frame_unref(v->frame);
    if (rc)
      return rc;
  }
}

/* Sends one packet (NULL: drain) and takes the frames it yields. */
static int decode_packet(st_video_in *v, const AVPacket *pkt) {
  for (;;) {
    int ret = avcodec_send_packet(v->dec, pkt);
    if (ret == AVERROR(EAGAIN)) {
      /* The decoder's output is full: empty it, then resend. */
      int rc = receive_frames(v);
      if (rc)
        return rc;
      continue;
    }
    if (ret < 0 && ret != AVERROR_EOF)
      count_decode_error(v);
    return receive_frames(v);
  }
}

/* Back to the first frame for the next play; 0 when that is impossible. */
static int rewind_input(st_video_in *v) {
  if (!v->seekable)
    return 0;
  AVStream *st = v->fmt->streams[v->stream];
  int64_t start = st->start_time != AV_NOPTS_VALUE ? st->start_time : 0;
  if (av_seek_frame(v->fmt, v->stream, start, AVSEEK_FLAG_BACKWARD) < 0)
    return 0;
  avcodec_flush_buffers(v->dec);
  v->play_offset_us = v->play_end_us;
  v->play_has_first = 0;
  return 1;
}

static int read_all(st_video_in *v) {
  int errors = 0;
  int64_t plays = 1;
  pthread_mutex_lock(&v->mu);
  v->counters.plays = 1;
  pthread_mutex_unlock(&v->mu);
  while (!atomic_load(&v->stop)) {
    int ret = av_read_frame(v->fmt, v->pkt);
    if (ret == AVERROR_EOF || (ret < 0 && avio_feof(v->fmt->pb))) {
      int rc = decode_packet(v, NULL);
      if (rc)
        return rc < 0 ? rc : ST_OK;
      if (v->opts.loops != 0 && plays >= v->opts.loops)
        return ST_OK;
      if (!rewind_input(v))
        return st_error_set(ST_EIO,
                            "input '%s': cannot rewind it for the "
                            "next play",
                            v->input);
      plays++;
      pthread_mutex_lock(&v->mu);
      v->counters.plays = plays;
      pthread_mutex_unlock(&v->mu);
      continue;
    }
    if (ret == AVERROR_EXIT && atomic_load(&v->stop))
      return ST_OK;
    if (ret == AVERROR(EAGAIN))
      continue; /* a device with nothing yet */
    if (ret < 0) {
      if (++errors > ST_VIDEO_MAX_CONSECUTIVE_READ_ERRORS)
        return av_fail(ret, ST_EIO, "input '%s': read failed: %s", v->input);
      continue;
    }
    errors = 0;
    if (v->pkt->stream_index != v->stream) {
      av_packet_unref(v->pkt);
      continue;
    }
    int rc = decode_packet(v, v->pkt);
    av_packet_unref(v->pkt);
    if (rc)
      return rc < 0 ? rc : ST_OK;
  }
  return ST_OK;
}

static void *reader_main(void *arg) {
  st_video_in *v = arg;
  st_error_clear();
  /* Linux gives each thread its own nice value: a reader that yields to
   * the student runs in the gaps of its parallel regions instead of
   * stalling them. Failure only costs speed. */
  if (v->opts.nice)
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), v->opts.nice);
  int rc = read_all(v);
  pthread_mutex_lock(&v->mu);
  v->done = 1;
  if (rc) {
    v->error = rc;
    snprintf(v->error_detail, sizeof v->error_detail, "%s", st_error_detail());
  }
  pthread_cond_broadcast(&v->ready_cv);
  pthread_mutex_unlock(&v->mu);
  return NULL;
}

int st_video_in_start(st_video_in *v) {
  if (v->started)
    return ST_OK;
  if (pthread_create(&v->thread, NULL, reader_main, v))
    return st_error_set(ST_ENOMEM, "input: cannot start the reader thread");
  v->started = 1;
  return ST_OK;
}

int st_video_in_next(st_video_in *v, int timeout_ms, st_video_frame **f) {
  *f = NULL;
  struct timespec ts = deadline_ts(now_ns() + (int64_t)timeout_ms * NS_PER_MS);
  pthread_mutex_lock(&v->mu);
  while (v->ring_count == 0 && !v->done)
    if (pthread_cond_timedwait(&v->ready_cv, &v->mu, &ts) == ETIMEDOUT &&
        v->ring_count == 0 && !v->done) {
      pthread_mutex_unlock(&v->mu);
      return ST_ETIMEDOUT;
    }
  int rc = ST_OK;
  if (v->ring_count > 0) {
    slot *s = &v->slots[v->ring[v->ring_head]];
    v->ring_head = (v->ring_head + 1) % v->nslots;
    v->ring_count--;
    s->state = SLOT_HELD;
    *f = &s->frame;
  } else if (v->error) {
    rc = st_error_set(v->error, "%s", v->error_detail);
  }
  pthread_mutex_unlock(&v->mu);
  return rc;
}

void st_video_in_release(st_video_in *v, st_video_frame *f) {
  if (!f)
    return;
  slot *s = (slot *)f;
  pthread_mutex_lock(&v->mu);
  s->state = SLOT_FREE;
  pthread_cond_signal(&v->free_cv);
  pthread_mutex_unlock(&v->mu);
}

void st_video_in_get_counters(st_video_in *v, st_video_in_counters *c) {
  pthread_mutex_lock(&v->mu);
  *c = v->counters;
  pthread_mutex_unlock(&v->mu);
}

void st_video_in_stop(st_video_in *v) {
  atomic_store(&v->stop, 1);
  if (!v->sync_ready)
    return;
  pthread_mutex_lock(&v->mu);
  pthread_cond_broadcast(&v->free_cv);
  pthread_cond_broadcast(&v->ready_cv);
  pthread_mutex_unlock(&v->mu);
}

void st_video_in_free(st_video_in *v) {
  if (!v)
    return;
  st_video_in_stop(v);
  if (v->started)
    pthread_join(v->thread, NULL);
  sws_freeContext(v->sws);
  av_frame_free(&v->frame);
  av_packet_free(&v->pkt);
  avcodec_free_context(&v->dec);
  avformat_close_input(&v->fmt);
  if (v->slots)
    for (int i = 0; i < v->nslots; i++)
      free(v->slots[i].frame.rgb);
  free(v->slots);
  free(v->ring);
  if (v->sync_ready) {
    pthread_cond_destroy(&v->free_cv);
    pthread_cond_destroy(&v->ready_cv);
    pthread_mutex_destroy(&v->mu);
  }
  free(v->input);
  free(v);
}
