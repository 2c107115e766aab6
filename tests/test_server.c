/* The server end to end, in process: a real libuv server on a loopback port
 * (its own thread and loop) and a blocking C client speaking protocol v1
 * through src/proto. The client's copy of the student, built only from the
 * `model` and `update` messages, must equal bit for bit a student distilled
 * here independently on the same key frames (same teacher, same config,
 * Algorithm 1 through st_distill_run, bootstrap then partial), and every
 * stride must be Algorithm 2 of the reported metric.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/error.h"
#include "loop/server.h"
#include "models/distill.h"
#include "models/stride.h"
#include "models/student.h"
#include "models/teacher.h"
#include "proto/codec.h"
#include "proto/proto.h"
#include "testutil.h"

enum { FRAME_W = 64, FRAME_H = 48, KEYFRAMES = 4, BOOTSTRAP = 1 };

typedef struct server_thread {
  st_server_config cfg;
  uv_loop_t loop;
  st_server *srv;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started; /* 1: running, -1: failed */
  int port;
} server_thread;

static void *server_main(void *arg) {
  server_thread *t = arg;
  uv_loop_init(&t->loop);
  int rc = st_server_new(&t->loop, &t->cfg, &t->srv);
  pthread_mutex_lock(&t->mu);
  t->started = rc ? -1 : 1;
  t->port = rc ? 0 : st_server_port(t->srv);
  pthread_cond_signal(&t->cv);
  pthread_mutex_unlock(&t->mu);
  if (rc) {
    fprintf(stderr, "server: %s\n", st_error_detail());
    uv_loop_close(&t->loop);
    return NULL;
  }
  uv_run(&t->loop, UV_RUN_DEFAULT);
  st_server_free(t->srv);
  uv_loop_close(&t->loop);
  return NULL;
}

static const char *config_dir(void) {
  static char dir[4096];
  snprintf(dir, sizeof dir, "%s/../../config", st_test_fixture_dir());
  return dir;
}

/* ST_TEST_BACKEND=cuda (scripts/gpu-check.sh) runs the server and the
 * reproduction on the GPU; both use deterministic algorithms. */
static const char *test_backend(void) {
  const char *b = getenv("ST_TEST_BACKEND");
  return b && *b ? b : "cpu";
}

static void server_start(server_thread *t, const char *distill_json) {
  char json[2048];
  snprintf(json, sizeof json,
           "{\"listen\": {\"host\": \"127.0.0.1\", \"port\": 0},"
           " \"backend\": \"%s\", \"workers\": 1, \"threads_per_worker\": 1,"
           " \"deterministic\": true, \"log_level\": \"warn\","
           " \"teacher\": \"teacher-small.json\","
           " \"student\": {\"config\": \"student.json\"},"
           " \"distill\": %s}",
           test_backend(), distill_json);
  assert_int_equal(
      st_server_config_parse(json, "test.json", config_dir(), &t->cfg), 0);
  pthread_mutex_init(&t->mu, NULL);
  pthread_cond_init(&t->cv, NULL);
  t->started = 0;
  assert_int_equal(pthread_create(&t->thread, NULL, server_main, t), 0);
  pthread_mutex_lock(&t->mu);
  while (!t->started)
    pthread_cond_wait(&t->cv, &t->mu);
  pthread_mutex_unlock(&t->mu);
  assert_int_equal(t->started, 1);
}

static void server_stop(server_thread *t) {
  st_server_request_shutdown(t->srv);
  pthread_join(t->thread, NULL);
  pthread_mutex_destroy(&t->mu);
  pthread_cond_destroy(&t->cv);
}

/* ---- a blocking protocol client ------------------------------------------- */

static int client_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static void client_send(int fd, const st_msg *m) {
  uint8_t *buf = NULL;
  size_t len = 0;
  assert_int_equal(st_msg_encode(m, &buf, &len), 0);
  size_t off = 0;
  while (off < len) {
    ssize_t n = write(fd, buf + off, len - off);
    assert_true(n > 0);
    off += (size_t)n;
  }
  free(buf);
}

static void read_exact(int fd, uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    assert_true(r > 0);
    p += r;
    n -= (size_t)r;
  }
}

/* Receives one message; *body must be freed after the message (it borrows). */
static void client_recv(int fd, st_msg *m, uint8_t **body) {
  uint8_t hdr[ST_PROTO_HEADER_BYTES];
  read_exact(fd, hdr, sizeof hdr);
  uint32_t len = 0;
  assert_int_equal(
      st_frame_header_parse(hdr, ST_PROTO_MAX_MESSAGE_BYTES_CEILING, &len), 0);
  *body = malloc(len);
  assert_non_null(*body);
  read_exact(fd, *body, len);
  st_proto_limits lim;
  st_proto_limits_default(&lim);
  lim.max_message_bytes = ST_PROTO_MAX_MESSAGE_BYTES_CEILING;
  int rc = st_msg_decode(*body, len, &lim, m);
  if (rc)
    fail_msg("decode: %s", st_error_detail());
}

/* The client's copy of the student: name-indexed host weights. */
typedef struct client_model {
  size_t count;
  char names[128][ST_PROTO_TENSOR_NAME_BYTES + 1];
  float *values[128];
  size_t numel[128];
} client_model;

static long client_find(const client_model *cm, const char *name) {
  for (size_t i = 0; i < cm->count; i++)
    if (strcmp(cm->names[i], name) == 0)
      return (long)i;
  return -1;
}

static size_t wire_numel(const st_wire_tensor *t) {
  size_t n = 1;
  for (int d = 0; d < t->ndim; d++)
    n *= (size_t)t->shape[d];
  return n;
}

static void client_apply(client_model *cm, st_update_encoding enc,
                         const st_wire_tensor *ts, size_t count) {
  for (size_t i = 0; i < count; i++) {
    long k = client_find(cm, ts[i].name);
    assert_true(k >= 0);
    assert_int_equal(wire_numel(&ts[i]), cm->numel[k]);
    assert_int_equal(st_codec_apply(enc, ts[i].dtype, ts[i].data, ts[i].bytes,
                                    cm->numel[k], cm->values[k]),
                     0);
  }
}

static void make_frame(uint8_t *rgb, int seed) {
  for (int y = 0; y < FRAME_H; y++)
    for (int x = 0; x < FRAME_W; x++) {
      uint8_t *p = rgb + 3 * (y * FRAME_W + x);
      p[0] = (uint8_t)((x * 4 + seed * 17) & 255);
      p[1] = (uint8_t)((y * 5 + seed * 31) & 255);
      p[2] = (uint8_t)(((x + y) * 3) & 255);
      int bx = 8 + 6 * seed, by = 6 + 4 * seed;
      if (x >= bx && x < bx + 20 && y >= by && y < by + 16)
        p[0] = 250, p[1] = 240, p[2] = 230;
    }
}

/* ---- the test --------------------------------------------------------------- */

static void test_updates_equal_independent_distillation(void **state) {
  (void)state;
  static server_thread t;
  server_start(&t, "{\"max_updates\": 2, \"update_encoding\": \"f32\","
                   " \"bootstrap_full_keyframes\": 1}");
  const st_server_config *cfg = &t.cfg;

  /* The independent reproduction: teacher and students on a CPU backend. */
  st_backend_options bo = {.kind = cfg->backend, .threads = 1,
                           .deterministic = 1};
  st_backend *be = NULL;
  assert_int_equal(st_backend_new(&bo, &be), 0);
  st_teacher *teacher = NULL;
  assert_int_equal(st_teacher_open(be, cfg->teacher_path, &teacher), 0);
  st_student *partial = NULL, *full = NULL;
  assert_int_equal(st_student_new_from_config(be, &cfg->student, &partial), 0);
  assert_int_equal(st_student_new_from_config(be, &cfg->student, &full), 0);
  assert_int_equal(st_student_set_trainable(full, NULL, 0, 1), 0);
  st_student_state *ref = NULL;
  assert_int_equal(st_student_state_new(partial, &ref), 0);
  st_stride_params sp = st_student_config_stride(&cfg->student);
  st_distill_params dp = st_student_config_distill(&cfg->student);

  int fd = client_connect(t.port);
  st_msg m = {.type = ST_MSG_HELLO};
  m.u.hello.proto = 1;
  snprintf(m.u.hello.client_id, sizeof m.u.hello.client_id, "c-test");
  m.u.hello.width = FRAME_W;
  m.u.hello.height = FRAME_H;
  m.u.hello.encodings = 1u << ST_FRAME_RAW;
  client_send(fd, &m);

  uint8_t *body = NULL;
  st_msg in;
  client_recv(fd, &in, &body);
  assert_int_equal(in.type, ST_MSG_WELCOME);
  int32_t stride = in.u.welcome.stride;
  assert_int_equal(stride, cfg->student.min_stride);
  assert_int_equal(in.u.welcome.version, 0);
  st_msg_free(&in);
  free(body);

  /* The full student arrives because the hello named no weights hash. */
  static client_model cm;
  client_recv(fd, &in, &body);
  assert_int_equal(in.type, ST_MSG_MODEL);
  cm.count = in.u.model.tensor_count;
  assert_int_equal(cm.count, st_student_state_count(ref));
  for (size_t i = 0; i < cm.count; i++) {
    const st_wire_tensor *wt = &in.u.model.tensors[i];
    snprintf(cm.names[i], sizeof cm.names[i], "%s", wt->name);
    cm.numel[i] = wire_numel(wt);
    cm.values[i] = calloc(cm.numel[i], sizeof(float));
    assert_int_equal(st_codec_apply(ST_UPDATE_F32, wt->dtype, wt->data,
                                    wt->bytes, cm.numel[i], cm.values[i]),
                     0);
  }
  st_msg_free(&in);
  free(body);

  static uint8_t rgb[FRAME_H * FRAME_W * 3];
  static uint8_t label[FRAME_H * FRAME_W];
  static float weight[FRAME_H * FRAME_W];
  uint64_t version = 0;
  for (int k = 1; k <= KEYFRAMES; k++) {
    make_frame(rgb, k);
    st_msg kf = {.type = ST_MSG_KEYFRAME};
    kf.u.frame.seq = (uint64_t)k;
    kf.u.frame.frame_index = (uint64_t)k * 8;
    kf.u.frame.encoding = ST_FRAME_RAW;
    kf.u.frame.width = FRAME_W;
    kf.u.frame.height = FRAME_H;
    kf.u.frame.data = rgb;
    kf.u.frame.data_len = sizeof rgb;
    kf.u.frame.version = version;
    client_send(fd, &kf);

    /* The same key frame, distilled here. */
    const int64_t ishape[3] = {FRAME_H, FRAME_W, 3}, mshape[2] = {FRAME_H,
                                                                 FRAME_W};
    st_tensor image = st_tensor_view(rgb, ST_U8, 3, ishape);
    assert_int_equal(st_teacher_label(teacher, &image, NULL, label, weight), 0);
    st_student *s = partial;
    if (k <= BOOTSTRAP)
      s = full;
    else if (k == BOOTSTRAP + 1)
      st_student_state_reset_optimizer(ref);
    st_tensor lab = st_tensor_view(label, ST_U8, 2, mshape);
    st_tensor wt = st_tensor_view(weight, ST_F32, 2, mshape);
    assert_int_equal(st_student_state_load(s, ref), 0);
    assert_int_equal(st_student_set_example(s, &image, &lab, &wt), 0);
    st_distill_learner learner = st_student_learner(s);
    st_distill_result res;
    assert_int_equal(st_distill_run(&learner, &dp, &res), 0);
    assert_int_equal(st_student_state_save(s, ref), 0);
    int32_t want_stride = st_next_stride(stride, res.metric, &sp);

    client_recv(fd, &in, &body);
    assert_int_equal(in.type, ST_MSG_UPDATE);
    const st_msg_update *u = &in.u.update;
    assert_int_equal(u->seq, (uint64_t)k);
    assert_int_equal(u->base_version, version);
    assert_false(u->full);
    assert_int_equal(u->steps, res.steps);
    assert_true(u->metric == res.metric);
    assert_int_equal(u->stride, want_stride);
    if (k <= BOOTSTRAP)
      assert_int_equal(u->tensor_count, cm.count);
    client_apply(&cm, u->encoding, u->tensors, u->tensor_count);
    version = u->version;
    stride = u->stride;
    st_msg_free(&in);
    free(body);

    /* The client's copy is the independently distilled student, bit for
     * bit, for every tensor. */
    for (size_t i = 0; i < cm.count; i++) {
      size_t numel = 0;
      const float *want = st_student_state_values(ref, i, &numel);
      long c = client_find(&cm, cm.names[i]);
      assert_int_equal(numel, cm.numel[c]);
      if (memcmp(want, cm.values[c], numel * sizeof(float)) != 0)
        fail_msg("key frame %d: tensor %zu (%s) differs", k, i, cm.names[i]);
    }
  }
  assert_true(version >= 1);

  st_msg bye = {.type = ST_MSG_BYE};
  client_send(fd, &bye);
  client_recv(fd, &in, &body);
  assert_int_equal(in.type, ST_MSG_BYE);
  st_msg_free(&in);
  free(body);
  close(fd);

  for (size_t i = 0; i < cm.count; i++)
    free(cm.values[i]);
  st_student_state_free(ref);
  st_student_free(partial);
  st_student_free(full);
  st_teacher_free(teacher);
  st_backend_free(be);
  server_stop(&t);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN); /* a vanished peer fails a write, not the test */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_updates_equal_independent_distillation),
  };
  return cmocka_run_group_tests_name("server", tests, NULL, NULL);
}
