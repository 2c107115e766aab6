/* Backend contexts as the server uses them: steady state without
 * allocations, two contexts driven from two threads at once giving the
 * results of serial runs (with cuDNN's heuristic, and with exhaustive
 * searches shared by the process), events ordering work across contexts,
 * and a lost device told from a refused call. Every test runs on every
 * backend. */
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "models/student.h"
#include "testutil.h"

extern char **environ;

static const char *const inputs[2] = {"student_37x59.safetensors",
                                      "student_45x83.safetensors"};

typedef struct job {
  st_backend *be;    /* context the job runs on (borrowed) */
  const char *input; /* fixture with image, label, weight */
  st_tensor logits;  /* host copy of the logits after two steps */
  float losses[2];   /* losses of the two steps */
  int rc;            /* first failure, ST_OK otherwise */
  char detail[256];  /* its detail line */
} job;

/* Forward, two Adam steps, forward again: everything a key frame does. */
static void *job_run(void *arg) {
  job *j = arg;
  st_student *s = NULL;
  st_safetensors *w = NULL, *in = NULL;
  st_tensor image = {0}, label = {0}, weight = {0};
  st_student_options o;
  st_student_options_default(&o);
  int rc = st_student_new(j->be, &o, &s);
  if (!rc)
    rc = st_safetensors_open(
        st_test_fixture_path("student_weights.safetensors"), &w);
  if (!rc)
    rc = st_student_load(s, w, "student_weights.safetensors");
  if (!rc)
    rc = st_safetensors_open(st_test_fixture_path(j->input), &in);
  if (!rc)
    rc = st_safetensors_read(in, "image", &image);
  if (!rc)
    rc = st_safetensors_read(in, "label", &label);
  if (!rc)
    rc = st_safetensors_read(in, "weight", &weight);
  if (!rc)
    rc = st_student_set_example(s, &image, &label, &weight);
  for (int k = 0; k < 2 && !rc; k++)
    rc = st_student_train_step(s, &j->losses[k], NULL);
  const st_tensor *logits = NULL;
  if (!rc)
    rc = st_student_forward(s, &image, &logits);
  if (!rc)
    rc = st_tensor_alloc(NULL, &j->logits, ST_F32, logits->ndim, logits->shape);
  if (!rc)
    rc = st_backend_sync(j->be);
  if (!rc)
    rc = st_tensor_download(j->be, logits, j->logits.data,
                            st_tensor_nbytes(logits));
  j->rc = rc;
  if (rc)
    snprintf(j->detail, sizeof j->detail, "%s", st_error_detail());
  st_tensor_free(&image);
  st_tensor_free(&label);
  st_tensor_free(&weight);
  st_safetensors_free(w);
  st_safetensors_free(in);
  st_student_free(s);
  return NULL;
}

static void assert_job_ok(const job *j) {
  if (j->rc)
    fail_msg("%s: %s: %s", j->input, st_strerror(j->rc), j->detail);
}

/* The two jobs on two fresh contexts with `opts`, each on its own thread,
 * at once. Returns the algorithm searches the two contexts ran. */
static int64_t run_parallel(const st_backend_options *opts, job par[2]) {
  st_backend *ctx[2] = {NULL, NULL};
  memset(par, 0, 2 * sizeof *par);
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    ST_ASSERT_OK(st_backend_new(opts, &ctx[i]));
    par[i].be = ctx[i];
    par[i].input = inputs[i];
  }
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&th[i], NULL, job_run, &par[i]), 0);
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);
  int64_t searches = 0;
  for (int i = 0; i < 2; i++) {
    assert_job_ok(&par[i]);
    st_backend_stats st;
    st_backend_get_stats(ctx[i], &st);
    searches += st.algo_searches;
    st_backend_free(ctx[i]);
    par[i].be = NULL;
  }
  return searches;
}

/* The two jobs one after the other on `be`. */
static void run_serial(st_backend *be, job serial[2]) {
  memset(serial, 0, 2 * sizeof *serial);
  for (int i = 0; i < 2; i++) {
    serial[i].be = be;
    serial[i].input = inputs[i];
    job_run(&serial[i]);
    assert_job_ok(&serial[i]);
  }
}

/* Parallel results equal serial ones bit for bit; frees both. */
static void assert_jobs_equal(job par[2], job serial[2]) {
  for (int i = 0; i < 2; i++) {
    assert_memory_equal(par[i].losses, serial[i].losses,
                        sizeof serial[i].losses);
    assert_int_equal(st_tensor_nbytes(&par[i].logits),
                     st_tensor_nbytes(&serial[i].logits));
    assert_memory_equal(par[i].logits.data, serial[i].logits.data,
                        st_tensor_nbytes(&serial[i].logits));
    st_tensor_free(&par[i].logits);
    st_tensor_free(&serial[i].logits);
  }
}

static void test_two_contexts_two_threads(void **state) {
  st_backend *be = st_test_backend(state);
  st_backend_options opts = {.kind = st_backend_get_kind(be),
                             .deterministic = 1};
  job serial[2], par[2];
  run_serial(be, serial);
  run_parallel(&opts, par);
  assert_jobs_equal(par, serial);
}

/* Exhaustive algorithm search from two threads at once: the CUDA contexts
 * share the process's rankings (one search per shape, the other context
 * waits for it and takes the result), so a context made afterwards runs no
 * search and, taking the same deterministic algorithms, computes the same
 * bits. */
static void test_two_exhaustive_contexts_two_threads(void **state) {
  st_backend *be = st_test_backend(state);
  st_backend_options opts = {.kind = st_backend_get_kind(be),
                             .deterministic = 1,
                             .conv_exhaustive = 1};
  job serial[2], par[2];
  const int64_t searched = run_parallel(&opts, par);
  st_backend *after = NULL;
  ST_ASSERT_OK(st_backend_new(&opts, &after));
  run_serial(after, serial);
  st_backend_stats st;
  st_backend_get_stats(after, &st);
  st_backend_free(after);
  if (opts.kind == ST_BACKEND_CUDA && searched == 0)
    fail_msg("the first exhaustive contexts of this process ran no search");
  if (st.algo_searches != 0)
    fail_msg("a later context searched %lld shapes again",
             (long long)st.algo_searches);
  assert_jobs_equal(par, serial);
}

static void test_steady_state_allocates_nothing(void **state) {
  st_backend *be = st_test_backend(state);
  st_student_options o;
  st_student_options_default(&o);
  st_student *s = NULL;
  ST_ASSERT_OK(st_student_new(be, &o, &s));
  st_safetensors *in = st_test_fixture_open(inputs[1]);
  st_tensor image = st_test_fixture_tensor(in, "image");
  st_tensor label = st_test_fixture_tensor(in, "label");
  st_tensor weight = st_test_fixture_tensor(in, "weight");
  const st_tensor *logits;
  double miou;
  float loss;
  /* Warm-up: the first key frame plans buffers and builds primitives. */
  ST_ASSERT_OK(st_student_forward(s, &image, &logits));
  ST_ASSERT_OK(st_student_set_example(s, &image, &label, &weight));
  ST_ASSERT_OK(st_student_score(s, &miou));
  ST_ASSERT_OK(st_student_save_best(s));
  ST_ASSERT_OK(st_student_train_step(s, &loss, NULL));
  ST_ASSERT_OK(st_student_restore_best(s));
  ST_ASSERT_OK(st_backend_sync(be));
  st_backend_stats warm, after;
  st_backend_get_stats(be, &warm);
  assert_true(warm.alloc_calls > 0); /* the counter counts */
  /* Three more key frames of the same size. */
  for (int k = 0; k < 3; k++) {
    ST_ASSERT_OK(st_student_forward(s, &image, &logits));
    ST_ASSERT_OK(st_student_set_example(s, &image, &label, &weight));
    ST_ASSERT_OK(st_student_score(s, &miou));
    ST_ASSERT_OK(st_student_save_best(s));
    ST_ASSERT_OK(st_student_train_step(s, &loss, &miou));
    ST_ASSERT_OK(st_student_train_step(s, &loss, &miou));
    ST_ASSERT_OK(st_student_restore_best(s));
  }
  ST_ASSERT_OK(st_backend_sync(be));
  st_backend_get_stats(be, &after);
  assert_int_equal(after.alloc_calls, warm.alloc_calls);
  st_tensor_free(&image);
  st_tensor_free(&label);
  st_tensor_free(&weight);
  st_safetensors_free(in);
  st_student_free(s);
}

enum { EVENT_ELEMS = 1 << 22 };

static void test_event_orders_contexts(void **state) {
  st_backend *be = st_test_backend(state);
  st_backend_options opts = {.kind = st_backend_get_kind(be)};
  st_backend *other = NULL;
  ST_ASSERT_OK(st_backend_new(&opts, &other));
  const int64_t shape[1] = {EVENT_ELEMS};
  st_tensor a, b;
  ST_ASSERT_OK(st_tensor_alloc(be, &a, ST_F32, 1, shape));
  ST_ASSERT_OK(st_tensor_alloc(other, &b, ST_F32, 1, shape));
  st_event *ev = NULL;
  ST_ASSERT_OK(st_event_new(be, &ev));
  for (int round = 1; round <= 3; round++) {
    /* The producer writes, the consumer waits for it and copies. */
    ST_ASSERT_OK(st_fill(be, &a, (float)round));
    ST_ASSERT_OK(st_event_record(be, ev));
    ST_ASSERT_OK(st_backend_wait_event(other, ev));
    ST_ASSERT_OK(st_copy(other, &a, &b));
    st_tensor host = st_test_to_host(other, &b);
    const float *h = host.data;
    for (int64_t i = 0; i < EVENT_ELEMS; i += EVENT_ELEMS / 64)
      assert_float_equal(h[i], (float)round, 0.0);
    assert_float_equal(h[EVENT_ELEMS - 1], (float)round, 0.0);
    st_tensor_free(&host);
  }
  st_event_free(ev);
  st_tensor_free(&a);
  st_tensor_free(&b);
  st_backend_free(other);
}

enum { GRAPH_ELEMS = 4096 };

static void expect_all(st_backend *be, const st_tensor *t, float want) {
  st_tensor host = st_test_to_host(be, t);
  const float *h = host.data;
  for (int64_t i = 0; i < st_tensor_numel(t); i++)
    if (h[i] != want)
      fail_msg("element %lld is %g, want %g", (long long)i, h[i], want);
  st_tensor_free(&host);
}

/* Recorded op sequences: recording runs nothing, a launch runs the ops on
 * the tensors' current contents, a graph launches only on its own context,
 * and a call that cannot be recorded fails the recording without harming
 * the context. The CPU records nothing and says so. */
static void test_graph_records_and_replays(void **state) {
  st_backend *be = st_test_backend(state);
  st_graph *g = (st_graph *)&g; /* must be cleared */
  if (st_backend_get_kind(be) == ST_BACKEND_CPU) {
    assert_int_equal(st_graph_begin(be), ST_ENOTSUP);
    assert_int_equal(st_graph_end(be, &g), ST_ENOTSUP);
    assert_null(g);
    return;
  }
  const int64_t shape[1] = {GRAPH_ELEMS};
  st_tensor a, b, y;
  ST_ASSERT_OK(st_tensor_alloc(be, &a, ST_F32, 1, shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &b, ST_F32, 1, shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &y, ST_F32, 1, shape));
  ST_ASSERT_OK(st_fill(be, &b, 1.0f));
  ST_ASSERT_OK(st_graph_begin(be));
  ST_ASSERT_OK(st_fill(be, &a, 2.0f));
  ST_ASSERT_OK(st_add(be, &a, &b, &y));
  ST_ASSERT_OK(st_graph_end(be, &g));
  assert_non_null(g);
  expect_all(be, &y, 0.0f); /* recorded, not run */
  ST_ASSERT_OK(st_graph_launch(be, g));
  expect_all(be, &y, 3.0f);
  ST_ASSERT_OK(st_fill(be, &b, 5.0f));
  ST_ASSERT_OK(st_graph_launch(be, g));
  ST_ASSERT_OK(st_graph_launch(be, g));
  expect_all(be, &y, 7.0f);
  assert_true(st_graph_valid(be, g));

  st_backend_options opts = {.kind = st_backend_get_kind(be)};
  st_backend *other = NULL;
  ST_ASSERT_OK(st_backend_new(&opts, &other));
  assert_false(st_graph_valid(other, g));
  assert_int_equal(st_graph_launch(other, g), ST_EINVAL);
  st_backend_free(other);
  st_graph_free(be, g);

  /* A context created with recordings off says so, and runs ops directly. */
  opts.graphs_off = 1;
  ST_ASSERT_OK(st_backend_new(&opts, &other));
  assert_int_equal(st_graph_begin(other), ST_ENOTSUP);
  assert_int_equal(st_graph_end(other, &g), ST_ENOTSUP);
  assert_null(g);
  st_backend_free(other);

  /* A download, a wait and an allocation cannot be recorded. */
  float host[GRAPH_ELEMS];
  for (int what = 0; what < 3; what++) {
    ST_ASSERT_OK(st_graph_begin(be));
    ST_ASSERT_OK(st_fill(be, &a, 9.0f));
    st_tensor extra;
    int rc = what == 0   ? st_tensor_download(be, &a, host, sizeof host)
             : what == 1 ? st_backend_sync(be)
                         : st_tensor_alloc(be, &extra, ST_F32, 1, shape);
    assert_int_equal(rc, ST_EINVAL);
    assert_non_null(strstr(st_error_detail(), "while recording"));
    g = (st_graph *)&g;
    assert_int_equal(st_graph_end(be, &g), ST_EBACKEND);
    assert_null(g);
    /* Nothing of it ran, and the context works as before. */
    expect_all(be, &a, 2.0f);
    ST_ASSERT_OK(st_fill(be, &a, 4.0f));
    expect_all(be, &a, 4.0f);
    ST_ASSERT_OK(st_fill(be, &a, 2.0f));
  }
  st_tensor_free(&a);
  st_tensor_free(&b);
  st_tensor_free(&y);
}

/* Run as `test_backend --lose-cuda-device` (a process of its own: the
 * fault below poisons every CUDA context of the process): a kernel writing
 * to an unmapped device address must surface as a failed call, and
 * st_backend_check must then report the device lost. Exits 0 when it does;
 * other codes name the step that went otherwise. */
#define LOSE_DEVICE_FLAG "--lose-cuda-device"
static int lose_device_child(void) {
  st_backend_options opts = {.kind = ST_BACKEND_CUDA};
  st_backend *be = NULL;
  if (st_backend_new(&opts, &be))
    return 3;
  if (st_backend_check(be) != ST_OK)
    return 4;
  st_tensor bogus = {.data = (void *)(uintptr_t)16,
                     .shape = {1 << 20},
                     .ndim = 1,
                     .dtype = ST_F32,
                     .backend = be,
                     .owns = 0};
  for (int i = 1; i < ST_MAX_DIMS; i++)
    bogus.shape[i] = 1;
  int rc = st_fill(be, &bogus, 1.0f);
  if (!rc)
    rc = st_backend_sync(be);
  if (rc == ST_OK)
    return 5;
  if (st_backend_check(be) != ST_ENODEV)
    return 6;
  if (!strstr(st_error_detail(), "lost"))
    return 7;
  fprintf(stderr, "child: %s\n", st_error_detail());
  /* The context is not freed: nothing can be released on a lost device. */
  return 0;
}

static void test_check_tells_a_lost_device(void **state) {
  st_backend *be = st_test_backend(state);
  ST_ASSERT_OK(st_backend_check(be));
  /* A refused call leaves the context usable. */
  const int64_t s3[1] = {3}, s4[1] = {4};
  st_tensor a, b, y;
  ST_ASSERT_OK(st_tensor_alloc(be, &a, ST_F32, 1, s3));
  ST_ASSERT_OK(st_tensor_alloc(be, &b, ST_F32, 1, s4));
  ST_ASSERT_OK(st_tensor_alloc(be, &y, ST_F32, 1, s3));
  assert_int_equal(st_add(be, &a, &b, &y), ST_ESHAPE);
  ST_ASSERT_OK(st_backend_check(be));
  ST_ASSERT_OK(st_fill(be, &a, 1.0f));
  ST_ASSERT_OK(st_backend_sync(be));
  ST_ASSERT_OK(st_backend_check(be));
  st_tensor_free(&a);
  st_tensor_free(&b);
  st_tensor_free(&y);
  if (st_backend_get_kind(be) != ST_BACKEND_CUDA)
    return; /* the CPU has no device to lose */
  char *argv[] = {"/proc/self/exe", LOSE_DEVICE_FLAG, NULL};
  pid_t pid;
  assert_int_equal(
      posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ), 0);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail_msg("the faulting child ended with %s %d (3: no context, 4: check "
             "failed at once, 5: the fault went unseen, 6: check did not "
             "say ST_ENODEV, 7: no reason given)",
             WIFEXITED(status) ? "status" : "signal",
             WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], LOSE_DEVICE_FLAG) == 0)
    return lose_device_child();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_two_contexts_two_threads),
      cmocka_unit_test(test_two_exhaustive_contexts_two_threads),
      cmocka_unit_test(test_steady_state_allocates_nothing),
      cmocka_unit_test(test_event_orders_contexts),
      cmocka_unit_test(test_graph_records_and_replays),
      cmocka_unit_test(test_check_tells_a_lost_device),
  };
  return st_test_run_on_backends("backend", tests,
                                 sizeof tests / sizeof tests[0]);
}
