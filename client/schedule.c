#include "schedule.h"

#include <string.h>

#include "base/error.h"

int st_wait_policy_from_name(const char *name, st_wait_policy *out) {
  if (strcmp(name, "block") == 0)
    *out = ST_WAIT_BLOCK;
  else if (strcmp(name, "never") == 0)
    *out = ST_WAIT_NEVER;
  else
    return st_error_set(ST_EINVAL,
                        "wait policy must be block or never, "
                        "not '%s'",
                        name);
  return ST_OK;
}

static int32_t at_least_one(int32_t v) { return v < 1 ? 1 : v; }

void st_schedule_init(st_schedule *s, st_wait_policy policy, int32_t stride,
                      int32_t min_stride) {
  memset(s, 0, sizeof *s);
  s->policy = policy;
  s->stride = at_least_one(stride);
  s->min_stride = at_least_one(min_stride);
  s->last_key = -1;
  s->next_seq = 1;
  s->last_update_delay = -1;
}

/* 1 when the awaited update is late: min_stride frames have run since its
 * key frame. */
static int overdue(const st_schedule *s) {
  return s->awaited && s->frame - s->awaited_frame >= s->min_stride;
}

st_sched_action st_schedule_decide(const st_schedule *s, int online) {
  if (!online)
    return ST_SCHED_RUN;
  if (s->policy == ST_WAIT_BLOCK && overdue(s) && !s->gave_up)
    return ST_SCHED_WAIT;
  int due = s->keyframe_asap || s->last_key < 0 ||
            s->frame - s->last_key >= s->stride;
  return due && !s->awaited ? ST_SCHED_KEYFRAME : ST_SCHED_RUN;
}

uint64_t st_schedule_keyframe_sent(st_schedule *s) {
  uint64_t seq = s->next_seq++;
  s->last_key = s->frame;
  s->awaited = seq;
  s->awaited_frame = s->frame;
  s->gave_up = 0;
  s->keyframe_asap = 0;
  s->keyframes++;
  return seq;
}

void st_schedule_frame_done(st_schedule *s) {
  if (overdue(s))
    s->frames_past_due++;
  s->frame++;
}

void st_schedule_on_update(st_schedule *s, uint64_t seq, int32_t stride) {
  s->stride = at_least_one(stride);
  if (s->awaited && seq >= s->awaited) {
    s->last_update_delay = s->frame - s->awaited_frame;
    s->awaited = 0;
    s->gave_up = 0;
  }
}

void st_schedule_on_key_lost(st_schedule *s, uint64_t seq) {
  if (s->awaited && seq == s->awaited) {
    s->awaited = 0;
    s->gave_up = 0;
    s->keyframes_lost++;
  }
}

void st_schedule_on_online(st_schedule *s, int32_t stride, int32_t min_stride,
                           int resumed_link) {
  s->stride = at_least_one(stride);
  s->min_stride = at_least_one(min_stride);
  if (resumed_link)
    s->keyframe_asap = 1;
}

void st_schedule_on_offline(st_schedule *s) {
  if (s->awaited) {
    s->awaited = 0;
    s->gave_up = 0;
    s->keyframes_lost++;
  }
}

void st_schedule_give_up(st_schedule *s) {
  if (s->awaited && !s->gave_up) {
    s->gave_up = 1;
    s->wait_timeouts++;
  }
}
