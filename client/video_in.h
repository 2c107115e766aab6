/* Video in: libavformat demuxes a file, an rtsp:// stream (TCP transport by
 * default), a V4L2 camera (/dev/videoN through libavdevice) or stdin ("-"),
 * libavcodec decodes, libswscale converts every frame to packed RGB at the
 * size the student runs at. All of it runs on the reader's own thread,
 * ahead of the student, through a small bounded queue of frame slots.
 *
 * Flow control:
 *  - a file or stdin without realtime: the reader waits when the queue is
 *    full, so every frame reaches the student;
 *  - a file with realtime: the reader releases each frame at its
 *    timestamp (wall clock since start), and when the queue is full it
 *    drops the oldest waiting frame (counted), as a camera would;
 *  - a live source (camera, network stream): no pacing (the source paces
 *    itself), and the oldest waiting frame is dropped when the queue is
 *    full (counted), so the student always sees the newest frames.
 * Corrupt input: packets the decoder refuses and frames it reports as
 * corrupt are counted and decoding goes on; a refused packet yields no
 * frame, a corrupt (concealed) frame is delivered and flagged.
 *
 * Threading: st_video_in_open/start/next/release/stop/free are called from
 * one consumer thread; the reader thread owns every FFmpeg object. Errors
 * come back as status codes with a detail line that names the input and
 * FFmpeg's reason (av_strerror), never as FFmpeg log output.
 *
 * Ownership: the reader owns the frame slots; a frame returned by
 * st_video_in_next is the caller's until st_video_in_release.
 */
#ifndef ST_CLIENT_VIDEO_IN_H
#define ST_CLIENT_VIDEO_IN_H

#include <stdint.h>

/* Consecutive demuxer errors (not end of file) after which the input is
 * declared broken. */
#define ST_VIDEO_MAX_CONSECUTIVE_READ_ERRORS 32
/* Frame rate assumed when the stream states none. */
#define ST_VIDEO_DEFAULT_FPS 25
/* Socket timeout of network streams, so a dead camera ends the input. */
#define ST_VIDEO_NETWORK_TIMEOUT_US 10000000

typedef struct st_video_in st_video_in;

typedef struct st_video_in_options {
  const char *input;          /* file, URL, /dev/videoN, "-" (stdin) */
  const char *format;         /* demuxer name; NULL: probe */
  const char *rtsp_transport; /* "tcp" or "udp" */
  int width, height;          /* delivered size; 0: the source's */
  int64_t loops;              /* plays of a file; 0: forever */
  int realtime;               /* pace a file to its timestamps, drop late */
  int64_t max_frames;         /* frames taken from the input; 0: all */
  int decode_threads;         /* libavcodec threads; 0: FFmpeg's choice */
  int queue_frames;           /* decoded frames waiting, >= 1 */
  int nice;                   /* the reader thread's nice value (Linux:
                                 per thread); 0: the caller's */
} st_video_in_options;

typedef struct st_video_info {
  int width, height;         /* delivered frames (the student's size) */
  int src_width, src_height; /* the stream's */
  int fps_num, fps_den;      /* frame rate, never 0 */
  int64_t frames_total;      /* frames the whole run will read; -1: unknown */
  int live;                  /* camera or network stream */
  char codec[32];            /* decoder name ("h264") */
  char format[32];           /* demuxer name ("mov,mp4,...") */
} st_video_info;

typedef struct st_video_frame {
  uint8_t *rgb;   /* width*height*3 bytes, RGB u8 row-major */
  int64_t index;  /* frame number in the input, from 0, across loops */
  int64_t pts_us; /* presentation time from the start, across loops */
  int corrupt;    /* the decoder concealed errors in this frame */
} st_video_frame;

typedef struct st_video_in_counters {
  int64_t decoded;       /* frames the decoder produced */
  int64_t dropped;       /* of those, dropped before the student saw them */
  int64_t decode_errors; /* packets or frames the decoder refused */
  int64_t corrupt;       /* frames delivered with concealed errors */
  int64_t plays;         /* plays started (loops) */
} st_video_in_counters;

/* Opens the input and its decoder (nothing runs yet). Fails with ST_EIO /
 * ST_ENOENT / ST_EFORMAT and a detail line naming the input. */
int st_video_in_open(const st_video_in_options *o, st_video_in **out);
void st_video_in_get_info(const st_video_in *v, st_video_info *info);
/* Starts the reader thread. */
int st_video_in_start(st_video_in *v);
/* Waits up to timeout_ms for the next frame. ST_OK with *f set, or with
 * *f NULL at the end of the input; ST_ETIMEDOUT when none came in time;
 * another code when the input failed (after the frames read before the
 * failure have been delivered). */
int st_video_in_next(st_video_in *v, int timeout_ms, st_video_frame **f);
void st_video_in_release(st_video_in *v, st_video_frame *f);
void st_video_in_get_counters(st_video_in *v, st_video_in_counters *c);
/* Asks the reader to stop (interrupting a blocking read); any thread. */
void st_video_in_stop(st_video_in *v);
/* Stops, joins and frees. Accepts NULL. */
void st_video_in_free(st_video_in *v);

#endif
