/* syscall(SYS_gettid), for the writer's own nice value. */
#define _DEFAULT_SOURCE
#include "video_out.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/error.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>

#include "base/error.h"
#include "overlay.h"

#define PATH_BYTES 4352
#define DETAIL_BYTES 512
/* Slots beyond the queue: the one the writer works on. */
#define EXTRA_SLOTS 1
#define MASK_DIR_MODE 0777
/* The png encoder wants a time base, any will do for stills. */
#define PNG_TIME_BASE_DEN 25
/* zlib level of the class maps: flat label areas compress well even at
 * the fastest level, and the writer keeps pace with the student. */
#define PNG_COMPRESSION_LEVEL 1

typedef struct out_slot {
  uint8_t *rgb; /* NULL without an overlay */
  uint8_t *labels;
  int64_t index;
  int mask;
  int used; /* queued or being written */
} out_slot;

struct st_video_out {
  st_video_out_options opts;
  char path[PATH_BYTES];
  char masks_dir[PATH_BYTES];
  char codec[16]; /* "auto", "h264" or "mpeg4" */
  int overlay;    /* an overlay video is written */
  /* Overlay encoder (writer thread after open). */
  AVFormatContext *oc;
  AVCodecContext *enc;
  AVStream *vst;
  struct SwsContext *sws; /* blended RGB -> encoder YUV */
  AVFrame *yuv;
  AVPacket *pkt;
  uint8_t *blend; /* blended RGB */
  int header_written;
  char codec_name[32];
  /* PNG class maps. */
  AVCodecContext *png;
  AVFrame *pal;
  AVPacket *png_pkt;
  /* Queue, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t ready_cv; /* a slot was queued, or closing */
  pthread_cond_t free_cv;  /* a slot was written */
  out_slot *slots;
  int nslots;
  int *ring;
  int ring_head, ring_count;
  int closing;
  int error;
  char error_detail[DETAIL_BYTES];
  int64_t frames_written, masks_written;
  pthread_t thread;
  int started;
  int sync_ready;
  int closed;
};

static int av_fail(int averr, int code, const char *fmt_, const char *what) {
  char msg[AV_ERROR_MAX_STRING_SIZE];
  av_strerror(averr, msg, sizeof msg);
  return st_error_set(code, fmt_, what, msg);
}

/* ---- opening ------------------------------------------------------------- */

static const AVCodec *pick_encoder(const char *want) {
  const AVCodec *c = NULL;
  if (strcmp(want, "mpeg4") != 0) {
    c = avcodec_find_encoder_by_name("libx264");
    if (!c)
      c = avcodec_find_encoder(AV_CODEC_ID_H264);
    if (c || strcmp(want, "h264") == 0)
      return c;
  }
  return avcodec_find_encoder(AV_CODEC_ID_MPEG4);
}

static int open_overlay(st_video_out *w) {
  const st_video_out_options *o = &w->opts;
  /* 4:2:0 chroma needs even sides; an odd frame loses its last row or
   * column to the scaler. */
  int ew = o->width & ~1, eh = o->height & ~1;
  if (ew < 2 || eh < 2)
    return st_error_set(ST_EINVAL,
                        "output '%s': frames of %dx%d are too "
                        "small for video",
                        w->path, o->width, o->height);
  int ret = avformat_alloc_output_context2(&w->oc, NULL, NULL, w->path);
  if (ret < 0 || !w->oc)
    return av_fail(ret, ST_EINVAL,
                   "output '%s': no container for this "
                   "file name (%s)",
                   w->path);
  const AVCodec *codec = pick_encoder(w->codec);
  if (!codec)
    return st_error_set(ST_ENOTSUP,
                        "output '%s': this libavcodec has no "
                        "%s encoder",
                        w->path, w->codec);
  snprintf(w->codec_name, sizeof w->codec_name, "%s", codec->name);
  w->enc = avcodec_alloc_context3(codec);
  if (!w->enc)
    return st_error_set(ST_ENOMEM, "output: out of memory");
  AVCodecContext *e = w->enc;
  e->width = ew;
  e->height = eh;
  e->pix_fmt = AV_PIX_FMT_YUV420P;
  e->time_base = (AVRational){o->fps_den, o->fps_num};
  e->framerate = (AVRational){o->fps_num, o->fps_den};
  e->sample_aspect_ratio = (AVRational){1, 1};
  int gop = (int)((int64_t)ST_OVERLAY_GOP_SECONDS * o->fps_num / o->fps_den);
  e->gop_size = gop > 0 ? gop : 1;
  e->thread_count = ST_OVERLAY_ENCODER_THREADS;
  if (codec->id == AV_CODEC_ID_H264) {
    av_opt_set(e->priv_data, "preset", ST_OVERLAY_X264_PRESET, 0);
    av_opt_set(e->priv_data, "crf", ST_OVERLAY_X264_CRF, 0);
  } else {
    e->flags |= AV_CODEC_FLAG_QSCALE;
    e->global_quality = FF_QP2LAMBDA * ST_OVERLAY_MPEG4_QSCALE;
  }
  if (w->oc->oformat->flags & AVFMT_GLOBALHEADER)
    e->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  if ((ret = avcodec_open2(e, codec, NULL)) < 0)
    return av_fail(ret, ST_ENOTSUP, "output '%s': cannot open the encoder: %s",
                   w->path);
  w->vst = avformat_new_stream(w->oc, NULL);
  if (!w->vst)
    return st_error_set(ST_ENOMEM, "output: out of memory");
  if ((ret = avcodec_parameters_from_context(w->vst->codecpar, e)) < 0)
    return av_fail(ret, ST_ENOMEM, "output '%s': %s", w->path);
  w->vst->time_base = e->time_base;
  w->vst->avg_frame_rate = e->framerate;
  if (!(w->oc->oformat->flags & AVFMT_NOFILE) &&
      (ret = avio_open(&w->oc->pb, w->path, AVIO_FLAG_WRITE)) < 0)
    return av_fail(ret, ST_EIO, "cannot create output '%s': %s", w->path);
  if ((ret = avformat_write_header(w->oc, NULL)) < 0)
    return av_fail(ret, ST_EIO, "output '%s': cannot write the header: %s",
                   w->path);
  w->header_written = 1;
  w->sws = sws_getContext(o->width, o->height, AV_PIX_FMT_RGB24, ew, eh,
                          AV_PIX_FMT_YUV420P, SWS_BILINEAR, NULL, NULL, NULL);
  w->yuv = av_frame_alloc();
  w->pkt = av_packet_alloc();
  w->blend = malloc((size_t)o->width * (size_t)o->height * 3);
  if (!w->sws || !w->yuv || !w->pkt || !w->blend)
    return st_error_set(ST_ENOMEM, "output: out of memory");
  w->yuv->format = AV_PIX_FMT_YUV420P;
  w->yuv->width = ew;
  w->yuv->height = eh;
  if ((ret = av_frame_get_buffer(w->yuv, 0)) < 0)
    return av_fail(ret, ST_ENOMEM, "output '%s': %s", w->path);
  return ST_OK;
}

static int open_masks(st_video_out *w) {
  const st_video_out_options *o = &w->opts;
  if (mkdir(w->masks_dir, MASK_DIR_MODE) != 0 && errno != EEXIST)
    return st_error_set(ST_EIO, "cannot create masks folder '%s': %s",
                        w->masks_dir, strerror(errno));
  struct stat sb;
  if (stat(w->masks_dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
    return st_error_set(ST_EIO, "masks: '%s' is not a folder", w->masks_dir);
  const AVCodec *codec = avcodec_find_encoder(AV_CODEC_ID_PNG);
  if (!codec)
    return st_error_set(ST_ENOTSUP, "masks: this libavcodec has no png "
                                    "encoder");
  w->png = avcodec_alloc_context3(codec);
  w->pal = av_frame_alloc();
  w->png_pkt = av_packet_alloc();
  if (!w->png || !w->pal || !w->png_pkt)
    return st_error_set(ST_ENOMEM, "masks: out of memory");
  w->png->width = o->width;
  w->png->height = o->height;
  w->png->pix_fmt = AV_PIX_FMT_PAL8;
  w->png->time_base = (AVRational){1, PNG_TIME_BASE_DEN};
  w->png->compression_level = PNG_COMPRESSION_LEVEL;
  int ret = avcodec_open2(w->png, codec, NULL);
  if (ret < 0)
    return av_fail(ret, ST_ENOTSUP,
                   "masks '%s': cannot open the png "
                   "encoder: %s",
                   w->masks_dir);
  w->pal->format = AV_PIX_FMT_PAL8;
  w->pal->width = o->width;
  w->pal->height = o->height;
  if ((ret = av_frame_get_buffer(w->pal, 0)) < 0)
    return av_fail(ret, ST_ENOMEM, "masks '%s': %s", w->masks_dir);
  st_class_palette((uint32_t *)w->pal->data[1]);
  return ST_OK;
}

/* ---- the writer thread --------------------------------------------------- */

/* Takes every packet the encoder has ready to the muxer. */
static int mux_packets(st_video_out *w) {
  for (;;) {
    int ret = avcodec_receive_packet(w->enc, w->pkt);
    if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
      return ST_OK;
    if (ret < 0)
      return av_fail(ret, ST_EIO, "output '%s': encoding failed: %s", w->path);
    av_packet_rescale_ts(w->pkt, w->enc->time_base, w->vst->time_base);
    w->pkt->stream_index = w->vst->index;
    ret = av_interleaved_write_frame(w->oc, w->pkt);
    if (ret < 0)
      return av_fail(ret, ST_EIO, "output '%s': write failed: %s", w->path);
  }
}

static int write_overlay(st_video_out *w, const out_slot *s) {
  const st_video_out_options *o = &w->opts;
  st_overlay_blend(s->rgb, s->labels, (size_t)o->width * (size_t)o->height,
                   o->alpha, w->blend);
  int ret = av_frame_make_writable(w->yuv);
  if (ret < 0)
    return av_fail(ret, ST_ENOMEM, "output '%s': %s", w->path);
  const uint8_t *src[4] = {w->blend, NULL, NULL, NULL};
  const int src_stride[4] = {o->width * 3, 0, 0, 0};
  sws_scale(w->sws, src, src_stride, 0, o->height, w->yuv->data,
            w->yuv->linesize);
  w->yuv->pts = s->index;
  if ((ret = avcodec_send_frame(w->enc, w->yuv)) < 0)
    return av_fail(ret, ST_EIO, "output '%s': encoding failed: %s", w->path);
  int rc = mux_packets(w);
  if (!rc) {
    pthread_mutex_lock(&w->mu);
    w->frames_written++;
    pthread_mutex_unlock(&w->mu);
  }
  return rc;
}

static int write_mask(st_video_out *w, const out_slot *s) {
  const st_video_out_options *o = &w->opts;
  int ret = av_frame_make_writable(w->pal);
  if (ret < 0)
    return av_fail(ret, ST_ENOMEM, "masks '%s': %s", w->masks_dir);
  for (int y = 0; y < o->height; y++)
    memcpy(w->pal->data[0] + (size_t)y * (size_t)w->pal->linesize[0],
           s->labels + (size_t)y * (size_t)o->width, (size_t)o->width);
  st_class_palette((uint32_t *)w->pal->data[1]);
  if ((ret = avcodec_send_frame(w->png, w->pal)) < 0 ||
      (ret = avcodec_receive_packet(w->png, w->png_pkt)) < 0)
    return av_fail(ret, ST_EIO, "masks '%s': png encoding failed: %s",
                   w->masks_dir);
  char name[PATH_BYTES + 32];
  snprintf(name, sizeof name, ST_MASK_NAME_FORMAT, w->masks_dir,
           (long long)s->index);
  FILE *f = fopen(name, "wb");
  int ok = f && fwrite(w->png_pkt->data, 1, (size_t)w->png_pkt->size, f) ==
                    (size_t)w->png_pkt->size;
  int err = errno;
  if (f && fclose(f) != 0 && ok) {
    ok = 0;
    err = errno;
  }
  av_packet_unref(w->png_pkt);
  if (!ok)
    return st_error_set(ST_EIO, "cannot write '%s': %s", name, strerror(err));
  pthread_mutex_lock(&w->mu);
  w->masks_written++;
  pthread_mutex_unlock(&w->mu);
  return ST_OK;
}

/* Flushes the encoder and writes the trailer. */
static int finish_overlay(st_video_out *w) {
  if (!w->overlay || !w->header_written)
    return ST_OK;
  int rc = ST_OK;
  int ret = avcodec_send_frame(w->enc, NULL);
  if (ret < 0 && ret != AVERROR_EOF)
    rc = av_fail(ret, ST_EIO, "output '%s': flush failed: %s", w->path);
  if (!rc)
    rc = mux_packets(w);
  ret = av_write_trailer(w->oc);
  w->header_written = 0;
  if (!rc && ret < 0)
    rc = av_fail(ret, ST_EIO, "output '%s': cannot finish the file: %s",
                 w->path);
  return rc;
}

static void *writer_main(void *arg) {
  st_video_out *w = arg;
  st_error_clear();
  /* Per-thread nice (Linux): encoding fills the student's idle gaps. */
  if (w->opts.nice)
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), w->opts.nice);
  int rc = ST_OK;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (w->ring_count == 0 && !w->closing)
      pthread_cond_wait(&w->ready_cv, &w->mu);
    if (w->ring_count == 0)
      break; /* closing and drained */
    out_slot *s = &w->slots[w->ring[w->ring_head]];
    pthread_mutex_unlock(&w->mu);
    /* After a failure the slots are still released, so push never waits
     * for a writer that has given up. */
    if (!rc && w->overlay)
      rc = write_overlay(w, s);
    if (!rc && s->mask && w->png)
      rc = write_mask(w, s);
    pthread_mutex_lock(&w->mu);
    if (rc && !w->error) {
      w->error = rc;
      snprintf(w->error_detail, sizeof w->error_detail, "%s",
               st_error_detail());
    }
    w->ring_head = (w->ring_head + 1) % w->nslots;
    w->ring_count--;
    s->used = 0;
    pthread_cond_signal(&w->free_cv);
  }
  pthread_mutex_unlock(&w->mu);
  int frc = finish_overlay(w);
  pthread_mutex_lock(&w->mu);
  if (frc && !w->error) {
    w->error = frc;
    snprintf(w->error_detail, sizeof w->error_detail, "%s", st_error_detail());
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* ---- the caller's side --------------------------------------------------- */

static int sync_init(st_video_out *w) {
  if (pthread_mutex_init(&w->mu, NULL))
    return st_error_set(ST_ENOMEM, "output: cannot create a lock");
  if (pthread_cond_init(&w->ready_cv, NULL)) {
    pthread_mutex_destroy(&w->mu);
    return st_error_set(ST_ENOMEM, "output: cannot create a condition");
  }
  if (pthread_cond_init(&w->free_cv, NULL)) {
    pthread_cond_destroy(&w->ready_cv);
    pthread_mutex_destroy(&w->mu);
    return st_error_set(ST_ENOMEM, "output: cannot create a condition");
  }
  w->sync_ready = 1;
  return ST_OK;
}

static int slots_alloc(st_video_out *w) {
  const st_video_out_options *o = &w->opts;
  w->nslots = o->queue_frames + EXTRA_SLOTS;
  w->slots = calloc((size_t)w->nslots, sizeof *w->slots);
  w->ring = calloc((size_t)w->nslots, sizeof *w->ring);
  if (!w->slots || !w->ring)
    return st_error_set(ST_ENOMEM, "output: out of memory");
  size_t px = (size_t)o->width * (size_t)o->height;
  for (int i = 0; i < w->nslots; i++) {
    w->slots[i].labels = malloc(px);
    if (w->overlay)
      w->slots[i].rgb = malloc(px * 3);
    if (!w->slots[i].labels || (w->overlay && !w->slots[i].rgb))
      return st_error_set(ST_ENOMEM, "output: out of memory for frames");
  }
  return ST_OK;
}

int st_video_out_open(const st_video_out_options *o, st_video_out **out) {
  *out = NULL;
  if (o->width < 1 || o->height < 1 || o->fps_num < 1 || o->fps_den < 1 ||
      o->queue_frames < 1)
    return st_error_set(ST_EINVAL, "output: bad frame size, rate or queue");
  st_video_out *w = calloc(1, sizeof *w);
  if (!w)
    return st_error_set(ST_ENOMEM, "output: out of memory");
  w->opts = *o;
  int rc = ST_OK;
  if (o->path &&
      snprintf(w->path, sizeof w->path, "%s", o->path) >= (int)sizeof w->path)
    rc = st_error_set(ST_EINVAL, "output: path too long");
  if (o->masks_dir && snprintf(w->masks_dir, sizeof w->masks_dir, "%s",
                               o->masks_dir) >= (int)sizeof w->masks_dir)
    rc = st_error_set(ST_EINVAL, "masks: path too long");
  snprintf(w->codec, sizeof w->codec, "%s", o->codec ? o->codec : "auto");
  /* Only the copies are used after the open. */
  w->opts.path = NULL;
  w->opts.masks_dir = NULL;
  w->opts.codec = NULL;
  w->overlay = o->path != NULL;
  if (!rc && w->overlay)
    rc = open_overlay(w);
  if (!rc && o->masks_dir)
    rc = open_masks(w);
  if (!rc)
    rc = sync_init(w);
  if (!rc)
    rc = slots_alloc(w);
  if (!rc) {
    if (pthread_create(&w->thread, NULL, writer_main, w))
      rc = st_error_set(ST_ENOMEM, "output: cannot start the writer thread");
    else
      w->started = 1;
  }
  if (rc) {
    st_video_out_free(w);
    return rc;
  }
  *out = w;
  return ST_OK;
}

int st_video_out_push(st_video_out *w, const uint8_t *rgb,
                      const uint8_t *labels, int64_t index, int mask) {
  const st_video_out_options *o = &w->opts;
  size_t px = (size_t)o->width * (size_t)o->height;
  pthread_mutex_lock(&w->mu);
  out_slot *s = NULL;
  while (!w->error) {
    for (int i = 0; i < w->nslots && !s; i++)
      if (!w->slots[i].used)
        s = &w->slots[i];
    if (s)
      break;
    pthread_cond_wait(&w->free_cv, &w->mu);
  }
  if (w->error) {
    int rc = st_error_set(w->error, "%s", w->error_detail);
    pthread_mutex_unlock(&w->mu);
    return rc;
  }
  s->used = 1;
  pthread_mutex_unlock(&w->mu);
  /* The slot is ours until queued: copy outside the lock. */
  if (w->overlay)
    memcpy(s->rgb, rgb, px * 3);
  memcpy(s->labels, labels, px);
  s->index = index;
  s->mask = mask;
  pthread_mutex_lock(&w->mu);
  w->ring[(w->ring_head + w->ring_count) % w->nslots] = (int)(s - w->slots);
  w->ring_count++;
  pthread_cond_signal(&w->ready_cv);
  pthread_mutex_unlock(&w->mu);
  return ST_OK;
}

int st_video_out_close(st_video_out *w) {
  if (w->closed)
    return w->error ? st_error_set(w->error, "%s", w->error_detail) : ST_OK;
  w->closed = 1;
  if (w->started) {
    pthread_mutex_lock(&w->mu);
    w->closing = 1;
    pthread_cond_broadcast(&w->ready_cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    w->started = 0;
  }
  return w->error ? st_error_set(w->error, "%s", w->error_detail) : ST_OK;
}

void st_video_out_get_counters(st_video_out *w, int64_t *frames,
                               int64_t *masks) {
  pthread_mutex_lock(&w->mu);
  *frames = w->frames_written;
  *masks = w->masks_written;
  pthread_mutex_unlock(&w->mu);
}

const char *st_video_out_codec(const st_video_out *w) {
  return w->overlay ? w->codec_name : "";
}

void st_video_out_free(st_video_out *w) {
  if (!w)
    return;
  if (w->started)
    st_video_out_close(w);
  if (w->header_written)
    av_write_trailer(w->oc);
  if (w->oc && !(w->oc->oformat->flags & AVFMT_NOFILE))
    avio_closep(&w->oc->pb);
  avformat_free_context(w->oc);
  avcodec_free_context(&w->enc);
  sws_freeContext(w->sws);
  av_frame_free(&w->yuv);
  av_packet_free(&w->pkt);
  free(w->blend);
  avcodec_free_context(&w->png);
  av_frame_free(&w->pal);
  av_packet_free(&w->png_pkt);
  if (w->slots)
    for (int i = 0; i < w->nslots; i++) {
      free(w->slots[i].rgb);
      free(w->slots[i].labels);
    }
  free(w->slots);
  free(w->ring);
  if (w->sync_ready) {
    pthread_cond_destroy(&w->free_cv);
    pthread_cond_destroy(&w->ready_cv);
    pthread_mutex_destroy(&w->mu);
  }
  free(w);
}
