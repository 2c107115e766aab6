/* Algorithm 4 of ShadowTutor, the client's side of key-frame striding, as
 * a pure state machine (no clock, no threads, no I/O) so that the daemon
 * and the tests drive exactly the same logic.
 *
 * Frames are counted as the student processes them (a frame dropped by
 * --realtime before the student saw it does not count). The first frame
 * is a key frame; after a key frame at frame k the next one is due at
 * k + stride, where stride is the latest one known (the welcome's, then
 * each update's). A key frame is sent without waiting: the student keeps
 * running with its current weights. When no update for it has come by
 * frame k + min_stride:
 *   - ST_WAIT_BLOCK (the paper): the client waits for it before that frame
 *     (bounded by the caller's timeout, after which it gives up on that
 *     update and runs on);
 *   - ST_WAIT_NEVER: the client runs on and counts each frame processed
 *     while the update is overdue ("frames past due").
 * At most one key frame is awaited at a time: a key frame that falls due
 * while one is awaited is sent as soon as the update arrives. Without a
 * server session nothing is sent or awaited (the student runs on), and
 * after a reconnect a key frame goes out at once, so the server can resync
 * the client's version without waiting a whole stride.
 */
#ifndef ST_CLIENT_SCHEDULE_H
#define ST_CLIENT_SCHEDULE_H

#include <stdint.h>

typedef enum st_wait_policy { ST_WAIT_BLOCK = 0, ST_WAIT_NEVER } st_wait_policy;

int st_wait_policy_from_name(const char *name, st_wait_policy *out);

typedef enum st_sched_action {
  ST_SCHED_RUN = 0,  /* run the student on the frame */
  ST_SCHED_KEYFRAME, /* send the frame as a key frame, then run the student */
  ST_SCHED_WAIT,     /* wait for the awaited update before this frame */
} st_sched_action;

typedef struct st_schedule {
  st_wait_policy policy;
  int32_t stride;        /* frames between key frames, now */
  int32_t min_stride;    /* frames a key frame's update may take */
  int64_t frame;         /* frames processed: index of the next one */
  int64_t last_key;      /* frame of the last key frame sent; -1: none */
  uint64_t next_seq;     /* seq of the next key frame (from 1) */
  uint64_t awaited;      /* seq of the key frame awaited; 0: none */
  int64_t awaited_frame; /* its frame */
  int gave_up;           /* the block wait for `awaited` timed out */
  int keyframe_asap;     /* send one at the next frame (reconnected) */
  /* Counters. */
  int64_t keyframes;         /* key frames handed to the network */
  int64_t keyframes_lost;    /* of those, never sent or never answered */
  int64_t frames_past_due;   /* frames run while an update was overdue */
  int64_t waits;             /* block waits begun */
  int64_t wait_timeouts;     /* block waits that gave up */
  int64_t last_update_delay; /* frames between the last answered key frame
                                and its update; -1: none yet */
} st_schedule;

/* stride and min_stride are clamped to >= 1. */
void st_schedule_init(st_schedule *s, st_wait_policy policy, int32_t stride,
                      int32_t min_stride);
/* What to do before frame s->frame, given whether a server session is up. */
st_sched_action st_schedule_decide(const st_schedule *s, int online);
/* The caller sent frame s->frame as a key frame: returns its seq. */
uint64_t st_schedule_keyframe_sent(st_schedule *s);
/* The student has run on frame s->frame. */
void st_schedule_frame_done(st_schedule *s);
/* An update arrived (applied or not): its stride becomes the stride; it
 * answers the awaited key frame when its seq is at least that one's. */
void st_schedule_on_update(st_schedule *s, uint64_t seq, int32_t stride);
/* The network could not send key frame `seq`, or the server refused it. */
void st_schedule_on_key_lost(st_schedule *s, uint64_t seq);
/* A session is up: the welcome's stride and min_stride. `resumed_link` is
 * 1 for every session after the first (a key frame goes out at once). */
void st_schedule_on_online(st_schedule *s, int32_t stride, int32_t min_stride,
                           int resumed_link);
/* The session is gone: its awaited update will never come. */
void st_schedule_on_offline(st_schedule *s);
/* The block wait for the awaited update passed its deadline. */
void st_schedule_give_up(st_schedule *s);

#endif
