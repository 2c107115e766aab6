#include "loop/metrics.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

/* Upper bounds of the latency buckets, in milliseconds (what callers
 * measure) and as the `le` label in seconds (what Prometheus expects),
 * written out so the text is exact rather than printed from a double. The
 * +Inf bucket follows them. */
typedef struct bucket_bound {
  double ms;
  const char *le;
} bucket_bound;

static const bucket_bound bucket_bounds[] = {
    {1.0, "0.001"},  {2.5, "0.0025"}, {5.0, "0.005"},  {10.0, "0.01"},
    {25.0, "0.025"}, {50.0, "0.05"},  {100.0, "0.1"},  {250.0, "0.25"},
    {500.0, "0.5"},  {1000.0, "1"},   {2500.0, "2.5"}, {5000.0, "5"},
    {10000.0, "10"},
};
enum {
  FINITE_BUCKETS = sizeof bucket_bounds / sizeof bucket_bounds[0],
  BUCKETS = FINITE_BUCKETS + 1, /* + the +Inf bucket */
};

#define US_PER_MS 1000.0
#define US_PER_S 1000000u
/* Durations are summed in whole microseconds; one observation is capped so
 * the double-to-integer conversion stays defined (about 292 years). */
#define MAX_OBSERVATION_US 9.2e18

/* Error series: one per ST_ERRNO_MAP code, then one for any code outside
 * the map (named by st_err_name too: "unknown"). */
static const int error_codes[] = {
#define ST__ERR_CODE(sym, wire, msg) ST_##sym,
    ST_ERRNO_MAP(ST__ERR_CODE)
#undef ST__ERR_CODE
};
/* st_err_name's name for codes outside the map. */
#define UNKNOWN_ERROR "unknown"
enum {
  KNOWN_ERRORS = sizeof error_codes / sizeof error_codes[0],
  ERROR_SERIES = KNOWN_ERRORS + 1,
};

typedef struct counter_info {
  const char *name, *help;
} counter_info;

static const counter_info counter_infos[] = {
#define ST__CTR_INFO(id, name, help) {name, help},
    ST_METRIC_COUNTERS(ST__CTR_INFO)
#undef ST__CTR_INFO
};
static const counter_info gauge_infos[] = {
#define ST__GAUGE_INFO(id, name, help) {name, help},
    ST_METRIC_GAUGES(ST__GAUGE_INFO)
#undef ST__GAUGE_INFO
};
static const char *const stage_labels[] = {
#define ST__STAGE_LABEL(id, label) label,
    ST_METRIC_STAGES(ST__STAGE_LABEL)
#undef ST__STAGE_LABEL
};

#define ERRORS_NAME "shadowtutor_errors_total"
#define ERRORS_HELP "Error messages sent to clients, by wire code."
#define STAGE_NAME "shadowtutor_stage_seconds"
#define STAGE_HELP "Time spent per job stage."

/* One stage's histogram. Buckets hold non-cumulative counts (one atomic
 * increment per observation); rendering makes them cumulative, and the
 * count is their total, so `_count` always equals the +Inf bucket. The sum
 * is an integer number of microseconds because C11 has no portable atomic
 * add on doubles; microseconds keep it exact for 584,000 years of time. */
typedef struct stage_histogram {
  _Atomic uint64_t buckets[BUCKETS];
  _Atomic uint64_t sum_us;
} stage_histogram;

struct st_metrics {
  _Atomic uint64_t counters[ST_CTR_COUNT];
  _Atomic int64_t gauges[ST_GAUGE_COUNT];
  _Atomic uint64_t errors[ERROR_SERIES];
  stage_histogram stages[ST_STAGE_COUNT];
};

int st_metrics_new(st_metrics **out) {
  *out = NULL;
  st_metrics *m = malloc(sizeof *m);
  if (!m)
    return st_error_set(ST_ENOMEM, "metrics: out of memory");
  for (int i = 0; i < ST_CTR_COUNT; i++)
    atomic_init(&m->counters[i], 0);
  for (int i = 0; i < ST_GAUGE_COUNT; i++)
    atomic_init(&m->gauges[i], 0);
  for (int i = 0; i < ERROR_SERIES; i++)
    atomic_init(&m->errors[i], 0);
  for (int s = 0; s < ST_STAGE_COUNT; s++) {
    for (int b = 0; b < BUCKETS; b++)
      atomic_init(&m->stages[s].buckets[b], 0);
    atomic_init(&m->stages[s].sum_us, 0);
  }
  *out = m;
  return ST_OK;
}

void st_metrics_free(st_metrics *m) { free(m); }

/* Values are independent statistics; no other memory is published through
 * them, so relaxed ordering suffices everywhere. */
void st_metrics_add(st_metrics *m, st_counter c, uint64_t n) {
  if ((unsigned)c < ST_CTR_COUNT)
    atomic_fetch_add_explicit(&m->counters[c], n, memory_order_relaxed);
}

void st_metrics_gauge_add(st_metrics *m, st_gauge g, int64_t delta) {
  if ((unsigned)g < ST_GAUGE_COUNT)
    atomic_fetch_add_explicit(&m->gauges[g], delta, memory_order_relaxed);
}

void st_metrics_gauge_set(st_metrics *m, st_gauge g, int64_t value) {
  if ((unsigned)g < ST_GAUGE_COUNT)
    atomic_store_explicit(&m->gauges[g], value, memory_order_relaxed);
}

/* Series index of a status code; codes outside the map share the last. */
static int error_series(int err) {
  for (int i = 0; i < KNOWN_ERRORS; i++)
    if (error_codes[i] == err)
      return i;
  return KNOWN_ERRORS;
}

void st_metrics_error(st_metrics *m, int err) {
  atomic_fetch_add_explicit(&m->errors[error_series(err)], 1,
                            memory_order_relaxed);
}

void st_metrics_observe_ms(st_metrics *m, st_stage s, double ms) {
  if ((unsigned)s >= ST_STAGE_COUNT)
    return;
  if (!(ms > 0.0)) /* negative and NaN */
    ms = 0.0;
  int b = 0;
  while (b < FINITE_BUCKETS && !(ms <= bucket_bounds[b].ms))
    b++;
  double us = nearbyint(ms * US_PER_MS);
  if (us > MAX_OBSERVATION_US)
    us = MAX_OBSERVATION_US;
  stage_histogram *h = &m->stages[s];
  atomic_fetch_add_explicit(&h->buckets[b], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->sum_us, (uint64_t)us, memory_order_relaxed);
}

uint64_t st_metrics_counter(const st_metrics *m, st_counter c) {
  if ((unsigned)c >= ST_CTR_COUNT)
    return 0;
  return atomic_load_explicit(&m->counters[c], memory_order_relaxed);
}

int64_t st_metrics_gauge(const st_metrics *m, st_gauge g) {
  if ((unsigned)g >= ST_GAUGE_COUNT)
    return 0;
  return atomic_load_explicit(&m->gauges[g], memory_order_relaxed);
}

uint64_t st_metrics_errors(const st_metrics *m, int err) {
  return atomic_load_explicit(&m->errors[error_series(err)],
                              memory_order_relaxed);
}

uint64_t st_metrics_stage_count(const st_metrics *m, st_stage s) {
  if ((unsigned)s >= ST_STAGE_COUNT)
    return 0;
  uint64_t n = 0;
  for (int b = 0; b < BUCKETS; b++)
    n += atomic_load_explicit(&m->stages[s].buckets[b], memory_order_relaxed);
  return n;
}

/* ---- rendering ----------------------------------------------------------- */

/* A growing text buffer; after a failed append `failed` is set and later
 * appends do nothing, so rendering checks once at the end. */
typedef struct text_buf {
  char *data;
  size_t len, cap;
  int failed;
} text_buf;

enum { TEXT_INITIAL_BYTES = 8192 };

static void appendf(text_buf *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void appendf(text_buf *t, const char *fmt, ...) {
  if (t->failed)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->data + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      t->failed = 1;
      return;
    }
    if ((size_t)n < t->cap - t->len) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap * 2;
    while (cap - t->len <= (size_t)n)
      cap *= 2;
    char *data = realloc(t->data, cap);
    if (!data) {
      t->failed = 1;
      return;
    }
    t->data = data;
    t->cap = cap;
  }
}

static void header(text_buf *t, const char *name, const char *help,
                   const char *type) {
  appendf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_histogram(text_buf *t, const stage_histogram *h,
                             const char *stage) {
  uint64_t cumulative = 0;
  for (int b = 0; b < BUCKETS; b++) {
    cumulative += atomic_load_explicit(&h->buckets[b], memory_order_relaxed);
    appendf(t, "%s_bucket{stage=\"%s\",le=\"%s\"} %" PRIu64 "\n", STAGE_NAME,
            stage, b < FINITE_BUCKETS ? bucket_bounds[b].le : "+Inf",
            cumulative);
  }
  /* Whole seconds and six decimals of microseconds: exact, no rounding. */
  uint64_t us = atomic_load_explicit(&h->sum_us, memory_order_relaxed);
  appendf(t, "%s_sum{stage=\"%s\"} %" PRIu64 ".%06" PRIu64 "\n", STAGE_NAME,
          stage, us / US_PER_S, us % US_PER_S);
  appendf(t, "%s_count{stage=\"%s\"} %" PRIu64 "\n", STAGE_NAME, stage,
          cumulative);
}

int st_metrics_render(const st_metrics *m, char **out, size_t *out_len) {
  *out = NULL;
  if (out_len)
    *out_len = 0;
  text_buf t = {.data = malloc(TEXT_INITIAL_BYTES), .cap = TEXT_INITIAL_BYTES};
  if (!t.data)
    return st_error_set(ST_ENOMEM, "metrics: out of memory");
  t.data[0] = '\0';
  for (int i = 0; i < ST_CTR_COUNT; i++) {
    header(&t, counter_infos[i].name, counter_infos[i].help, "counter");
    appendf(&t, "%s %" PRIu64 "\n", counter_infos[i].name,
            st_metrics_counter(m, (st_counter)i));
  }
  for (int i = 0; i < ST_GAUGE_COUNT; i++) {
    header(&t, gauge_infos[i].name, gauge_infos[i].help, "gauge");
    appendf(&t, "%s %" PRId64 "\n", gauge_infos[i].name,
            st_metrics_gauge(m, (st_gauge)i));
  }
  header(&t, ERRORS_NAME, ERRORS_HELP, "counter");
  for (int i = 0; i < ERROR_SERIES; i++)
    appendf(&t, "%s{code=\"%s\"} %" PRIu64 "\n", ERRORS_NAME,
            i < KNOWN_ERRORS ? st_err_name(error_codes[i]) : UNKNOWN_ERROR,
            atomic_load_explicit(&m->errors[i], memory_order_relaxed));
  header(&t, STAGE_NAME, STAGE_HELP, "histogram");
  for (int s = 0; s < ST_STAGE_COUNT; s++)
    render_histogram(&t, &m->stages[s], stage_labels[s]);
  if (t.failed) {
    free(t.data);
    return st_error_set(ST_ENOMEM, "metrics: out of memory rendering");
  }
  *out = t.data;
  if (out_len)
    *out_len = t.len;
  return ST_OK;
}
