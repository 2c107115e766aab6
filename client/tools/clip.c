/* shadowtutor-clip: synthetic test videos for the client's tests and
 * benchmarks, and an independent frame counter (libavformat/libavcodec
 * only; nothing of the client).
 *
 *   shadowtutor-clip make OUT --size WxH --frames N [--fps F]
 *                    [--codec mpeg4|mjpeg|libx264|ffv1] [--corrupt I,J,..]
 *   shadowtutor-clip count FILE
 *
 * `make` draws moving shapes (a box sliding right, a disc falling, a bar
 * sweeping) on a gradient, so consecutive frames differ and a segmenter has
 * edges to find; frame i is the same on every machine. The container
 * follows OUT's extension. --corrupt overwrites the coded bytes of the
 * listed frames with noise (same length), so a decoder refuses or conceals
 * them. No B-frames: frame i is packet i.
 *
 * `count` decodes every frame and prints one JSON line:
 *   {"frames":N,"decode_errors":E,"corrupt":C,"width":W,"height":H,
 *    "codec":"...","fps":F}
 * Exit: 0 done, 1 failure, 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>

#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define MAX_CORRUPT 256
#define DEFAULT_FPS 12
/* Shapes, in fractions of the frame. */
#define BOX_SIDE_FRAC 4    /* box side = width / 4 */
#define DISC_RADIUS_FRAC 6 /* radius = height / 6 */
#define BAR_FRAC 10        /* bar thickness = height / 10 */
#define MPEG4_QSCALE 3
#define X264_CRF "20"
#define NOISE_SEED 0x9e3779b97f4a7c15ULL

static int fail(const char *what, int averr) {
  char msg[AV_ERROR_MAX_STRING_SIZE] = "";
  if (averr)
    av_strerror(averr, msg, sizeof msg);
  fprintf(stderr, "shadowtutor-clip: %s%s%s\n", what, averr ? ": " : "", msg);
  return EXIT_FAIL;
}

/* ---- drawing ------------------------------------------------------------- */

static void draw_frame(uint8_t *rgb, int w, int h, int i, int n) {
  int side = w / BOX_SIDE_FRAC > 1 ? w / BOX_SIDE_FRAC : 1;
  int box_x = (int)((int64_t)(w - side) * i / (n > 1 ? n - 1 : 1));
  int box_y = h / 2 - side / 2;
  int r = h / DISC_RADIUS_FRAC > 1 ? h / DISC_RADIUS_FRAC : 1;
  int disc_x = w / 3, disc_y = (int)((int64_t)h * i / (n > 1 ? n : 1));
  int bar = h / BAR_FRAC > 1 ? h / BAR_FRAC : 1;
  int bar_y = (h - bar) - (int)((int64_t)(h - bar) * i / (n > 1 ? n : 1));
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      uint8_t *p = rgb + 3 * ((size_t)y * w + x);
      p[0] = (uint8_t)(x * 255 / (w > 1 ? w - 1 : 1));
      p[1] = (uint8_t)(y * 255 / (h > 1 ? h - 1 : 1));
      p[2] = 96;
      if (y >= bar_y && y < bar_y + bar) {
        p[0] = 30, p[1] = 30, p[2] = 200;
      }
      int dx = x - disc_x, dy = y - disc_y;
      if (dx * dx + dy * dy <= r * r) {
        p[0] = 20, p[1] = 220, p[2] = 40;
      }
      if (x >= box_x && x < box_x + side && y >= box_y && y < box_y + side) {
        p[0] = 240, p[1] = 230, p[2] = 220;
      }
    }
}

/* ---- make ---------------------------------------------------------------- */

typedef struct make_opts {
  const char *out;
  int w, h, frames, fps;
  const char *codec;
  int corrupt[MAX_CORRUPT];
  int ncorrupt;
} make_opts;

static int is_corrupt(const make_opts *o, int64_t i) {
  for (int k = 0; k < o->ncorrupt; k++)
    if (o->corrupt[k] == i)
      return 1;
  return 0;
}

static int write_packets(AVCodecContext *enc, AVFormatContext *oc, AVStream *st,
                         AVPacket *pkt, const make_opts *o, uint64_t *noise) {
  for (;;) {
    int ret = avcodec_receive_packet(enc, pkt);
    if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
      return 0;
    if (ret < 0)
      return fail("encoding", ret);
    if (is_corrupt(o, pkt->pts)) {
      if ((ret = av_packet_make_writable(pkt)) < 0)
        return fail("packet", ret);
      for (int k = 0; k < pkt->size; k++) {
        *noise ^= *noise << 13, *noise ^= *noise >> 7, *noise ^= *noise << 17;
        pkt->data[k] = (uint8_t)*noise;
      }
    }
    av_packet_rescale_ts(pkt, enc->time_base, st->time_base);
    pkt->stream_index = st->index;
    if ((ret = av_interleaved_write_frame(oc, pkt)) < 0)
      return fail("writing", ret);
  }
}

static int make(const make_opts *o) {
  const AVCodec *codec = avcodec_find_encoder_by_name(o->codec);
  if (!codec)
    return fail("no such encoder", 0);
  AVFormatContext *oc = NULL;
  AVCodecContext *enc = NULL;
  AVFrame *frame = NULL;
  AVPacket *pkt = NULL;
  struct SwsContext *sws = NULL;
  uint8_t *rgb = NULL;
  uint64_t noise = NOISE_SEED;
  int rc = EXIT_FAIL, ret;
  if ((ret = avformat_alloc_output_context2(&oc, NULL, NULL, o->out)) < 0) {
    fail("no container for this name", ret);
    goto done;
  }
  enc = avcodec_alloc_context3(codec);
  frame = av_frame_alloc();
  pkt = av_packet_alloc();
  rgb = malloc((size_t)o->w * o->h * 3);
  if (!enc || !frame || !pkt || !rgb) {
    fail("out of memory", 0);
    goto done;
  }
  enum AVPixelFormat pf = codec->id == AV_CODEC_ID_MJPEG  ? AV_PIX_FMT_YUVJ420P
                          : codec->id == AV_CODEC_ID_FFV1 ? AV_PIX_FMT_YUV444P
                                                          : AV_PIX_FMT_YUV420P;
  enc->width = o->w;
  enc->height = o->h;
  enc->pix_fmt = pf;
  enc->time_base = (AVRational){1, o->fps};
  enc->framerate = (AVRational){o->fps, 1};
  enc->max_b_frames = 0;
  enc->gop_size = o->fps;
  enc->thread_count = 1;
  if (codec->id == AV_CODEC_ID_H264) {
    av_opt_set(enc->priv_data, "crf", X264_CRF, 0);
    av_opt_set(enc->priv_data, "preset", "veryfast", 0);
  } else if (codec->id != AV_CODEC_ID_FFV1) {
    enc->flags |= AV_CODEC_FLAG_QSCALE;
    enc->global_quality = FF_QP2LAMBDA * MPEG4_QSCALE;
  }
  if (oc->oformat->flags & AVFMT_GLOBALHEADER)
    enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  if ((ret = avcodec_open2(enc, codec, NULL)) < 0) {
    fail("cannot open the encoder", ret);
    goto done;
  }
  AVStream *st = avformat_new_stream(oc, NULL);
  if (!st || avcodec_parameters_from_context(st->codecpar, enc) < 0) {
    fail("stream", 0);
    goto done;
  }
  st->time_base = enc->time_base;
  st->avg_frame_rate = enc->framerate;
  if (!(oc->oformat->flags & AVFMT_NOFILE) &&
      (ret = avio_open(&oc->pb, o->out, AVIO_FLAG_WRITE)) < 0) {
    fail("cannot create the file", ret);
    goto done;
  }
  if ((ret = avformat_write_header(oc, NULL)) < 0) {
    fail("header", ret);
    goto done;
  }
  frame->format = pf;
  frame->width = o->w;
  frame->height = o->h;
  sws = sws_getContext(o->w, o->h, AV_PIX_FMT_RGB24, o->w, o->h, pf,
                       SWS_BILINEAR, NULL, NULL, NULL);
  if (!sws || av_frame_get_buffer(frame, 0) < 0) {
    fail("out of memory", 0);
    goto done;
  }
  for (int i = 0; i < o->frames; i++) {
    draw_frame(rgb, o->w, o->h, i, o->frames);
    if (av_frame_make_writable(frame) < 0) {
      fail("frame", 0);
      goto done;
    }
    const uint8_t *src[4] = {rgb, NULL, NULL, NULL};
    const int stride[4] = {o->w * 3, 0, 0, 0};
    sws_scale(sws, src, stride, 0, o->h, frame->data, frame->linesize);
    frame->pts = i;
    if ((ret = avcodec_send_frame(enc, frame)) < 0) {
      fail("encoding", ret);
      goto done;
    }
    if (write_packets(enc, oc, st, pkt, o, &noise))
      goto done;
  }
  avcodec_send_frame(enc, NULL);
  if (write_packets(enc, oc, st, pkt, o, &noise))
    goto done;
  if ((ret = av_write_trailer(oc)) < 0) {
    fail("trailer", ret);
    goto done;
  }
  rc = 0;
done:
  sws_freeContext(sws);
  free(rgb);
  av_packet_free(&pkt);
  av_frame_free(&frame);
  avcodec_free_context(&enc);
  if (oc && !(oc->oformat->flags & AVFMT_NOFILE))
    avio_closep(&oc->pb);
  avformat_free_context(oc);
  return rc;
}

/* ---- count --------------------------------------------------------------- */

static int count(const char *path) {
  AVFormatContext *fmt = NULL;
  AVCodecContext *dec = NULL;
  AVPacket *pkt = av_packet_alloc();
  AVFrame *frame = av_frame_alloc();
  int rc = EXIT_FAIL, ret;
  long long frames = 0, errors = 0, corrupt = 0;
  if (!pkt || !frame) {
    fail("out of memory", 0);
    goto done;
  }
  if ((ret = avformat_open_input(&fmt, path, NULL, NULL)) < 0 ||
      (ret = avformat_find_stream_info(fmt, NULL)) < 0) {
    fail("cannot open", ret);
    goto done;
  }
  const AVCodec *codec = NULL;
  int si = av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
  if (si < 0) {
    fail("no video stream", si);
    goto done;
  }
  dec = avcodec_alloc_context3(codec);
  if (!dec ||
      avcodec_parameters_to_context(dec, fmt->streams[si]->codecpar) < 0 ||
      (ret = avcodec_open2(dec, codec, NULL)) < 0) {
    fail("cannot open the decoder", 0);
    goto done;
  }
  for (int eof = 0; !eof;) {
    ret = av_read_frame(fmt, pkt);
    if (ret < 0)
      eof = 1;
    else if (pkt->stream_index != si) {
      av_packet_unref(pkt);
      continue;
    }
    if (avcodec_send_packet(dec, eof ? NULL : pkt) < 0)
      errors++;
    av_packet_unref(pkt);
    while ((ret = avcodec_receive_frame(dec, frame)) >= 0) {
      frames++;
      if ((frame->flags & AV_FRAME_FLAG_CORRUPT) || frame->decode_error_flags)
        corrupt++;
      av_frame_unref(frame);
    }
    if (ret != AVERROR(EAGAIN) && ret != AVERROR_EOF)
      errors++;
  }
  AVRational fr = fmt->streams[si]->avg_frame_rate;
  printf("{\"frames\":%lld,\"decode_errors\":%lld,\"corrupt\":%lld,"
         "\"width\":%d,\"height\":%d,\"codec\":\"%s\",\"fps\":%.6f}\n",
         frames, errors, corrupt, dec->width, dec->height, codec->name,
         fr.den ? (double)fr.num / fr.den : 0.0);
  rc = 0;
done:
  avcodec_free_context(&dec);
  avformat_close_input(&fmt);
  av_packet_free(&pkt);
  av_frame_free(&frame);
  return rc;
}

static int usage(void) {
  fprintf(stderr,
          "usage: shadowtutor-clip make OUT --size WxH --frames N [--fps F]\n"
          "                        [--codec mpeg4|mjpeg|libx264|ffv1] "
          "[--corrupt I,J,..]\n"
          "       shadowtutor-clip count FILE\n");
  return EXIT_USAGE;
}

int main(int argc, char **argv) {
  av_log_set_level(AV_LOG_QUIET);
  if (argc == 3 && strcmp(argv[1], "count") == 0)
    return count(argv[2]);
  if (argc < 3 || strcmp(argv[1], "make") != 0)
    return usage();
  make_opts o = {.out = argv[2], .fps = DEFAULT_FPS, .codec = "mpeg4"};
  for (int i = 3; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v)
      return usage();
    i++;
    if (strcmp(a, "--size") == 0) {
      if (sscanf(v, "%dx%d", &o.w, &o.h) != 2)
        return usage();
    } else if (strcmp(a, "--frames") == 0) {
      o.frames = atoi(v);
    } else if (strcmp(a, "--fps") == 0) {
      o.fps = atoi(v);
    } else if (strcmp(a, "--codec") == 0) {
      o.codec = v;
    } else if (strcmp(a, "--corrupt") == 0) {
      for (const char *p = v; *p && o.ncorrupt < MAX_CORRUPT;) {
        o.corrupt[o.ncorrupt++] = atoi(p);
        p = strchr(p, ',');
        if (!p)
          break;
        p++;
      }
    } else {
      return usage();
    }
  }
  if (o.w < 2 || o.h < 2 || o.frames < 1 || o.fps < 1)
    return usage();
  return make(&o);
}
