/* JPEG key frames through libavcodec's mjpeg codec (see jpeg.h).
 *
 * Decode: bytes -> mjpeg decoder -> planar YUV (or grey) -> swscale:
 * chroma upsampled to 4:4:4, then -> packed RGB24. Encode: RGB24 ->
 * swscale -> full-range YUV 4:2:0 -> mjpeg encoder -> bytes. Both sides
 * place and filter chroma as libjpeg does (see ST_JPEG_SWS_FLAGS), so a
 * frame decodes here as it does in PIL (libjpeg-turbo), to within 3 levels.
 *
 * JPEG (JFIF) colour is BT.601 YCbCr over the full 0..255
 * range; libavcodec says so with its deprecated "yuvj" pixel formats, which
 * are renamed here to the plain YUV formats with the range passed to
 * swscale explicitly, so swscale neither guesses nor logs its
 * "deprecated pixel format" warning on every frame.
 *
 * FFmpeg's log output is process-wide. The first st_jpeg_new() installs a
 * callback that never prints: it keeps the calling thread's last error line
 * so that a failed decode can name the reason ("overread 8") next to
 * av_strerror's generic text. A server decoding hostile input must not write
 * a line to stderr per bad frame, and this codec is FFmpeg's only user in
 * the process.
 */
#include "proto/jpeg.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavutil/error.h>
#include <libavutil/frame.h>
#include <libavutil/imgutils.h>
#include <libavutil/log.h>
#include <libavutil/macros.h>
#include <libavutil/mem.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>

#include "base/error.h"

/* libavcodec's frame buffers pad rows to its SIMD stride alignment (up to
 * 64 pixels) and JPEG pads pictures to whole 8 or 16 pixel blocks; the
 * decoder's pixel limit leaves room for both. */
#define ST_JPEG_DECODE_ALIGN 64
/* JPEG stores each side in 16 bits. */
#define ST_JPEG_MAX_SIDE 65535
#define ST_JPEG_MIN_QUALITY 1
#define ST_JPEG_MAX_QUALITY 100
/* libavcodec's mjpeg encoder takes a fixed quantiser scale ("qscale", as in
 * `ffmpeg -q:v`) between 2 (finest) and 31 (coarsest); it scales its
 * quantisation matrix by qscale / 8. Quality 100 maps to 2 and quality 1 to
 * 31, linearly in between and rounded to the nearest integer
 * (see qscale_of_quality). */
#define ST_JPEG_FINEST_QSCALE 2
#define ST_JPEG_COARSEST_QSCALE 31
/* Any time base will do for an intra-only codec; the encoder insists on
 * one. */
#define ST_JPEG_ENCODER_FPS 25
/* Sizes of the error texts put into the detail line. */
#define ST_JPEG_LOG_LINE_BYTES 160
#define ST_JPEG_AVERR_BYTES 96

/* Scaling never happens (source and destination sizes are equal), so the
 * flags only pick how chroma is resampled and how carefully values are
 * rounded. JPEG chroma samples sit centred between luma samples, and
 * libjpeg's default "fancy upsampling" interpolates them linearly;
 * swscale's bilinear filter between planar YUV formats does the same (its
 * default chroma position is the centre). The accurate-rounding flag makes
 * swscale round its fixed-point results instead of truncating them.
 *
 * swscale's direct 4:2:0 -> RGB path does not do that: in libswscale 6 its
 * vertical chroma interpolation for packed RGB output lands half a luma row
 * away from the JPEG position whatever src_v_chr_pos says, and without
 * SWS_FULL_CHR_H_INT it replicates chroma horizontally. On a sharp colour
 * edge that is up to 80 levels away from libjpeg's decode. So subsampled
 * pictures go through full-resolution 4:4:4 first (chroma upsampled,
 * luma copied), and only then to RGB, which matches libjpeg to within 3
 * levels (tests/test_jpeg.c). */
#define ST_JPEG_SWS_FLAGS                                                      \
  (SWS_BILINEAR | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT | SWS_FULL_CHR_H_INP)
/* Chroma subsampling for the encoder: the plain 2x2 average libjpeg uses
 * (swscale's bilinear filter would spread each sample over 4x4 pixels, up
 * to 22 levels off the average on a colour edge). */
#define ST_JPEG_SWS_DOWN_FLAGS (SWS_AREA | SWS_ACCURATE_RND)
/* swscale's neutral brightness, contrast and saturation (16.16 fixed
 * point). */
#define ST_JPEG_SWS_BRIGHTNESS 0
#define ST_JPEG_SWS_UNITY (1 << 16)

/* A picture the codec reuses between calls: allocated for alloc_width x
 * alloc_height (padded up to whole chroma samples), used at any size up to
 * that. */
typedef struct jpeg_scratch {
  AVFrame *frame;
  int alloc_width, alloc_height;
} jpeg_scratch;

struct st_jpeg {
  AVCodecContext *dec;        /* mjpeg decoder, opened once */
  AVFrame *dec_frame;         /* its output, unref'd after each call */
  uint8_t *in_buf;            /* padded copy of the input; grow-only */
  unsigned in_buf_bytes;      /* allocated size of in_buf (av_fast_*) */
  AVPacket *pkt;              /* decode: wraps in_buf; encode: the output */
  jpeg_scratch luma;          /* odd-size luma padded to whole chroma */
  jpeg_scratch yuv444;        /* decode: chroma upsampled to full size */
  struct SwsContext *up_sws;  /* decode: subsampled YUV -> YUV 4:4:4 */
  struct SwsContext *rgb_sws; /* decode: YUV 4:4:4, grey, ... -> RGB24 */
  AVCodecContext *enc;        /* mjpeg encoder, NULL until the first encode */
  int enc_width, enc_height, enc_quality; /* what enc was opened for */
  int64_t enc_pts;            /* increasing timestamps the encoder wants */
  jpeg_scratch rgb_pad;       /* encode: odd-size RGB padded to even */
  jpeg_scratch enc_yuv420;    /* the encoder's input */
  struct SwsContext *enc_sws; /* encode: RGB24 -> YUV 4:2:0 */
};

/* ---- FFmpeg's log: kept, never printed -------------------------------- */

static pthread_once_t jpeg_global_once = PTHREAD_ONCE_INIT;
static _Thread_local char jpeg_log_line[ST_JPEG_LOG_LINE_BYTES];

/* Keeps the last error-or-worse line of the calling thread. The decoder and
 * encoder run single-threaded (thread_count = 1), so their messages come on
 * the thread that called st_jpeg_*. */
static void jpeg_log_cb(void *avcl, int level, const char *fmt, va_list vl) {
  if (level > AV_LOG_ERROR)
    return;
  int print_prefix = 0; /* no "[mjpeg @ 0x...]": the address says nothing */
  char line[ST_JPEG_LOG_LINE_BYTES];
  if (av_log_format_line2(avcl, level, fmt, vl, line, sizeof line,
                          &print_prefix) < 0)
    return;
  size_t n = strlen(line);
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
    line[--n] = '\0';
  if (n > 0)
    memcpy(jpeg_log_line, line, n + 1);
}

static void jpeg_global_init(void) { av_log_set_callback(jpeg_log_cb); }

/* Records err with "jpeg: <what>: <av_strerror> (<last log line>)". */
static int jpeg_fail(int err, const char *what, int averr) {
  char msg[ST_JPEG_AVERR_BYTES];
  if (av_strerror(averr, msg, sizeof msg) < 0)
    snprintf(msg, sizeof msg, "libav error %d", averr);
  if (jpeg_log_line[0])
    return st_error_set(err, "jpeg: %s: %s (%s)", what, msg, jpeg_log_line);
  return st_error_set(err, "jpeg: %s: %s", what, msg);
}

/* ---- construction ------------------------------------------------------ */

int st_jpeg_new(st_jpeg **out) {
  if (!out)
    return st_error_set(ST_EINVAL, "jpeg: NULL output pointer");
  *out = NULL;
  pthread_once(&jpeg_global_once, jpeg_global_init);

  const AVCodec *codec = avcodec_find_decoder(AV_CODEC_ID_MJPEG);
  if (!codec)
    return st_error_set(ST_ENOTSUP, "jpeg: libavcodec has no mjpeg decoder");
  st_jpeg *j = calloc(1, sizeof *j);
  if (!j)
    return st_error_set(ST_ENOMEM, "jpeg: out of memory");
  j->dec = avcodec_alloc_context3(codec);
  j->dec_frame = av_frame_alloc();
  j->pkt = av_packet_alloc();
  j->luma.frame = av_frame_alloc();
  j->yuv444.frame = av_frame_alloc();
  j->rgb_pad.frame = av_frame_alloc();
  j->enc_yuv420.frame = av_frame_alloc();
  if (!j->dec || !j->dec_frame || !j->pkt || !j->luma.frame ||
      !j->yuv444.frame || !j->rgb_pad.frame || !j->enc_yuv420.frame) {
    st_jpeg_free(j);
    return st_error_set(ST_ENOMEM, "jpeg: out of memory");
  }
  /* One thread: frames are small, the server runs one codec per worker,
   * and log lines then arrive on the caller's thread. EXPLODE turns a
   * damaged scan (a truncated file, say) into an error instead of a frame
   * with grey blocks; without it the mjpeg decoder conceals and succeeds. */
  j->dec->thread_count = 1;
  j->dec->err_recognition = AV_EF_EXPLODE;
  int rc = avcodec_open2(j->dec, codec, NULL);
  if (rc < 0) {
    jpeg_fail(ST_ENOTSUP, "cannot open the mjpeg decoder", rc);
    st_jpeg_free(j);
    return ST_ENOTSUP;
  }
  *out = j;
  return ST_OK;
}

void st_jpeg_free(st_jpeg *j) {
  if (!j)
    return;
  avcodec_free_context(&j->dec);
  av_frame_free(&j->dec_frame);
  av_freep(&j->in_buf);
  av_packet_free(&j->pkt);
  av_frame_free(&j->luma.frame);
  av_frame_free(&j->yuv444.frame);
  sws_freeContext(j->up_sws);
  sws_freeContext(j->rgb_sws);
  avcodec_free_context(&j->enc);
  av_frame_free(&j->rgb_pad.frame);
  av_frame_free(&j->enc_yuv420.frame);
  sws_freeContext(j->enc_sws);
  free(j);
}

/* ---- pictures and colour ----------------------------------------------- */

/* Makes s a writable `fmt` picture with alloc_w x alloc_h pixels allocated,
 * reusing the buffer when it fits and nobody else holds it. */
static int scratch_reserve(jpeg_scratch *s, enum AVPixelFormat fmt, int alloc_w,
                           int alloc_h) {
  AVFrame *f = s->frame;
  if (f->buf[0] && f->format == fmt && s->alloc_width == alloc_w &&
      s->alloc_height == alloc_h && av_frame_is_writable(f))
    return ST_OK;
  av_frame_unref(f);
  s->alloc_width = s->alloc_height = 0;
  f->format = fmt;
  f->width = alloc_w;
  f->height = alloc_h;
  int rc = av_frame_get_buffer(f, 0);
  if (rc < 0)
    return jpeg_fail(ST_ENOMEM, "cannot allocate a scratch picture", rc);
  s->alloc_width = alloc_w;
  s->alloc_height = alloc_h;
  return ST_OK;
}

/* Repeats the last column and row of a w x h plane (bpp bytes a pixel)
 * out to padded_w x padded_h. */
static void pad_plane(uint8_t *p, int stride, int bpp, int w, int h,
                      int padded_w, int padded_h) {
  for (int y = 0; y < h; y++) {
    uint8_t *row = p + (size_t)y * stride;
    for (int x = w; x < padded_w; x++)
      memcpy(row + (size_t)x * bpp, row + (size_t)(w - 1) * bpp, (size_t)bpp);
  }
  for (int y = h; y < padded_h; y++)
    memcpy(p + (size_t)y * stride, p + (size_t)(h - 1) * stride,
           (size_t)padded_w * bpp);
}

/* Sets the colour details of a cached context: BT.601 matrices (JPEG's),
 * the given ranges (ignored by swscale on an RGB side). Cheap when nothing
 * changed since the last frame: swscale compares and returns. */
static void set_jpeg_colour(struct SwsContext *sws, int src_full,
                            int dst_full) {
  const int *bt601 = sws_getCoefficients(SWS_CS_ITU601);
  sws_setColorspaceDetails(sws, bt601, src_full, bt601, dst_full,
                           ST_JPEG_SWS_BRIGHTNESS, ST_JPEG_SWS_UNITY,
                           ST_JPEG_SWS_UNITY);
}

/* A cached swscale context for a same-size conversion, or NULL with the
 * error recorded. */
static struct SwsContext *cached_sws(struct SwsContext **slot, int w, int h,
                                     enum AVPixelFormat from,
                                     enum AVPixelFormat to, int flags) {
  *slot = sws_getCachedContext(*slot, w, h, from, w, h, to, flags, NULL, NULL,
                               NULL);
  if (!*slot)
    st_error_set(ST_ENOMEM, "jpeg: cannot set up the %s -> %s conversion",
                 av_get_pix_fmt_name(from), av_get_pix_fmt_name(to));
  return *slot;
}

/* Runs a whole-picture conversion; errors name `what`. */
static int run_sws(struct SwsContext *sws, const uint8_t *const src[],
                   const int src_stride[], int h, uint8_t *const dst[],
                   const int dst_stride[], int err, const char *what) {
  int rows = sws_scale(sws, src, src_stride, 0, h, dst, dst_stride);
  if (rows != h)
    return jpeg_fail(err, what, rows < 0 ? rows : AVERROR_BUG);
  return ST_OK;
}

/* ---- decode ------------------------------------------------------------ */

/* The plain YUV format a deprecated full-range "yuvj" one stands for, and
 * whether it was one. */
static enum AVPixelFormat plain_of_jpeg_format(enum AVPixelFormat f,
                                               int *was_jpeg) {
  *was_jpeg = 1;
  switch (f) {
  case AV_PIX_FMT_YUVJ420P:
    return AV_PIX_FMT_YUV420P;
  case AV_PIX_FMT_YUVJ422P:
    return AV_PIX_FMT_YUV422P;
  case AV_PIX_FMT_YUVJ444P:
    return AV_PIX_FMT_YUV444P;
  case AV_PIX_FMT_YUVJ440P:
    return AV_PIX_FMT_YUV440P;
  case AV_PIX_FMT_YUVJ411P:
    return AV_PIX_FMT_YUV411P;
  default:
    *was_jpeg = 0;
    return f;
  }
}

/* 1 for 8-bit planar YUV with chroma at lower resolution than luma. Other
 * subsampled layouts (12-bit JPEG) go to RGB directly, with swscale's
 * less exact chroma placement. */
static int chroma_subsampled_8bit(const AVPixFmtDescriptor *d) {
  return d && d->nb_components >= 3 && !(d->flags & AV_PIX_FMT_FLAG_RGB) &&
         d->comp[0].depth == 8 &&
         (d->log2_chroma_w > 0 || d->log2_chroma_h > 0);
}

/* Upsamples a subsampled picture into j->yuv444 (same range). An odd-sized
 * picture is processed at its padded size, whole chroma samples, so that
 * each chroma sample keeps covering exactly its luma block: swscale would
 * otherwise stretch ceil(w/2) chroma samples over w luma ones. The
 * decoder's chroma planes already hold the padded count; its luma is
 * copied and padded, because what lies past the picture in libavcodec's
 * buffer is not ours to read. */
static int upsample_chroma(st_jpeg *j, const AVFrame *f,
                           const AVPixFmtDescriptor *d, enum AVPixelFormat fmt,
                           int full_range) {
  int w = f->width, h = f->height;
  int pw = FFALIGN(w, 1 << d->log2_chroma_w);
  int ph = FFALIGN(h, 1 << d->log2_chroma_h);
  const uint8_t *src[4] = {f->data[0], f->data[1], f->data[2], f->data[3]};
  int src_stride[4] = {f->linesize[0], f->linesize[1], f->linesize[2],
                       f->linesize[3]};
  int rc;
  if (pw != w || ph != h) {
    rc = scratch_reserve(&j->luma, AV_PIX_FMT_GRAY8, pw, ph);
    if (rc != ST_OK)
      return rc;
    AVFrame *l = j->luma.frame;
    av_image_copy_plane(l->data[0], l->linesize[0], f->data[0], f->linesize[0],
                        w, h);
    pad_plane(l->data[0], l->linesize[0], 1, w, h, pw, ph);
    src[0] = l->data[0];
    src_stride[0] = l->linesize[0];
  }
  rc = scratch_reserve(&j->yuv444, AV_PIX_FMT_YUV444P, pw, ph);
  if (rc != ST_OK)
    return rc;
  if (!cached_sws(&j->up_sws, pw, ph, fmt, AV_PIX_FMT_YUV444P,
                  ST_JPEG_SWS_FLAGS))
    return ST_ENOMEM;
  set_jpeg_colour(j->up_sws, full_range, full_range);
  return run_sws(j->up_sws, src, src_stride, ph, j->yuv444.frame->data,
                 j->yuv444.frame->linesize, ST_EBADMSG,
                 "chroma upsampling failed");
}

/* Converts the decoded frame into rgb (width*height*3 bytes). */
static int convert_to_rgb(st_jpeg *j, const AVFrame *f, uint8_t *rgb) {
  int was_jpeg;
  enum AVPixelFormat fmt = plain_of_jpeg_format(f->format, &was_jpeg);
  const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(fmt);
  /* JFIF data is full range; only an explicit "limited" tag (the mjpeg
   * decoder sets one for AVI streams that announce ITU-601 levels) says
   * otherwise. */
  int full_range = was_jpeg || f->color_range != AVCOL_RANGE_MPEG;
  if (!d || !sws_isSupportedInput(fmt))
    return st_error_set(ST_EBADMSG, "jpeg: pixel format %s is not supported",
                        d ? d->name : "?");
  const uint8_t *const *src = (const uint8_t *const *)f->data;
  const int *src_stride = f->linesize;
  if (chroma_subsampled_8bit(d)) {
    int rc = upsample_chroma(j, f, d, fmt, full_range);
    if (rc != ST_OK)
      return rc;
    src = (const uint8_t *const *)j->yuv444.frame->data;
    src_stride = j->yuv444.frame->linesize;
    fmt = AV_PIX_FMT_YUV444P;
  }
  if (!cached_sws(&j->rgb_sws, f->width, f->height, fmt, AV_PIX_FMT_RGB24,
                  ST_JPEG_SWS_FLAGS))
    return ST_ENOMEM;
  set_jpeg_colour(j->rgb_sws, full_range, 1);
  uint8_t *dst[4] = {rgb, NULL, NULL, NULL};
  int dst_stride[4] = {f->width * 3, 0, 0, 0};
  return run_sws(j->rgb_sws, src, src_stride, f->height, dst, dst_stride,
                 ST_EBADMSG, "colour conversion failed");
}

/* Sends the packet and takes the picture; the frame is left referenced on
 * success. */
static int decode_picture(st_jpeg *j, size_t len) {
  int rc = avcodec_send_packet(j->dec, j->pkt);
  if (rc < 0)
    return jpeg_fail(ST_EBADMSG, "not a decodable JPEG", rc);
  rc = avcodec_receive_frame(j->dec, j->dec_frame);
  if (rc == AVERROR(EAGAIN))
    return st_error_set(ST_EBADMSG, "jpeg: no complete picture in %zu bytes",
                        len);
  if (rc < 0)
    return jpeg_fail(ST_EBADMSG, "not a decodable JPEG", rc);
  if ((j->dec_frame->flags & AV_FRAME_FLAG_CORRUPT) ||
      j->dec_frame->decode_error_flags)
    return st_error_set(ST_EBADMSG, "jpeg: the picture is damaged");
  return ST_OK;
}

int st_jpeg_decode(st_jpeg *j, const uint8_t *data, size_t len, int width,
                   int height, uint8_t *rgb) {
  if (!j || !rgb || (!data && len > 0))
    return st_error_set(ST_EINVAL, "jpeg: NULL argument");
  if (width < 1 || height < 1 || width > ST_JPEG_MAX_SIDE ||
      height > ST_JPEG_MAX_SIDE)
    return st_error_set(ST_EINVAL, "jpeg: frame size %dx%d out of 1..%d", width,
                        height, ST_JPEG_MAX_SIDE);
  if (len == 0)
    return st_error_set(ST_EBADMSG, "jpeg: empty payload");
  if (len > (size_t)INT_MAX - AV_INPUT_BUFFER_PADDING_SIZE)
    return st_error_set(ST_EBADMSG, "jpeg: %zu-byte payload is too large", len);
  jpeg_log_line[0] = '\0';

  /* libavcodec documents that input needs AV_INPUT_BUFFER_PADDING_SIZE
   * zeroed bytes past the end (its bit readers fetch whole words). The
   * caller's bytes are borrowed and unpadded, so they are copied into a
   * grow-only buffer with zeroed padding (av_fast_padded_malloc). The packet
   * is not reference-counted, so avcodec_send_packet keeps a copy of its
   * own and the buffer is free for reuse on the next call. */
  av_fast_padded_malloc(&j->in_buf, &j->in_buf_bytes, len);
  if (!j->in_buf)
    return st_error_set(ST_ENOMEM, "jpeg: out of memory for %zu bytes", len);
  memcpy(j->in_buf, data, len);
  memset(j->in_buf + len, 0, AV_INPUT_BUFFER_PADDING_SIZE);
  j->pkt->data = j->in_buf;
  j->pkt->size = (int)len;

  /* A JPEG that claims many more pixels than the message declares fails
   * inside the decoder, before it allocates the picture. libavcodec checks
   * the limit against its padded buffer size, hence the rounding up. */
  j->dec->max_pixels = (int64_t)FFALIGN(width, ST_JPEG_DECODE_ALIGN) *
                       FFALIGN(height, ST_JPEG_DECODE_ALIGN);
  int rc = decode_picture(j, len);
  av_packet_unref(j->pkt);
  if (rc == ST_OK &&
      (j->dec_frame->width != width || j->dec_frame->height != height))
    rc = st_error_set(ST_EBADMSG, "jpeg: frame is %dx%d, message says %dx%d",
                      j->dec_frame->width, j->dec_frame->height, width, height);
  if (rc == ST_OK)
    rc = convert_to_rgb(j, j->dec_frame, rgb);
  av_frame_unref(j->dec_frame);
  /* After a failure the decoder may hold half a picture or a pending
   * packet; the next frame starts clean. */
  if (rc != ST_OK)
    avcodec_flush_buffers(j->dec);
  return rc;
}

/* ---- encode ------------------------------------------------------------ */

/* quality 1..100 -> qscale 31..2, linear, rounded to nearest. */
static int qscale_of_quality(int quality) {
  const int qspan = ST_JPEG_COARSEST_QSCALE - ST_JPEG_FINEST_QSCALE;
  const int span = ST_JPEG_MAX_QUALITY - ST_JPEG_MIN_QUALITY;
  return ST_JPEG_COARSEST_QSCALE -
         ((quality - ST_JPEG_MIN_QUALITY) * qspan + span / 2) / span;
}

/* (Re)opens the encoder for this size and quality. */
static int open_encoder(st_jpeg *j, int width, int height, int quality) {
  avcodec_free_context(&j->enc);
  const AVCodec *codec = avcodec_find_encoder(AV_CODEC_ID_MJPEG);
  if (!codec)
    return st_error_set(ST_ENOTSUP, "jpeg: libavcodec has no mjpeg encoder");
  j->enc = avcodec_alloc_context3(codec);
  if (!j->enc)
    return st_error_set(ST_ENOMEM, "jpeg: out of memory");
  AVCodecContext *c = j->enc;
  c->width = width;
  c->height = height;
  /* libavcodec 59 wants the full-range format by its "yuvj" name for
   * baseline JPEG. */
  c->pix_fmt = AV_PIX_FMT_YUVJ420P;
  c->color_range = AVCOL_RANGE_JPEG;
  c->time_base = (AVRational){1, ST_JPEG_ENCODER_FPS};
  c->thread_count = 1;
  /* A fixed quantiser: lambda = FF_QP2LAMBDA * qscale. With QSCALE set
   * the encoder takes each picture's lambda from the frame's quality
   * field, so encode_picture sets that too. */
  c->flags |= AV_CODEC_FLAG_QSCALE;
  c->global_quality = FF_QP2LAMBDA * qscale_of_quality(quality);
  int rc = avcodec_open2(c, codec, NULL);
  if (rc < 0) {
    rc = jpeg_fail(ST_ENOTSUP, "cannot open the mjpeg encoder", rc);
    avcodec_free_context(&j->enc);
    return rc;
  }
  j->enc_width = width;
  j->enc_height = height;
  j->enc_quality = quality;
  j->enc_pts = 0;
  return ST_OK;
}

/* RGB24 -> the encoder's full-range YUV 4:2:0 picture. Each chroma sample
 * is the plain average of its 2x2 block, as libjpeg's is (swscale's area
 * filter; its RGB-input path places chroma correctly, unlike the RGB-output
 * one). An odd-sized frame is first padded by repeating its last column
 * and row, so the blocks stay aligned instead of being stretched. */
static int convert_from_rgb(st_jpeg *j, const uint8_t *rgb, int width,
                            int height) {
  int pw = FFALIGN(width, 2), ph = FFALIGN(height, 2);
  const uint8_t *src[4] = {rgb, NULL, NULL, NULL};
  int src_stride[4] = {width * 3, 0, 0, 0};
  int rc;
  if (pw != width || ph != height) {
    rc = scratch_reserve(&j->rgb_pad, AV_PIX_FMT_RGB24, pw, ph);
    if (rc != ST_OK)
      return rc;
    AVFrame *p = j->rgb_pad.frame;
    av_image_copy_plane(p->data[0], p->linesize[0], rgb, width * 3, width * 3,
                        height);
    pad_plane(p->data[0], p->linesize[0], 3, width, height, pw, ph);
    src[0] = p->data[0];
    src_stride[0] = p->linesize[0];
  }
  rc = scratch_reserve(&j->enc_yuv420, AV_PIX_FMT_YUVJ420P, pw, ph);
  if (rc != ST_OK)
    return rc;
  AVFrame *out = j->enc_yuv420.frame;
  if (!cached_sws(&j->enc_sws, pw, ph, AV_PIX_FMT_RGB24, AV_PIX_FMT_YUV420P,
                  ST_JPEG_SWS_DOWN_FLAGS))
    return ST_ENOMEM;
  set_jpeg_colour(j->enc_sws, 0, 1);
  rc = run_sws(j->enc_sws, src, src_stride, ph, out->data, out->linesize,
               ST_EBACKEND, "colour conversion failed");
  /* The encoder sees the picture's own size; it codes partial blocks by
   * repeating edges itself. */
  out->width = width;
  out->height = height;
  return rc;
}

/* Runs one frame through the open encoder; the packet is left in j->pkt. */
static int encode_picture(st_jpeg *j) {
  AVFrame *f = j->enc_yuv420.frame;
  f->pts = j->enc_pts++;
  f->quality = j->enc->global_quality;
  f->color_range = AVCOL_RANGE_JPEG;
  int rc = avcodec_send_frame(j->enc, f);
  if (rc < 0)
    return jpeg_fail(ST_EBACKEND, "mjpeg encoder refused the frame", rc);
  rc = avcodec_receive_packet(j->enc, j->pkt);
  if (rc < 0)
    return jpeg_fail(ST_EBACKEND, "mjpeg encoder gave no packet", rc);
  return ST_OK;
}

int st_jpeg_encode(st_jpeg *j, const uint8_t *rgb, int width, int height,
                   int quality, uint8_t **out, size_t *out_len) {
  if (!j || !rgb || !out || !out_len)
    return st_error_set(ST_EINVAL, "jpeg: NULL argument");
  *out = NULL;
  *out_len = 0;
  if (width < 1 || height < 1 || width > ST_JPEG_MAX_SIDE ||
      height > ST_JPEG_MAX_SIDE)
    return st_error_set(ST_EINVAL, "jpeg: frame size %dx%d out of 1..%d", width,
                        height, ST_JPEG_MAX_SIDE);
  if (quality < ST_JPEG_MIN_QUALITY || quality > ST_JPEG_MAX_QUALITY)
    return st_error_set(ST_EINVAL, "jpeg: quality %d out of %d..%d", quality,
                        ST_JPEG_MIN_QUALITY, ST_JPEG_MAX_QUALITY);
  jpeg_log_line[0] = '\0';

  int rc = ST_OK;
  if (!j->enc || j->enc_width != width || j->enc_height != height ||
      j->enc_quality != quality)
    rc = open_encoder(j, width, height, quality);
  if (rc == ST_OK)
    rc = convert_from_rgb(j, rgb, width, height);
  if (rc == ST_OK)
    rc = encode_picture(j);
  if (rc == ST_OK) {
    /* One byte at least, so a zero-size packet (never seen) still gives a
     * buffer the caller can free. */
    *out = malloc(j->pkt->size > 0 ? (size_t)j->pkt->size : 1);
    if (*out) {
      if (j->pkt->size > 0)
        memcpy(*out, j->pkt->data, (size_t)j->pkt->size);
      *out_len = (size_t)j->pkt->size;
    } else {
      rc = st_error_set(ST_ENOMEM, "jpeg: out of memory for %d bytes",
                        j->pkt->size);
    }
  }
  av_packet_unref(j->pkt);
  /* An encoder that failed half-way is not trusted with the next frame. */
  if (rc != ST_OK)
    avcodec_free_context(&j->enc);
  return rc;
}
