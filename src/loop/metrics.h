/* Server metrics: counters, gauges and latency histograms, rendered in the
 * Prometheus text exposition format (version 0.0.4) for GET /metrics.
 *
 * Updated from the loop thread and from worker threads at once, so every
 * value is a C11 atomic; rendering reads a consistent-enough snapshot
 * without locks (each value is read once). Names follow Prometheus
 * conventions: `shadowtutor_` prefix, `_total` for counters, `_seconds`
 * histograms with cumulative `le` buckets, `_sum` and `_count`.
 *
 * Ownership: an st_metrics owns its storage; st_metrics_render returns a
 * malloc'd string the caller frees.
 */
#ifndef ST_LOOP_METRICS_H
#define ST_LOOP_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* XX(id, prometheus name, help) -- monotonically increasing counters. */
#define ST_METRIC_COUNTERS(XX)                                                 \
  XX(SESSIONS, "shadowtutor_sessions_total", "Sessions opened (welcome sent).") \
  XX(CONNECTIONS, "shadowtutor_connections_total", "TCP connections accepted.") \
  XX(KEYFRAMES, "shadowtutor_keyframes_total", "Key frames received.")          \
  XX(OFFLOADS, "shadowtutor_offloads_total", "Offload frames received.")        \
  XX(UPDATES, "shadowtutor_updates_total", "Updates sent.")                     \
  XX(LABELS, "shadowtutor_labels_total", "Label maps sent (offload mode).")     \
  XX(DROPS, "shadowtutor_keyframes_dropped_total",                              \
     "Waiting key frames replaced by a newer one.")                             \
  XX(RESYNCS, "shadowtutor_resyncs_total", "Full updates sent after a version mismatch.") \
  XX(UPDATES_EMPTY, "shadowtutor_updates_empty_total",                          \
     "Updates without tensors: the key frame changed nothing.")                 \
  XX(RESUMES, "shadowtutor_resumes_total", "Sessions continued by a resume.")   \
  XX(BYTES_IN, "shadowtutor_bytes_received_total", "Bytes read from clients.")  \
  XX(BYTES_OUT, "shadowtutor_bytes_sent_total", "Bytes written to clients.")    \
  XX(DISTILL_STEPS, "shadowtutor_distill_steps_total", "Adam steps taken.")

/* XX(id, prometheus name, help) -- values that go up and down. */
#define ST_METRIC_GAUGES(XX)                                                   \
  XX(SESSIONS_ACTIVE, "shadowtutor_sessions_active", "Open sessions.")         \
  XX(CONNECTIONS_ACTIVE, "shadowtutor_connections_active", "Open connections.") \
  XX(QUEUE_DEPTH, "shadowtutor_queue_depth", "Jobs waiting for a worker.")      \
  XX(JOBS_RUNNING, "shadowtutor_jobs_running", "Jobs on a worker now.")

/* XX(id, label value) -- stages of the per-stage latency histogram
 * shadowtutor_stage_seconds{stage="..."}. */
#define ST_METRIC_STAGES(XX)                                                   \
  XX(QUEUE, "queue") XX(DECODE, "decode") XX(TEACHER, "teacher")               \
  XX(DISTILL, "distill") XX(ENCODE, "encode") XX(TOTAL, "total")

typedef enum st_counter {
#define ST__CTR(id, name, help) ST_CTR_##id,
  ST_METRIC_COUNTERS(ST__CTR)
#undef ST__CTR
  ST_CTR_COUNT
} st_counter;

typedef enum st_gauge {
#define ST__GAUGE(id, name, help) ST_GAUGE_##id,
  ST_METRIC_GAUGES(ST__GAUGE)
#undef ST__GAUGE
  ST_GAUGE_COUNT
} st_gauge;

typedef enum st_stage {
#define ST__STAGE(id, label) ST_STAGE_##id,
  ST_METRIC_STAGES(ST__STAGE)
#undef ST__STAGE
  ST_STAGE_COUNT
} st_stage;

typedef struct st_metrics st_metrics;

int st_metrics_new(st_metrics **out);
void st_metrics_free(st_metrics *m); /* accepts NULL */

void st_metrics_add(st_metrics *m, st_counter c, uint64_t n);
void st_metrics_gauge_add(st_metrics *m, st_gauge g, int64_t delta);
void st_metrics_gauge_set(st_metrics *m, st_gauge g, int64_t value);
/* Counts one error sent to a client, by wire code: the counter
 * shadowtutor_errors_total{code="bad_message"} (every code of
 * ST_ERRNO_MAP has a series, zeros included). */
void st_metrics_error(st_metrics *m, int err);
/* Records one stage duration in milliseconds (negative and NaN are
 * recorded as 0). */
void st_metrics_observe_ms(st_metrics *m, st_stage s, double ms);

/* Reads one counter / gauge (for tests and logs). */
uint64_t st_metrics_counter(const st_metrics *m, st_counter c);
int64_t st_metrics_gauge(const st_metrics *m, st_gauge g);
uint64_t st_metrics_errors(const st_metrics *m, int err);
/* Number of observations of a stage so far. */
uint64_t st_metrics_stage_count(const st_metrics *m, st_stage s);

/* The whole exposition text; *out is malloc'd (NUL-terminated). */
int st_metrics_render(const st_metrics *m, char **out, size_t *out_len);

#endif
