/* Server metrics (src/loop/metrics.h): counter, gauge, error and histogram
 * updates, the exact Prometheus text they render to, and exact totals
 * under concurrent updates from several threads. */
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/metrics.h"

/* The wire names of every status code, from the same list the code uses. */
static const char *const error_names[] = {
#define NAME(sym, wire, msg) wire,
    ST_ERRNO_MAP(NAME)
#undef NAME
};
enum { ERROR_NAMES = sizeof error_names / sizeof error_names[0] };

/* Finite buckets of the stage histogram, per the header's contract. */
enum { FINITE_BUCKETS = 13 };

static char *render(const st_metrics *m) {
  char *text = NULL;
  size_t len = 0;
  ST_ASSERT_OK(st_metrics_render(m, &text, &len));
  assert_non_null(text);
  assert_int_equal(len, strlen(text));
  return text;
}

/* Asserts `block` (one or more whole lines) occurs in `text` exactly once,
 * starting at a line start. */
static void assert_block(const char *text, const char *block) {
  const char *at = strstr(text, block);
  if (!at || (at != text && at[-1] != '\n'))
    fail_msg("missing from the metrics text:\n%s", block);
  if (strstr(at + 1, block))
    fail_msg("more than once in the metrics text:\n%s", block);
}

static size_t count_lines(const char *text) {
  size_t n = 0;
  for (; *text; text++)
    n += *text == '\n';
  return n;
}

static void test_counters_and_gauges(void **state) {
  (void)state;
  st_metrics *m;
  ST_ASSERT_OK(st_metrics_new(&m));
  for (int c = 0; c < ST_CTR_COUNT; c++)
    assert_int_equal(st_metrics_counter(m, (st_counter)c), 0);
  st_metrics_add(m, ST_CTR_KEYFRAMES, 1);
  st_metrics_add(m, ST_CTR_KEYFRAMES, 2);
  st_metrics_add(m, ST_CTR_BYTES_IN, 5000000000ull);
  st_metrics_gauge_add(m, ST_GAUGE_SESSIONS_ACTIVE, 5);
  st_metrics_gauge_add(m, ST_GAUGE_SESSIONS_ACTIVE, -2);
  st_metrics_gauge_set(m, ST_GAUGE_QUEUE_DEPTH, 7);
  st_metrics_gauge_add(m, ST_GAUGE_JOBS_RUNNING, -4);
  assert_int_equal(st_metrics_counter(m, ST_CTR_KEYFRAMES), 3);
  assert_true(st_metrics_counter(m, ST_CTR_BYTES_IN) == 5000000000ull);
  assert_int_equal(st_metrics_counter(m, ST_CTR_UPDATES), 0);
  assert_int_equal(st_metrics_gauge(m, ST_GAUGE_SESSIONS_ACTIVE), 3);
  assert_int_equal(st_metrics_gauge(m, ST_GAUGE_QUEUE_DEPTH), 7);
  assert_int_equal(st_metrics_gauge(m, ST_GAUGE_JOBS_RUNNING), -4);
  assert_int_equal(st_metrics_gauge(m, ST_GAUGE_CONNECTIONS_ACTIVE), 0);

  char *text = render(m);
  assert_block(text, "# HELP shadowtutor_keyframes_total Key frames received.\n"
                     "# TYPE shadowtutor_keyframes_total counter\n"
                     "shadowtutor_keyframes_total 3\n");
  assert_block(text, "shadowtutor_bytes_received_total 5000000000\n");
  assert_block(text, "shadowtutor_updates_total 0\n");
  assert_block(text,
               "# HELP shadowtutor_keyframes_dropped_total Waiting key frames "
               "replaced by a newer one.\n"
               "# TYPE shadowtutor_keyframes_dropped_total counter\n"
               "shadowtutor_keyframes_dropped_total 0\n");
  assert_block(text, "# HELP shadowtutor_sessions_active Open sessions.\n"
                     "# TYPE shadowtutor_sessions_active gauge\n"
                     "shadowtutor_sessions_active 3\n");
  assert_block(text, "shadowtutor_queue_depth 7\n");
  assert_block(text, "shadowtutor_jobs_running -4\n");
  free(text);
  st_metrics_free(m);
  st_metrics_free(NULL);
}

static void test_errors_by_code(void **state) {
  (void)state;
  st_metrics *m;
  ST_ASSERT_OK(st_metrics_new(&m));
  st_metrics_error(m, ST_EBADMSG);
  st_metrics_error(m, ST_EBADMSG);
  st_metrics_error(m, ST_EFULL);
  st_metrics_error(m, 12345); /* no such code */
  assert_int_equal(st_metrics_errors(m, ST_EBADMSG), 2);
  assert_int_equal(st_metrics_errors(m, ST_EFULL), 1);
  assert_int_equal(st_metrics_errors(m, ST_EINVAL), 0);
  assert_int_equal(st_metrics_errors(m, -4321), 1); /* the "unknown" series */

  char *text = render(m);
  assert_block(text, "# HELP shadowtutor_errors_total Error messages sent to "
                     "clients, by wire code.\n"
                     "# TYPE shadowtutor_errors_total counter\n"
                     "shadowtutor_errors_total{code=\"invalid_argument\"} 0\n");
  assert_block(text, "shadowtutor_errors_total{code=\"bad_message\"} 2\n");
  assert_block(text, "shadowtutor_errors_total{code=\"server_full\"} 1\n");
  assert_block(text, "shadowtutor_errors_total{code=\"unknown\"} 1\n");
  /* Every code has its series, zeros included. */
  for (int i = 0; i < ERROR_NAMES; i++) {
    char prefix[128];
    snprintf(prefix, sizeof prefix, "shadowtutor_errors_total{code=\"%s\"} ",
             error_names[i]);
    assert_non_null(strstr(text, prefix));
  }
  free(text);
  st_metrics_free(m);
}

static void test_histogram(void **state) {
  (void)state;
  st_metrics *m;
  ST_ASSERT_OK(st_metrics_new(&m));
  /* 1.0 ms sits on a bound (le is inclusive); -1 and NaN count as 0;
   * 20 s is past the last finite bound. */
  static const double ms[] = {0.5, 1.0, 3.0, 12.5, 20000.0, -1.0, NAN};
  for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
    st_metrics_observe_ms(m, ST_STAGE_DECODE, ms[i]);
  assert_int_equal(st_metrics_stage_count(m, ST_STAGE_DECODE), 7);
  assert_int_equal(st_metrics_stage_count(m, ST_STAGE_TEACHER), 0);

  char *text = render(m);
  assert_block(
      text,
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"0.001\"} 4\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"0.0025\"} 4\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"0.005\"} 5\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"0.01\"} 5\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"0.025\"} 6\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"0.05\"} 6\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"0.1\"} 6\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"0.25\"} 6\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"0.5\"} 6\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"1\"} 6\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"2.5\"} 6\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"5\"} 6\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"10\"} 6\n"
      "shadowtutor_stage_seconds_bucket{stage=\"decode\",le=\"+Inf\"} 7\n"
      "shadowtutor_stage_seconds_sum{stage=\"decode\"} 20.017000\n"
      "shadowtutor_stage_seconds_count{stage=\"decode\"} 7\n");
  /* Untouched stages have every bucket, at zero; the family header comes
   * once, before the first stage. */
  assert_block(
      text,
      "# HELP shadowtutor_stage_seconds Time spent per job stage.\n"
      "# TYPE shadowtutor_stage_seconds histogram\n"
      "shadowtutor_stage_seconds_bucket{stage=\"queue\",le=\"0.001\"} 0\n");
  assert_block(
      text, "shadowtutor_stage_seconds_bucket{stage=\"total\",le=\"+Inf\"} 0\n"
            "shadowtutor_stage_seconds_sum{stage=\"total\"} 0.000000\n"
            "shadowtutor_stage_seconds_count{stage=\"total\"} 0\n");
  static const char *const stages[] = {"queue",   "decode", "teacher",
                                       "distill", "encode", "total"};
  for (size_t i = 0; i < sizeof stages / sizeof stages[0]; i++) {
    char line[128];
    snprintf(line, sizeof line,
             "shadowtutor_stage_seconds_bucket{stage=\"%s\",le=\"0.05\"} ",
             stages[i]);
    assert_non_null(strstr(text, line));
  }
  free(text);

  /* Microsecond sums are exact; an infinite duration is capped, not UB. */
  st_metrics_observe_ms(m, ST_STAGE_QUEUE, 0.0015);
  st_metrics_observe_ms(m, ST_STAGE_QUEUE, 1999.9994);
  st_metrics_observe_ms(m, ST_STAGE_ENCODE, INFINITY);
  text = render(m);
  assert_block(text,
               "shadowtutor_stage_seconds_sum{stage=\"queue\"} 2.000001\n");
  assert_block(text, "shadowtutor_stage_seconds_bucket{stage=\"queue\","
                     "le=\"2.5\"} 2\n");
  assert_block(text, "shadowtutor_stage_seconds_bucket{stage=\"queue\","
                     "le=\"1\"} 1\n");
  assert_block(text, "shadowtutor_stage_seconds_bucket{stage=\"encode\","
                     "le=\"10\"} 0\n"
                     "shadowtutor_stage_seconds_bucket{stage=\"encode\","
                     "le=\"+Inf\"} 1\n"
                     "shadowtutor_stage_seconds_sum{stage=\"encode\"} "
                     "9200000000000.000000\n");
  free(text);
  st_metrics_free(m);
}

/* Every line is a HELP, a TYPE or a sample; every family has its HELP and
 * TYPE once, right before its samples; the line count is what the lists
 * in the header make. */
static void test_exposition_format(void **state) {
  (void)state;
  st_metrics *m;
  ST_ASSERT_OK(st_metrics_new(&m));
  char *text = render(m);
  size_t want = 3 * ST_CTR_COUNT + 3 * ST_GAUGE_COUNT + (2 + ERROR_NAMES + 1) +
                (2 + ST_STAGE_COUNT * (FINITE_BUCKETS + 1 + 2));
  assert_int_equal(count_lines(text), want);
  assert_true(text[strlen(text) - 1] == '\n');

  char family[128] = "";
  int helps = 0, types = 0, samples = 0;
  for (char *line = text; *line;) {
    char *end = strchr(line, '\n');
    assert_non_null(end);
    *end = '\0';
    char name[128];
    if (sscanf(line, "# HELP %127s", name) == 1) {
      assert_true(strcmp(name, family) != 0); /* a new family */
      snprintf(family, sizeof family, "%s", name);
      helps++;
      assert_true(strlen(line) > strlen("# HELP ") + strlen(name) + 1);
    } else if (sscanf(line, "# TYPE %127s", name) == 1) {
      assert_string_equal(name, family);
      const char *type = line + strlen("# TYPE ") + strlen(name) + 1;
      assert_true(!strcmp(type, "counter") || !strcmp(type, "gauge") ||
                  !strcmp(type, "histogram"));
      types++;
    } else {
      /* A sample of the current family: name[_suffix][{...}] value. */
      assert_true(strncmp(line, family, strlen(family)) == 0);
      const char *space = strrchr(line, ' ');
      assert_non_null(space);
      char *value_end;
      strtod(space + 1, &value_end);
      assert_true(*value_end == '\0' && value_end > space + 1);
      samples++;
    }
    line = end + 1;
  }
  int families = ST_CTR_COUNT + ST_GAUGE_COUNT + 2;
  assert_int_equal(helps, families);
  assert_int_equal(types, families);
  assert_int_equal(samples + helps + types, (int)want);
  free(text);
  st_metrics_free(m);
}

enum { THREADS = 4, ITERATIONS = 100000 };
/* Each observation: 1.5 ms = 1500 us, so the sum is exact. */
#define OBSERVED_MS 1.5

static void *hammer(void *arg) {
  st_metrics *m = arg;
  for (int i = 0; i < ITERATIONS; i++) {
    st_metrics_add(m, ST_CTR_KEYFRAMES, 1);
    st_metrics_add(m, ST_CTR_BYTES_OUT, 3);
    st_metrics_gauge_add(m, ST_GAUGE_QUEUE_DEPTH, 1);
    st_metrics_gauge_add(m, ST_GAUGE_QUEUE_DEPTH, -1);
    st_metrics_gauge_add(m, ST_GAUGE_JOBS_RUNNING, 1);
    st_metrics_error(m, ST_ETIMEDOUT);
    st_metrics_observe_ms(m, ST_STAGE_TOTAL, OBSERVED_MS);
  }
  return NULL;
}

static void test_concurrent_updates_sum_exactly(void **state) {
  (void)state;
  st_metrics *m;
  ST_ASSERT_OK(st_metrics_new(&m));
  pthread_t threads[THREADS];
  for (int t = 0; t < THREADS; t++)
    assert_int_equal(pthread_create(&threads[t], NULL, hammer, m), 0);
  for (int t = 0; t < THREADS; t++)
    assert_int_equal(pthread_join(threads[t], NULL), 0);
  const uint64_t n = (uint64_t)THREADS * ITERATIONS;
  assert_true(st_metrics_counter(m, ST_CTR_KEYFRAMES) == n);
  assert_true(st_metrics_counter(m, ST_CTR_BYTES_OUT) == 3 * n);
  assert_int_equal(st_metrics_gauge(m, ST_GAUGE_QUEUE_DEPTH), 0);
  assert_int_equal(st_metrics_gauge(m, ST_GAUGE_JOBS_RUNNING), (int64_t)n);
  assert_true(st_metrics_errors(m, ST_ETIMEDOUT) == n);
  assert_true(st_metrics_stage_count(m, ST_STAGE_TOTAL) == n);
  char *text = render(m);
  assert_block(text, "shadowtutor_keyframes_total 400000\n");
  assert_block(text, "shadowtutor_errors_total{code=\"timeout\"} 400000\n");
  assert_block(text, "shadowtutor_stage_seconds_bucket{stage=\"total\","
                     "le=\"0.001\"} 0\n"
                     "shadowtutor_stage_seconds_bucket{stage=\"total\","
                     "le=\"0.0025\"} 400000\n");
  /* 400000 x 1500 us = 600 s. */
  assert_block(text, "shadowtutor_stage_seconds_sum{stage=\"total\"} "
                     "600.000000\n"
                     "shadowtutor_stage_seconds_count{stage=\"total\"} "
                     "400000\n");
  free(text);
  st_metrics_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_counters_and_gauges),
      cmocka_unit_test(test_errors_by_code),
      cmocka_unit_test(test_histogram),
      cmocka_unit_test(test_exposition_format),
      cmocka_unit_test(test_concurrent_updates_sum_exactly),
  };
  return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
