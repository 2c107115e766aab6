/* What the client writes for the user, on its own thread behind a bounded
 * queue: the overlay video (frames with the class map alpha-blended in
 * fixed class colours, encoded with libavcodec: H.264 through libx264 when
 * this libavcodec has it, else MPEG-4, at the input's frame rate, muxed by
 * libavformat according to the file name) and the class maps as PNG
 * pictures with an index-colour palette (libavcodec's png encoder, PAL8),
 * one per frame or per K-th frame.
 *
 * The queue never drops: st_video_out_push waits while it is full, so
 * every processed frame reaches the file. A writer failure (disk full, a
 * codec error) is kept and returned by the next push and by close.
 *
 * Ownership: push copies the caller's pixels; the writer owns its FFmpeg
 * objects and slots until st_video_out_free.
 */
#ifndef ST_CLIENT_VIDEO_OUT_H
#define ST_CLIENT_VIDEO_OUT_H

#include <stdint.h>

/* Overlay encoding: x264's fastest preset (on a 2-core CPU `veryfast`
 * encoded 720p at a third of the student's rate; docs/performance.md),
 * its constant quality, and MPEG-4's fixed quantiser (2 finest .. 31
 * coarsest). */
#define ST_OVERLAY_X264_PRESET "ultrafast"
#define ST_OVERLAY_X264_CRF "23"
#define ST_OVERLAY_MPEG4_QSCALE 4
/* A key frame (I-frame) every this many seconds of video. */
#define ST_OVERLAY_GOP_SECONDS 2
/* Encoder threads: one, so the writer leaves the cores to the student. */
#define ST_OVERLAY_ENCODER_THREADS 1
/* Class-map files: DIR/frame_<index>.png, index zero-padded. */
#define ST_MASK_NAME_FORMAT "%s/frame_%08lld.png"

typedef struct st_video_out st_video_out;

typedef struct st_video_out_options {
  const char *path;      /* overlay video; NULL: none */
  const char *codec;     /* "auto", "h264" or "mpeg4" */
  int fps_num, fps_den;  /* the input's frame rate */
  int width, height;     /* of the frames pushed */
  double alpha;          /* class colour opacity, 0..1 */
  const char *masks_dir; /* PNG class maps; NULL: none (created if absent) */
  int queue_frames;      /* frames waiting for the writer, >= 1 */
  int nice;              /* the writer thread's nice value; 0: the caller's */
} st_video_out_options;

/* Opens the outputs (the file is created and its header written now, so
 * an unwritable path fails here) and starts the writer thread. */
int st_video_out_open(const st_video_out_options *o, st_video_out **out);
/* Queues one processed frame: rgb (width*height*3) and labels
 * (width*height) are copied. `index` is the frame's number in the input: it
 * times the overlay frame (index / fps) and names the PNG. `mask`: write
 * its class map. Waits while the queue is full. */
int st_video_out_push(st_video_out *w, const uint8_t *rgb,
                      const uint8_t *labels, int64_t index, int mask);
/* Drains the queue, flushes the encoder, finishes the file and joins the
 * thread. Returns the first failure of the writer. */
int st_video_out_close(st_video_out *w);
/* Overlay frames and PNG maps written so far. */
void st_video_out_get_counters(st_video_out *w, int64_t *frames,
                               int64_t *masks);
/* The overlay encoder's name ("libx264"); "" without an overlay. */
const char *st_video_out_codec(const st_video_out *w);
/* Accepts NULL; closes first if needed. */
void st_video_out_free(st_video_out *w);

#endif
