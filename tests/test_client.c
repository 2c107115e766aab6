/* The client's pure parts: the settings table and its strict parsing
 * (config/client.json and the flags), Algorithm 4's schedule, and the
 * overlay colours and blend. The daemon end to end (video, server,
 * reconnects) is tests/integration/client_test.py. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_config.h"
#include "overlay.h"
#include "schedule.h"
#include "testutil.h"

#ifndef ST_SOURCE_DIR
#error "ST_SOURCE_DIR must name the source tree"
#endif

/* ---- config -------------------------------------------------------------- */

static void expect_parse_error(const char *json, int code, const char *detail) {
  st_client_config c, before;
  st_client_config_defaults(&c);
  before = c;
  st_error_clear();
  int rc = st_client_config_parse(json, "t.json", "", &c);
  if (rc != code)
    fail_msg("%s: got %s (%s), want %s", json, st_strerror(rc),
             st_error_detail(), st_strerror(code));
  if (!strstr(st_error_detail(), detail))
    fail_msg("%s: detail '%s' lacks '%s'", json, st_error_detail(), detail);
  /* A refused file changes nothing. */
  assert_memory_equal(&c, &before, sizeof c);
}

/* config/client.json lists every setting, each with its built-in default. */
static void test_shipped_config_is_the_defaults(void **state) {
  (void)state;
  const char *path = ST_SOURCE_DIR "/config/client.json";
  json_error_t err;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
  assert_non_null(root);
  assert_int_equal(json_object_size(root), st_client_setting_count());
  for (int i = 0; i < st_client_setting_count(); i++) {
    const char *key = st_client_setting_key(i);
    json_t *v = json_object_get(root, key);
    if (!v)
      fail_msg("config/client.json lacks '%s'", key);
    char want[64];
    st_client_setting_default_json(i, want, sizeof want);
    json_t *want_v = json_loads(want, JSON_DECODE_ANY, &err);
    assert_non_null(want_v);
    if (!json_equal(v, want_v))
      fail_msg("config/client.json: %s is not the default %s", key, want);
    json_decref(want_v);
  }
  json_decref(root);

  st_client_config d, c;
  st_client_config_defaults(&d);
  st_client_config_defaults(&c);
  ST_ASSERT_OK(st_client_config_load(path, &c));
  /* Loading it changes only the path resolved against its folder. */
  assert_string_equal(c.student, ST_SOURCE_DIR "/config/student.json");
  memset(c.student, 0, sizeof c.student);
  snprintf(c.student, sizeof c.student, "%s", d.student);
  assert_memory_equal(&c, &d, sizeof c);
  assert_int_equal(d.jpeg_quality, 90);
  assert_string_equal(d.wait_policy, "block");
  assert_string_equal(d.keyframe_encoding, "jpeg");
  assert_int_equal(d.loop, 1);
  assert_int_equal(d.realtime, 0);
  assert_string_equal(d.input, "");
}

static void test_config_strict(void **state) {
  (void)state;
  expect_parse_error("{\"jpeg_qualty\": 80}", ST_EFORMAT,
                     "t.json: unknown key jpeg_qualty");
  expect_parse_error("{\"jpeg_quality\": 101}", ST_EINVAL,
                     "jpeg_quality must be in [1, 100]");
  expect_parse_error("{\"jpeg_quality\": 90.0}", ST_EFORMAT,
                     "jpeg_quality must be an integer");
  expect_parse_error("{\"jpeg_quality\": \"90\"}", ST_EFORMAT,
                     "must be an integer");
  expect_parse_error("{\"wait_policy\": \"sometimes\"}", ST_EINVAL,
                     "wait_policy must be one of block|never");
  expect_parse_error("{\"wait_policy\": null}", ST_EFORMAT,
                     "wait_policy must be one of");
  expect_parse_error("{\"realtime\": 1}", ST_EFORMAT,
                     "realtime must be true or false");
  expect_parse_error("{\"overlay_alpha\": 1.5}", ST_EINVAL,
                     "overlay_alpha must be in [0, 1]");
  expect_parse_error("{\"input\": \"\"}", ST_EINVAL, "input must not be empty");
  expect_parse_error("{\"loop\": 1, \"loop\": 2}", ST_EFORMAT, "t.json:1:");
  expect_parse_error("[1]", ST_EFORMAT, "top level must be an object");
  /* A good value before a bad one is not kept either. */
  expect_parse_error("{\"loop\": 7, \"jpeg_quality\": 0}", ST_EINVAL,
                     "jpeg_quality");

  st_client_config c;
  st_client_config_defaults(&c);
  ST_ASSERT_OK(st_client_config_parse(
      "{\"jpeg_quality\": 70, \"overlay_alpha\": 1, \"realtime\": true, "
      "\"server\": null, \"weights\": \"w.safetensors\", "
      "\"student\": \"/abs/s.json\", \"input\": \"rtsp://cam/1\"}",
      "t.json", "/etc/st", &c));
  assert_int_equal(c.jpeg_quality, 70);
  assert_true(c.overlay_alpha == 1.0);
  assert_int_equal(c.realtime, 1);
  assert_string_equal(c.server, "");
  /* PATH settings follow the file; absolute ones and others stay. */
  assert_string_equal(c.weights, "/etc/st/w.safetensors");
  assert_string_equal(c.student, "/abs/s.json");
  assert_string_equal(c.input, "rtsp://cam/1");
}

static void test_config_flags(void **state) {
  (void)state;
  st_client_config c;
  st_client_config_defaults(&c);
  int used = -1;
  ST_ASSERT_OK(st_client_config_flag(&c, "--jpeg-quality", "55", &used));
  assert_int_equal(used, 1);
  assert_int_equal(c.jpeg_quality, 55);
  ST_ASSERT_OK(st_client_config_flag(&c, "--realtime", "ignored", &used));
  assert_int_equal(used, 0);
  assert_int_equal(c.realtime, 1);
  /* A boolean's --no- flag clears it, and takes no value either. */
  assert_int_equal(c.cuda_graphs, 1);
  ST_ASSERT_OK(st_client_config_flag(&c, "--no-cuda-graphs", "x", &used));
  assert_int_equal(used, 0);
  assert_int_equal(c.cuda_graphs, 0);
  ST_ASSERT_OK(st_client_config_flag(&c, "--cuda-graphs", NULL, &used));
  assert_int_equal(c.cuda_graphs, 1);
  ST_ASSERT_OK(st_client_config_flag(&c, "--no-realtime", NULL, &used));
  assert_int_equal(c.realtime, 0);
  ST_ASSERT_OK(st_client_config_flag(&c, "--realtime", NULL, &used));
  ST_ASSERT_OK(st_client_config_flag(&c, "--server", "null", &used));
  assert_string_equal(c.server, "");
  ST_ASSERT_OK(st_client_config_flag(&c, "--weights", "a/w.st", &used));
  assert_string_equal(c.weights, "a/w.st"); /* flags are not resolved */
  ST_ASSERT_OK(st_client_config_flag(&c, "--overlay-alpha", "0.25", &used));
  assert_true(c.overlay_alpha == 0.25);
  ST_ASSERT_OK(st_client_config_flag(&c, "--wait-policy", "never", &used));
  assert_string_equal(c.wait_policy, "never");

  assert_int_equal(st_client_config_flag(&c, "--jpeg-qualty", "5", &used),
                   ST_ENOENT);
  assert_int_equal(st_client_config_flag(&c, "--jpeg_quality", "5", &used),
                   ST_ENOENT);
  assert_int_equal(st_client_config_flag(&c, "jpeg-quality", "5", &used),
                   ST_ENOENT);
  /* --no- exists for booleans only. */
  assert_int_equal(st_client_config_flag(&c, "--no-jpeg-quality", "5", &used),
                   ST_ENOENT);
  assert_int_equal(st_client_config_flag(&c, "--no-", NULL, &used), ST_ENOENT);
  assert_int_equal(st_client_config_flag(&c, "--no-no-realtime", NULL, &used),
                   ST_ENOENT);
  assert_int_equal(st_client_config_flag(&c, "--loop", NULL, &used), ST_EINVAL);
  assert_int_equal(st_client_config_flag(&c, "--loop", "-1", &used), ST_EINVAL);
  assert_int_equal(st_client_config_flag(&c, "--loop", "3x", &used), ST_EINVAL);
  assert_int_equal(st_client_config_flag(&c, "--overlay-alpha", "2", &used),
                   ST_EINVAL);
  assert_int_equal(st_client_config_flag(&c, "--wait-policy", "null", &used),
                   ST_EINVAL);
  assert_int_equal(c.jpeg_quality, 55); /* refused values change nothing */
}

static void test_config_check(void **state) {
  (void)state;
  st_client_config c;
  st_client_config_defaults(&c);
  assert_int_equal(st_client_config_check(&c), ST_EINVAL); /* no input */
  assert_non_null(strstr(st_error_detail(), "no input"));
  snprintf(c.input, sizeof c.input, "v.mp4");
  ST_ASSERT_OK(st_client_config_check(&c));
  snprintf(c.size, sizeof c.size, "0x10");
  assert_int_equal(st_client_config_check(&c), ST_EINVAL);
  snprintf(c.size, sizeof c.size, "640x360");
  ST_ASSERT_OK(st_client_config_check(&c));
  snprintf(c.server, sizeof c.server, "host");
  assert_int_equal(st_client_config_check(&c), ST_EINVAL);
  c.server[0] = '\0';
  assert_int_equal(st_client_config_check(&c), ST_EINVAL); /* no weights */
  assert_non_null(strstr(st_error_detail(), "--weights"));
  snprintf(c.weights, sizeof c.weights, "w.safetensors");
  ST_ASSERT_OK(st_client_config_check(&c));
  c.reconnect_initial_ms = c.reconnect_max_ms + 1;
  assert_int_equal(st_client_config_check(&c), ST_EINVAL);
}

static void test_host_port_and_size(void **state) {
  (void)state;
  char host[64];
  int port = 0, w = 0, h = 0;
  ST_ASSERT_OK(
      st_client_parse_host_port("127.0.0.1:7700", host, sizeof host, &port));
  assert_string_equal(host, "127.0.0.1");
  assert_int_equal(port, 7700);
  ST_ASSERT_OK(st_client_parse_host_port("[::1]:80", host, sizeof host, &port));
  assert_string_equal(host, "::1");
  assert_int_equal(port, 80);
  ST_ASSERT_OK(
      st_client_parse_host_port("gpu-1.lan:1", host, sizeof host, &port));
  assert_string_equal(host, "gpu-1.lan");
  const char *bad[] = {"host",   "host:",   ":7700", "host:0", "host:65536",
                       "::1:80", "[::1]80", "h:7x",  "[::1]"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (st_client_parse_host_port(bad[i], host, sizeof host, &port) !=
        ST_EINVAL)
      fail_msg("'%s' was accepted", bad[i]);
  ST_ASSERT_OK(st_client_parse_size("1280x720", &w, &h));
  assert_int_equal(w, 1280);
  assert_int_equal(h, 720);
  ST_ASSERT_OK(st_client_parse_size("8192X1", &w, &h));
  const char *bad_sizes[] = {"1280",   "x720",  "1280x", "0x5",
                             "8193x2", "12x-4", "3x4y"};
  for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++)
    if (st_client_parse_size(bad_sizes[i], &w, &h) != ST_EINVAL)
      fail_msg("size '%s' was accepted", bad_sizes[i]);
}

/* ---- Algorithm 4 --------------------------------------------------------- */

/* A simulated server: the update answering a key frame arrives `latency`
 * frames after it, carrying the next entry of `strides`. Runs `frames`
 * frames and records the frames that were key frames and where the client
 * waited. Returns the number of key frames. */
typedef struct sim {
  st_schedule s;
  int latency;
  const int32_t *strides;
  int nstrides;
  int64_t keys[64];
  int nkeys;
  int64_t waits_at[64];
  int nwaits;
} sim;

static void sim_run(sim *m, int frames) {
  uint64_t pending_seq = 0;
  int64_t arrives_at = -1;
  int answered = 0;
  for (int f = 0; f < frames; f++) {
    assert_int_equal(m->s.frame, f);
    st_sched_action a;
    for (;;) {
      if (pending_seq && f >= arrives_at) {
        int32_t stride =
            m->strides[answered < m->nstrides ? answered : m->nstrides - 1];
        st_schedule_on_update(&m->s, pending_seq, stride);
        answered++;
        pending_seq = 0;
      }
      a = st_schedule_decide(&m->s, 1);
      if (a != ST_SCHED_WAIT)
        break;
      /* Waiting lets time pass until the update is in. */
      assert_true(m->nwaits < 64);
      m->waits_at[m->nwaits++] = f;
      assert_true(pending_seq != 0);
      arrives_at = f;
    }
    if (a == ST_SCHED_KEYFRAME) {
      uint64_t seq = st_schedule_keyframe_sent(&m->s);
      assert_true(m->nkeys < 64);
      m->keys[m->nkeys++] = f;
      pending_seq = seq;
      arrives_at = f + m->latency;
    }
    st_schedule_frame_done(&m->s);
  }
}

static void test_schedule_block_follows_strides(void **state) {
  (void)state;
  const int32_t strides[] = {16, 8, 32, 8};
  sim m = {.latency = 3, .strides = strides, .nstrides = 4};
  st_schedule_init(&m.s, ST_WAIT_BLOCK, 8, 8);
  sim_run(&m, 80);
  /* First frame, then each key frame + the stride its update gave. */
  const int64_t want[] = {0, 16, 24, 56, 64, 72};
  assert_int_equal(m.nkeys, 6);
  assert_memory_equal(m.keys, want, sizeof want);
  assert_int_equal(m.nwaits, 0); /* updates came within min_stride */
  assert_int_equal(m.s.frames_past_due, 0);
  assert_int_equal(m.s.last_update_delay, 3);
  assert_int_equal(m.s.keyframes, 6);
}

static void test_schedule_block_waits_at_min_stride(void **state) {
  (void)state;
  const int32_t strides[] = {8};
  sim m = {.latency = 11, .strides = strides, .nstrides = 1};
  st_schedule_init(&m.s, ST_WAIT_BLOCK, 8, 8);
  sim_run(&m, 30);
  /* Each update is late: the client waits at key + min_stride, then sends
   * the next key frame right there (stride 8 is due too). */
  const int64_t want_keys[] = {0, 8, 16, 24};
  const int64_t want_waits[] = {8, 16, 24};
  assert_int_equal(m.nkeys, 4);
  assert_memory_equal(m.keys, want_keys, sizeof want_keys);
  assert_int_equal(m.nwaits, 3);
  assert_memory_equal(m.waits_at, want_waits, sizeof want_waits);
  assert_int_equal(m.s.frames_past_due, 0);
  assert_int_equal(m.s.last_update_delay, 8);
}

static void test_schedule_never_counts_past_due(void **state) {
  (void)state;
  const int32_t strides[] = {8};
  sim m = {.latency = 11, .strides = strides, .nstrides = 1};
  st_schedule_init(&m.s, ST_WAIT_NEVER, 8, 8);
  sim_run(&m, 30);
  /* No waits; frames 8, 9, 10 run while update 1 is overdue; key frame 2
   * (due at 8) goes out when the update arrives at 11, and so on. */
  const int64_t want_keys[] = {0, 11, 22};
  assert_int_equal(m.nwaits, 0);
  assert_int_equal(m.nkeys, 3);
  assert_memory_equal(m.keys, want_keys, sizeof want_keys);
  /* Overdue frames: 8,9,10 and 19,20,21 (and 30 is not run). */
  assert_int_equal(m.s.frames_past_due, 6);
}

static void test_schedule_offline_and_reconnect(void **state) {
  (void)state;
  st_schedule s;
  st_schedule_init(&s, ST_WAIT_BLOCK, 8, 8);
  /* Without a session nothing is sent and nothing waits. */
  for (int i = 0; i < 20; i++) {
    assert_int_equal(st_schedule_decide(&s, 0), ST_SCHED_RUN);
    st_schedule_frame_done(&s);
  }
  assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_KEYFRAME);
  uint64_t seq = st_schedule_keyframe_sent(&s);
  assert_int_equal(seq, 1);
  for (int i = 0; i < 8; i++) {
    assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_RUN);
    st_schedule_frame_done(&s);
  }
  assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_WAIT);
  /* The session drops: the awaited update is lost; the student runs on. */
  st_schedule_on_offline(&s);
  assert_int_equal(s.keyframes_lost, 1);
  assert_int_equal(st_schedule_decide(&s, 0), ST_SCHED_RUN);
  st_schedule_frame_done(&s);
  /* Back online (a later session): a key frame at once, with the new
   * session's strides. */
  st_schedule_on_online(&s, 16, 4, 1);
  assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_KEYFRAME);
  assert_int_equal(st_schedule_keyframe_sent(&s), 2);
  int64_t key = s.frame;
  st_schedule_frame_done(&s);
  /* A key frame the network could not send releases the wait. */
  st_schedule_on_key_lost(&s, 2);
  assert_int_equal(s.keyframes_lost, 2);
  for (int i = 0; i < 6; i++) {
    assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_RUN);
    st_schedule_frame_done(&s);
  }
  /* min_stride 4 has passed but nothing is awaited; the stride (16) is
   * not due yet. */
  assert_int_equal(s.frame - key, 7);
  assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_RUN);
  /* An old update (seq 1) still sets the stride but answers nothing. */
  st_schedule_on_update(&s, 1, 7);
  assert_int_equal(s.stride, 7);
  assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_KEYFRAME);
}

static void test_schedule_give_up(void **state) {
  (void)state;
  st_schedule s;
  st_schedule_init(&s, ST_WAIT_BLOCK, 2, 2);
  assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_KEYFRAME);
  st_schedule_keyframe_sent(&s);
  st_schedule_frame_done(&s);
  st_schedule_frame_done(&s);
  assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_WAIT);
  st_schedule_give_up(&s);
  assert_int_equal(s.wait_timeouts, 1);
  /* Given up: runs on, counting frames past due, and sends no second key
   * frame while the first is unanswered. */
  for (int i = 0; i < 3; i++) {
    assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_RUN);
    st_schedule_frame_done(&s);
  }
  assert_int_equal(s.frames_past_due, 3);
  st_schedule_on_update(&s, 1, 2);
  assert_int_equal(s.last_update_delay, 5);
  assert_int_equal(st_schedule_decide(&s, 1), ST_SCHED_KEYFRAME);
  /* Strides below 1 are read as 1. */
  st_schedule_init(&s, ST_WAIT_NEVER, 0, -3);
  assert_int_equal(s.stride, 1);
  assert_int_equal(s.min_stride, 1);
}

/* ---- overlay ------------------------------------------------------------- */

static void test_class_colors(void **state) {
  (void)state;
  /* PASCAL VOC's colour map. */
  const uint8_t want[][3] = {{0, 0, 0},     {128, 0, 0},     {0, 128, 0},
                             {128, 128, 0}, {0, 0, 128},     {128, 0, 128},
                             {0, 128, 128}, {128, 128, 128}, {64, 0, 0}};
  for (int k = 0; k < 9; k++) {
    uint8_t c[3];
    st_class_color(k, c);
    assert_memory_equal(c, want[k], 3);
  }
  uint8_t c[3];
  st_class_color(15, c); /* VOC "person" */
  assert_int_equal(c[0], 192);
  assert_int_equal(c[1], 128);
  assert_int_equal(c[2], 128);
  uint32_t pal[ST_OVERLAY_MAX_CLASSES];
  st_class_palette(pal);
  assert_int_equal(pal[0], 0xff000000u);
  assert_int_equal(pal[1], 0xff800000u);
  assert_int_equal(pal[4], 0xff000080u);
  /* Distinct colours for distinct classes. */
  for (int a = 0; a < ST_OVERLAY_MAX_CLASSES; a++)
    for (int b = a + 1; b < ST_OVERLAY_MAX_CLASSES; b++)
      if (pal[a] == pal[b])
        fail_msg("classes %d and %d share a colour", a, b);
}

static void test_overlay_blend(void **state) {
  (void)state;
  const uint8_t rgb[4 * 3] = {100, 100, 100, 100, 100, 100,
                              10,  200, 30,  255, 255, 255};
  const uint8_t labels[4] = {0, 1, 2, 4};
  uint8_t out[12];
  st_overlay_blend(rgb, labels, 4, 0.5, out);
  /* (p * 128 + colour * 128 + 128) / 256, per channel. */
  const uint8_t want[12] = {100, 100, 100, 114, 50,  50,
                            5,   164, 15,  128, 128, 192};
  assert_memory_equal(out, want, sizeof want);
  st_overlay_blend(rgb, labels, 4, 1.0, out);
  const uint8_t full[12] = {100, 100, 100, 128, 0, 0, 0, 128, 0, 0, 0, 128};
  assert_memory_equal(out, full, sizeof full);
  st_overlay_blend(rgb, labels, 4, 0.0, out);
  assert_memory_equal(out, rgb, sizeof rgb);
  /* In place. */
  uint8_t same[12];
  memcpy(same, rgb, sizeof same);
  st_overlay_blend(same, labels, 4, 0.5, same);
  assert_memory_equal(same, want, sizeof want);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shipped_config_is_the_defaults),
      cmocka_unit_test(test_config_strict),
      cmocka_unit_test(test_config_flags),
      cmocka_unit_test(test_config_check),
      cmocka_unit_test(test_host_port_and_size),
      cmocka_unit_test(test_schedule_block_follows_strides),
      cmocka_unit_test(test_schedule_block_waits_at_min_stride),
      cmocka_unit_test(test_schedule_never_counts_past_due),
      cmocka_unit_test(test_schedule_offline_and_reconnect),
      cmocka_unit_test(test_schedule_give_up),
      cmocka_unit_test(test_class_colors),
      cmocka_unit_test(test_overlay_blend),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
