/* The operator HTTP endpoint (src/loop/http.h) over real loopback sockets.
 *
 * Deterministic by construction: one thread drives the server's loop with
 * uv_run(UV_RUN_NOWAIT) between the steps of non-blocking client sockets,
 * so nothing races. The number of live libuv handles (uv_walk) shows which
 * connections the server holds: the listener plus a socket and a timer per
 * connection. Every test ends by stopping the server, running the loop dry
 * and closing it, which fails if any handle was left open; ASan builds
 * check that every allocation was freed. */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "loop/http.h"

#define METRICS_TYPE "text/plain; version=0.0.4"
#define METRICS_BODY "shadowtutor_up 1\n"
#define NOT_FOUND_BODY "not found\n"

/* How long a test waits for something that should take microseconds. */
enum { WAIT_MS = 3000 };
/* Slack on the measured connection timeout: loop time granularity below,
 * scheduling on a loaded machine above. */
enum { TIMEOUT_EARLY_MS = 50, TIMEOUT_LATE_MS = 2000 };
enum { RESPONSE_BYTES = 4096 };

typedef struct fixture {
  uv_loop_t loop;
  st_http_server *server;
  int port;
  int handler_calls;
  char last_path[ST_HTTP_MAX_REQUEST_BYTES + 1];
} fixture;

/* The paths the tests ask for, and what a real server would answer. */
static int handler(void *data, const char *path, st_http_response *resp) {
  fixture *f = data;
  f->handler_calls++;
  snprintf(f->last_path, sizeof f->last_path, "%s", path);
  const char *body;
  if (strcmp(path, "/metrics") == 0) {
    resp->status = 200;
    resp->content_type = METRICS_TYPE;
    body = METRICS_BODY;
  } else if (strcmp(path, "/fail") == 0) {
    /* A failing handler may have allocated already: the server frees. */
    resp->body = strdup("partial");
    return ST_EIO;
  } else if (strcmp(path, "/bad-status") == 0) {
    resp->status = 42;
    body = "x";
  } else if (strcmp(path, "/empty") == 0) {
    resp->status = 204;
    return ST_OK;
  } else {
    resp->status = 404;
    body = NOT_FOUND_BODY;
  }
  resp->body = strdup(body);
  assert_non_null(resp->body);
  resp->body_len = strlen(body);
  return ST_OK;
}

static void pump(fixture *f) { uv_run(&f->loop, UV_RUN_NOWAIT); }

static void count_handle(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h))
    ++*(int *)arg;
}

/* Live handles of the loop: 1 (the listener) + 2 per connection. */
static int live_handles(fixture *f) {
  int n = 0;
  uv_walk(&f->loop, count_handle, &n);
  return n;
}

/* Runs the loop until the server holds exactly `connections`. */
static void wait_connections(fixture *f, int connections) {
  double deadline = st_test_now_ms() + WAIT_MS;
  while (live_handles(f) != 1 + 2 * connections) {
    if (st_test_now_ms() > deadline)
      fail_msg("server holds %d handles, want %d", live_handles(f),
               1 + 2 * connections);
    pump(f);
    poll(NULL, 0, 1);
  }
}

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  ST_ASSERT_OK(
      st_http_server_start(&f->loop, "127.0.0.1", 0, handler, f, &f->server));
  f->port = st_http_server_port(f->server);
  assert_true(f->port > 0 && f->port <= 65535);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  st_http_server_stop(f->server);
  /* Runs until every handle is closed; then the loop must close cleanly. */
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  free(f);
  return 0;
}

/* ---- a client ------------------------------------------------------------ */

static int client_connect(fixture *f) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)f->port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
  assert_true(rc == 0 || errno == EINPROGRESS);
  /* The kernel completes the handshake from its backlog, loop or not. */
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  assert_int_equal(poll(&p, 1, WAIT_MS), 1);
  int err = -1;
  socklen_t len = sizeof err;
  assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len), 0);
  assert_int_equal(err, 0);
  return fd;
}

static void client_send(fixture *f, int fd, const char *data, size_t len) {
  double deadline = st_test_now_ms() + WAIT_MS;
  while (len > 0) {
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n > 0) {
      data += n;
      len -= (size_t)n;
      continue;
    }
    assert_true(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    if (st_test_now_ms() > deadline)
      fail_msg("send timed out");
    pump(f);
    poll(NULL, 0, 1);
  }
}

/* Reads until the server closes; returns the bytes read (NUL-terminated in
 * buf), or -errno when the connection was reset. */
static long client_read_to_eof(fixture *f, int fd, char *buf, size_t cap,
                               int wait_ms) {
  size_t len = 0;
  double deadline = st_test_now_ms() + wait_ms;
  for (;;) {
    ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
    if (n > 0) {
      len += (size_t)n;
      assert_true(len < cap - 1);
      continue;
    }
    if (n == 0)
      break;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return -errno;
    if (st_test_now_ms() > deadline)
      fail_msg("no EOF within %d ms", wait_ms);
    pump(f);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    poll(&p, 1, 1);
  }
  buf[len] = '\0';
  return (long)len;
}

/* One whole exchange: connect, send, read the answer to EOF, close, and
 * wait until the server has let go of the connection. */
static void exchange(fixture *f, const char *request, size_t len,
                     char *response, size_t cap) {
  int fd = client_connect(f);
  client_send(f, fd, request, len);
  long n = client_read_to_eof(f, fd, response, cap, WAIT_MS);
  if (n < 0)
    fail_msg("connection reset: %s", strerror((int)-n));
  close(fd);
  wait_connections(f, 0);
}

static void exchange_str(fixture *f, const char *request, char *response) {
  exchange(f, request, strlen(request), response, RESPONSE_BYTES);
}

/* The exact answer for a status line, type, and body. */
static const char *answer(const char *status, const char *type,
                          const char *extra, const char *body, int with_body) {
  static char buf[RESPONSE_BYTES];
  snprintf(buf, sizeof buf,
           "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
           "Connection: close\r\n\r\n%s",
           status, type, strlen(body), extra, with_body ? body : "");
  return buf;
}

#define PLAIN "text/plain; charset=utf-8"

/* ---- tests --------------------------------------------------------------- */

static void test_get_metrics(void **state) {
  fixture *f = *state;
  char r[RESPONSE_BYTES];
  exchange_str(f, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", r);
  assert_string_equal(r, answer("200 OK", METRICS_TYPE, "", METRICS_BODY, 1));
  assert_int_equal(f->handler_calls, 1);
  assert_string_equal(f->last_path, "/metrics");

  /* The query string is stripped; HTTP/1.0 is answered too. */
  exchange_str(f, "GET /metrics?name[]=up&x=1 HTTP/1.0\r\n\r\n", r);
  assert_string_equal(r, answer("200 OK", METRICS_TYPE, "", METRICS_BODY, 1));
  assert_string_equal(f->last_path, "/metrics");
  /* An absolute-form target gives its path. */
  exchange_str(f, "GET http://h:9700/healthz?full=1 HTTP/1.1\r\n\r\n", r);
  assert_string_equal(f->last_path, "/healthz");
  assert_int_equal(f->handler_calls, 3);
  /* An empty body has no second buffer. */
  exchange_str(f, "GET /empty HTTP/1.1\r\n\r\n", r);
  assert_string_equal(r, answer("204 No Content", PLAIN, "", "", 1));
}

/* A request whose target arrives over several reads. */
static void test_request_in_pieces(void **state) {
  fixture *f = *state;
  static const char *const pieces[] = {"GET /met", "rics?a", "=b HTTP/1.1\r",
                                       "\nHost: x\r\n", "\r\n"};
  int fd = client_connect(f);
  for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
    client_send(f, fd, pieces[i], strlen(pieces[i]));
    /* Give the server time to read each piece on its own. */
    double until = st_test_now_ms() + 20;
    while (st_test_now_ms() < until) {
      pump(f);
      poll(NULL, 0, 1);
    }
    if (i + 1 < sizeof pieces / sizeof pieces[0])
      assert_int_equal(f->handler_calls, 0);
  }
  char r[RESPONSE_BYTES];
  assert_true(client_read_to_eof(f, fd, r, sizeof r, WAIT_MS) > 0);
  close(fd);
  assert_string_equal(r, answer("200 OK", METRICS_TYPE, "", METRICS_BODY, 1));
  assert_string_equal(f->last_path, "/metrics");
  wait_connections(f, 0);
}

static void test_handler_statuses(void **state) {
  fixture *f = *state;
  char r[RESPONSE_BYTES];
  exchange_str(f, "GET /nope HTTP/1.1\r\n\r\n", r);
  assert_string_equal(r, answer("404 Not Found", PLAIN, "", NOT_FOUND_BODY, 1));
  assert_string_equal(f->last_path, "/nope");
  exchange_str(f, "GET /fail HTTP/1.1\r\n\r\n", r);
  assert_string_equal(r, answer("500 Internal Server Error", PLAIN, "",
                                "internal server error\n", 1));
  exchange_str(f, "GET /bad-status HTTP/1.1\r\n\r\n", r);
  assert_string_equal(r, answer("500 Internal Server Error", PLAIN, "",
                                "internal server error\n", 1));
  assert_int_equal(f->handler_calls, 3);
}

static void test_head_has_no_body(void **state) {
  fixture *f = *state;
  char r[RESPONSE_BYTES];
  exchange_str(f, "HEAD /metrics HTTP/1.1\r\n\r\n", r);
  /* The length of the body a GET would get, and no body. */
  assert_string_equal(r, answer("200 OK", METRICS_TYPE, "", METRICS_BODY, 0));
  assert_int_equal(f->handler_calls, 1);
  exchange_str(f, "HEAD /nope HTTP/1.1\r\n\r\n", r);
  assert_string_equal(r, answer("404 Not Found", PLAIN, "", NOT_FOUND_BODY, 0));
}

static void test_other_methods_405(void **state) {
  fixture *f = *state;
  static const char *const requests[] = {
      "POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
      /* refused at the headers, before a body that never comes */
      "POST /metrics HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
      "PUT /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
      "DELETE /metrics HTTP/1.1\r\n\r\n",
      "OPTIONS * HTTP/1.1\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof requests / sizeof requests[0]; i++) {
    char r[RESPONSE_BYTES];
    exchange_str(f, requests[i], r);
    assert_string_equal(r, answer("405 Method Not Allowed", PLAIN,
                                  "Allow: GET, HEAD\r\n",
                                  "method not allowed\n", 1));
  }
  assert_int_equal(f->handler_calls, 0);
}

static void test_garbage_400(void **state) {
  fixture *f = *state;
  static const char *const requests[] = {
      "\x01\x02garbage\r\n\r\n",
      "GET /metrics HTTP/9.x\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nBad Header\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof requests / sizeof requests[0]; i++) {
    char r[RESPONSE_BYTES];
    exchange_str(f, requests[i], r);
    assert_string_equal(
        r, answer("400 Bad Request", PLAIN, "", "bad request\n", 1));
  }
  assert_int_equal(f->handler_calls, 0);
}

/* A request of exactly ST_HTTP_MAX_REQUEST_BYTES is served; one byte more
 * is 431, as is a much longer one. */
static void test_oversize_431(void **state) {
  fixture *f = *state;
  static const char head[] = "GET /metrics HTTP/1.1\r\nX-Pad: ";
  static const char tail[] = "\r\n\r\n";
  enum { BIG = ST_HTTP_MAX_REQUEST_BYTES + 1000 };
  char *req = malloc(BIG + 1);
  assert_non_null(req);
  char r[RESPONSE_BYTES];
  size_t sizes[] = {ST_HTTP_MAX_REQUEST_BYTES, ST_HTTP_MAX_REQUEST_BYTES + 1,
                    BIG};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t pad = sizes[i] - strlen(head) - strlen(tail);
    memcpy(req, head, strlen(head));
    memset(req + strlen(head), 'p', pad);
    memcpy(req + strlen(head) + pad, tail, strlen(tail));
    exchange(f, req, sizes[i], r, sizeof r);
    if (i == 0)
      assert_string_equal(r,
                          answer("200 OK", METRICS_TYPE, "", METRICS_BODY, 1));
    else
      assert_string_equal(r, answer("431 Request Header Fields Too Large",
                                    PLAIN, "", "request too large\n", 1));
  }
  assert_int_equal(f->handler_calls, 1);
  free(req);
}

/* A client that starts a request and stalls is closed, unanswered, after
 * ST_HTTP_TIMEOUT_MS; one that connects and says nothing too. */
static void test_slow_client_times_out(void **state) {
  fixture *f = *state;
  double start = st_test_now_ms();
  int slow = client_connect(f);
  int silent = client_connect(f);
  client_send(f, slow, "GET /metr", 9);
  wait_connections(f, 2);
  char r[RESPONSE_BYTES];
  long n = client_read_to_eof(f, slow, r, sizeof r,
                              ST_HTTP_TIMEOUT_MS + TIMEOUT_LATE_MS);
  double elapsed = st_test_now_ms() - start;
  assert_int_equal(n, 0);
  assert_int_equal(client_read_to_eof(f, silent, r, sizeof r, TIMEOUT_LATE_MS),
                   0);
  if (elapsed < ST_HTTP_TIMEOUT_MS - TIMEOUT_EARLY_MS ||
      elapsed > ST_HTTP_TIMEOUT_MS + TIMEOUT_LATE_MS)
    fail_msg("closed after %.0f ms, want about %d", elapsed,
             ST_HTTP_TIMEOUT_MS);
  close(slow);
  close(silent);
  wait_connections(f, 0);
  assert_int_equal(f->handler_calls, 0);
}

/* A client that gives up halfway is closed at its EOF. */
static void test_client_hangs_up(void **state) {
  fixture *f = *state;
  int fd = client_connect(f);
  client_send(f, fd, "GET /metrics HT", 15);
  wait_connections(f, 1);
  close(fd);
  wait_connections(f, 0);
  assert_int_equal(f->handler_calls, 0);
}

/* Stopping with connections open in each state closes and frees them all
 * (teardown checks the loop closes; ASan that nothing leaked). */
static void test_stop_with_open_connections(void **state) {
  fixture *f = *state;
  int idle = client_connect(f);
  int partial = client_connect(f);
  client_send(f, partial, "GET /me", 7);
  /* Answered, but the client keeps its end open: the server waits for
   * its EOF after shutting down its side. */
  int answered = client_connect(f);
  static const char get[] = "GET /metrics HTTP/1.1\r\n\r\n";
  client_send(f, answered, get, strlen(get));
  char r[RESPONSE_BYTES];
  assert_true(client_read_to_eof(f, answered, r, sizeof r, WAIT_MS) > 0);
  assert_string_equal(r, answer("200 OK", METRICS_TYPE, "", METRICS_BODY, 1));
  wait_connections(f, 3);

  st_http_server_stop(f->server);
  f->server = NULL; /* teardown's stop is then a no-op */
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(live_handles(f), 0);
  /* The idle client sees an orderly close. */
  assert_int_equal(client_read_to_eof(f, idle, r, sizeof r, WAIT_MS), 0);
  close(idle);
  close(partial);
  close(answered);
}

static void test_start_errors(void **state) {
  fixture *f = *state;
  st_http_server *other = (st_http_server *)&other;
  /* The port is taken by the fixture's server. */
  assert_int_equal(
      st_http_server_start(&f->loop, "127.0.0.1", f->port, handler, f, &other),
      ST_EIO);
  assert_null(other);
  char want[128];
  snprintf(want, sizeof want, "http 127.0.0.1:%d: %s", f->port,
           strerror(EADDRINUSE));
  assert_string_equal(st_error_detail(), want);
  /* A failed start leaves no handle behind. */
  assert_int_equal(live_handles(f), 1);
  assert_int_equal(
      st_http_server_start(&f->loop, "127.0.0.1", 65536, handler, f, &other),
      ST_EINVAL);
  assert_int_equal(
      st_http_server_start(&f->loop, "127.0.0.1", -1, handler, f, &other),
      ST_EINVAL);
  assert_int_equal(
      st_http_server_start(&f->loop, "127.0.0.1", 0, NULL, f, &other),
      ST_EINVAL);
  assert_int_equal(
      st_http_server_start(NULL, "127.0.0.1", 0, handler, f, &other),
      ST_EINVAL);
  assert_int_equal(live_handles(f), 1);
  st_http_server_stop(NULL);
  assert_int_equal(st_http_server_port(NULL), -1);
}

/* Two servers on one loop are independent; stopping one leaves the other
 * serving. */
static void test_two_servers(void **state) {
  fixture *f = *state;
  st_http_server *second;
  ST_ASSERT_OK(
      st_http_server_start(&f->loop, "127.0.0.1", 0, handler, f, &second));
  int second_port = st_http_server_port(second);
  assert_true(second_port > 0 && second_port != f->port);
  st_http_server_stop(second);
  while (live_handles(f) != 1)
    pump(f);
  char r[RESPONSE_BYTES];
  exchange_str(f, "GET /metrics HTTP/1.1\r\n\r\n", r);
  assert_string_equal(r, answer("200 OK", METRICS_TYPE, "", METRICS_BODY, 1));
}

/* Many connections in a row leave nothing behind. */
static void test_many_exchanges(void **state) {
  fixture *f = *state;
  enum { ROUNDS = 200 };
  char r[RESPONSE_BYTES];
  for (int i = 0; i < ROUNDS; i++) {
    exchange_str(
        f, i % 2 ? "GET /metrics HTTP/1.1\r\n\r\n" : "POST / HTTP/1.1\r\n\r\n",
        r);
    assert_true(strncmp(r, i % 2 ? "HTTP/1.1 200 " : "HTTP/1.1 405 ", 13) == 0);
  }
  assert_int_equal(f->handler_calls, ROUNDS / 2);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  /* As the server must: a peer that vanishes mid-write is an error code,
   * not a signal. */
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      T(test_get_metrics),       T(test_request_in_pieces),
      T(test_handler_statuses),  T(test_head_has_no_body),
      T(test_other_methods_405), T(test_garbage_400),
      T(test_oversize_431),      T(test_slow_client_times_out),
      T(test_client_hangs_up),   T(test_stop_with_open_connections),
      T(test_start_errors),      T(test_two_servers),
      T(test_many_exchanges),
  };
  return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
