#include "loop/http.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <http_parser.h>

#include "base/error.h"

/* Pending connections the kernel holds for us; a scraper opens one at a
 * time, so a small queue is plenty. */
enum { HTTP_LISTEN_BACKLOG = 64 };

#define HTTP_DEFAULT_CONTENT_TYPE "text/plain; charset=utf-8"
/* Bodies of the answers the server gives on its own. */
#define HTTP_BODY_400 "bad request\n"
#define HTTP_BODY_405 "method not allowed\n"
#define HTTP_BODY_431 "request too large\n"
#define HTTP_BODY_500 "internal server error\n"

/* Lowest and highest status code a handler may answer with. */
enum { HTTP_STATUS_MIN = 100, HTTP_STATUS_MAX = 599 };

/* Where a connection is in its one exchange. */
typedef enum conn_state {
  CONN_READING,  /* parsing the request */
  CONN_WRITING,  /* answer queued; further input is discarded */
  CONN_DRAINING, /* answer sent and our side shut down: waiting for the
                    peer's EOF, so unread input does not turn our close into
                    a reset that could destroy the answer in flight */
  CONN_CLOSING,  /* uv_close called on both handles */
} conn_state;

typedef struct http_conn {
  uv_tcp_t tcp;                  /* the client socket; data = this */
  uv_timer_t timer;              /* whole-connection deadline; data = this */
  st_http_server *server;        /* owner */
  struct http_conn *prev, *next; /* the server's list of live connections */
  conn_state state;              /* where the exchange is */
  int open_handles;              /* handles not yet through their close cb */
  int peer_eof;                  /* the client has shut down its side */
  http_parser parser;            /* data = this */
  int headers_done;              /* the request line and headers are parsed */
  int message_done;              /* the whole request is parsed */
  int has_url;                   /* on_url has run */
  size_t url_off, url_len;       /* the request target, inside buf */
  size_t used;                   /* request bytes in buf */
  uv_write_t write_req;          /* the answer; data = this */
  uv_shutdown_t shutdown_req;    /* after the answer; data = this */
  char *head;                    /* status line and headers (owned) */
  char *body;                    /* the handler's body (owned), or NULL */
  /* The request as read; one spare byte so the path can always be
   * NUL-terminated in place. After the answer it is scratch for input
   * that is discarded. */
  char buf[ST_HTTP_MAX_REQUEST_BYTES + 1];
} http_conn;

struct st_http_server {
  uv_tcp_t listener;       /* data = this */
  st_http_handler handler; /* answers GET/HEAD paths */
  void *data;              /* the handler's */
  int port;                /* bound port */
  int stopping;            /* st_http_server_stop was called */
  int listener_closed;     /* the listener's close callback ran */
  http_conn *conns;        /* live connections (closing ones included) */
  int conn_count;          /* entries of conns */
};

/* ---- freeing ------------------------------------------------------------- */

/* The server goes once its listener and its last connection are closed. */
static void server_maybe_free(st_http_server *s) {
  if (s->listener_closed && !s->conns)
    free(s);
}

static void on_listener_closed(uv_handle_t *h) {
  st_http_server *s = h->data;
  s->listener_closed = 1;
  server_maybe_free(s);
}

static void on_conn_handle_closed(uv_handle_t *h) {
  http_conn *c = h->data;
  if (--c->open_handles > 0)
    return;
  st_http_server *s = c->server;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  s->conn_count--;
  free(c->head);
  free(c->body);
  free(c);
  server_maybe_free(s);
}

/* Idempotent: every path that ends a connection comes here. Pending write
 * and shutdown requests complete with UV_ECANCELED before the close
 * callbacks run, so the connection (which holds them) is freed last. */
static void conn_close(http_conn *c) {
  if (c->state == CONN_CLOSING)
    return;
  c->state = CONN_CLOSING;
  uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void on_timeout(uv_timer_t *t) { conn_close(t->data); }

/* ---- answering ----------------------------------------------------------- */

static void on_shutdown(uv_shutdown_t *req, int status) {
  http_conn *c = req->data;
  if (status < 0 || c->peer_eof) {
    conn_close(c);
    return;
  }
  if (c->state == CONN_WRITING)
    c->state = CONN_DRAINING;
}

static void on_write(uv_write_t *req, int status) {
  http_conn *c = req->data;
  if (status < 0 || c->state != CONN_WRITING) {
    conn_close(c);
    return;
  }
  c->shutdown_req.data = c;
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
    conn_close(c);
}

/* Queues the answer and closes after it is written. Takes ownership of
 * `owned_body` (may be NULL, then `body` is static text). */
static void respond(http_conn *c, int status, const char *content_type,
                    char *owned_body, const char *body, size_t body_len) {
  /* The method is only known once the headers are parsed. */
  int is_head = c->headers_done && c->parser.method == HTTP_HEAD;
  const char *allow =
      status == HTTP_STATUS_METHOD_NOT_ALLOWED ? "Allow: GET, HEAD\r\n" : "";
  static const char fmt[] = "HTTP/1.1 %d %s\r\n"
                            "Content-Type: %s\r\n"
                            "Content-Length: %zu\r\n"
                            "%s"
                            "Connection: close\r\n"
                            "\r\n";
  const char *reason = http_status_str((enum http_status)status);
  c->state = CONN_WRITING;
  c->body = owned_body;
  int n = snprintf(NULL, 0, fmt, status, reason, content_type, body_len, allow);
  if (n < 0 || !(c->head = malloc((size_t)n + 1))) {
    conn_close(c);
    return;
  }
  snprintf(c->head, (size_t)n + 1, fmt, status, reason, content_type, body_len,
           allow);
  uv_buf_t bufs[2] = {uv_buf_init(c->head, (unsigned)n),
                      uv_buf_init((char *)body, (unsigned)body_len)};
  unsigned nbufs = is_head || body_len == 0 ? 1 : 2;
  c->write_req.data = c;
  if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs, nbufs, on_write) <
      0)
    conn_close(c);
}

static void respond_text(http_conn *c, int status, const char *text) {
  respond(c, status, HTTP_DEFAULT_CONTENT_TYPE, NULL, text, strlen(text));
}

/* A complete GET or HEAD: the handler answers for the path. */
static void respond_request(http_conn *c) {
  const char *path = "/";
  if (c->has_url) {
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(c->buf + c->url_off, c->url_len, 0, &u) != 0) {
      respond_text(c, HTTP_STATUS_BAD_REQUEST, HTTP_BODY_400);
      return;
    }
    if (u.field_set & (1u << UF_PATH)) {
      /* The path ends inside the request (or at its last byte, where the
       * spare byte of buf takes the NUL). */
      char *p = c->buf + c->url_off + u.field_data[UF_PATH].off;
      p[u.field_data[UF_PATH].len] = '\0';
      path = p;
    }
  }
  st_http_server *s = c->server;
  st_http_response resp = {0};
  int rc = s->handler(s->data, path, &resp);
  if (rc != ST_OK || resp.status < HTTP_STATUS_MIN ||
      resp.status > HTTP_STATUS_MAX || (resp.body_len > 0 && !resp.body) ||
      resp.body_len > UINT_MAX /* a uv_buf_t's length is an unsigned */) {
    free(resp.body);
    respond_text(c, HTTP_STATUS_INTERNAL_SERVER_ERROR, HTTP_BODY_500);
    return;
  }
  respond(c, resp.status,
          resp.content_type ? resp.content_type : HTTP_DEFAULT_CONTENT_TYPE,
          resp.body, resp.body, resp.body_len);
}

/* ---- reading ------------------------------------------------------------- */

static int on_url(http_parser *p, const char *at, size_t len) {
  http_conn *c = p->data;
  /* The parser is fed from buf, and the target is one contiguous run of
   * it, so pieces from successive reads join up. */
  if (!c->has_url) {
    c->has_url = 1;
    c->url_off = (size_t)(at - c->buf);
  }
  c->url_len += len;
  return 0;
}

static int is_allowed_method(const http_parser *p) {
  return p->method == HTTP_GET || p->method == HTTP_HEAD;
}

static int on_headers_complete(http_parser *p) {
  http_conn *c = p->data;
  c->headers_done = 1;
  /* Other methods are refused at once, without waiting for a body. */
  if (!is_allowed_method(p))
    http_parser_pause(p, 1);
  return 0;
}

static int on_message_complete(http_parser *p) {
  http_conn *c = p->data;
  c->message_done = 1;
  /* One request per connection: anything after it is not parsed. */
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings parser_settings = {
    .on_url = on_url,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  http_conn *c = h->data;
  /* While reading the request, the room left under the limit (never zero:
   * a full buffer is answered before the next read); afterwards input is
   * discarded into the whole buffer. */
  if (c->state == CONN_READING)
    *buf = uv_buf_init(c->buf + c->used,
                       (unsigned)(ST_HTTP_MAX_REQUEST_BYTES - c->used));
  else
    *buf = uv_buf_init(c->buf, ST_HTTP_MAX_REQUEST_BYTES);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  http_conn *c = stream->data;
  if (c->state != CONN_READING) {
    if (nread == UV_EOF) {
      c->peer_eof = 1;
      if (c->state == CONN_DRAINING)
        conn_close(c);
    } else if (nread < 0) {
      conn_close(c);
    }
    return;
  }
  if (nread == UV_ENOBUFS) {
    respond_text(c, HTTP_STATUS_REQUEST_HEADER_FIELDS_TOO_LARGE, HTTP_BODY_431);
    return;
  }
  if (nread < 0) {
    /* EOF or an error before a whole request: nobody to answer. */
    conn_close(c);
    return;
  }
  if (nread == 0)
    return;
  size_t start = c->used;
  c->used += (size_t)nread;
  http_parser_execute(&c->parser, &parser_settings, c->buf + start,
                      (size_t)nread);
  if (c->headers_done && !is_allowed_method(&c->parser))
    respond_text(c, HTTP_STATUS_METHOD_NOT_ALLOWED, HTTP_BODY_405);
  else if (c->message_done)
    respond_request(c);
  else if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK)
    respond_text(c, HTTP_STATUS_BAD_REQUEST, HTTP_BODY_400);
  else if (c->used == ST_HTTP_MAX_REQUEST_BYTES)
    respond_text(c, HTTP_STATUS_REQUEST_HEADER_FIELDS_TOO_LARGE, HTTP_BODY_431);
}

/* ---- accepting ----------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status) {
  st_http_server *s = listener->data;
  if (status < 0 || s->stopping)
    return;
  http_conn *c = calloc(1, sizeof *c);
  if (!c)
    return; /* the connection waits in the backlog for a later accept */
  uv_loop_t *loop = listener->loop;
  if (uv_tcp_init(loop, &c->tcp) < 0) {
    free(c);
    return;
  }
  /* uv_timer_init cannot fail; from here the connection is closed, never
   * freed directly. */
  uv_timer_init(loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->server = s;
  c->open_handles = 2;
  c->state = CONN_READING;
  c->next = s->conns;
  if (s->conns)
    s->conns->prev = c;
  s->conns = c;
  s->conn_count++;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  /* Past the cap the connection is accepted and closed at once, so idle
   * sockets cannot pile up memory on the loop. */
  if (s->conn_count > ST_HTTP_MAX_CONNECTIONS) {
    (void)uv_accept(listener, (uv_stream_t *)&c->tcp);
    conn_close(c);
    return;
  }
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0 ||
      uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0 ||
      uv_timer_start(&c->timer, on_timeout, ST_HTTP_TIMEOUT_MS, 0) < 0)
    conn_close(c);
}

/* Opens, binds and listens on a socket for host:port. Done with plain
 * sockets before any libuv handle exists, so a failure (a busy port, an
 * unknown host) leaves nothing for the loop to close. */
static int listen_socket(const char *host, int port, int *fd_out,
                         int *port_out) {
  char service[16];
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
  struct addrinfo *ai = NULL;
  int gai = getaddrinfo(host, service, &hints, &ai);
  if (gai != 0)
    return st_error_set(ST_EINVAL, "http %s:%d: %s", host, port,
                        gai_strerror(gai));
  int fd =
      socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
  int err = fd < 0 ? errno : 0;
  if (!err) {
    /* As libuv does: a restarted server can bind while old connections
     * linger in TIME_WAIT. */
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
        listen(fd, HTTP_LISTEN_BACKLOG) < 0)
      err = errno;
  }
  freeaddrinfo(ai);
  struct sockaddr_storage addr;
  socklen_t addr_len = sizeof addr;
  if (!err && getsockname(fd, (struct sockaddr *)&addr, &addr_len) < 0)
    err = errno;
  if (err) {
    if (fd >= 0)
      close(fd);
    return st_error_set(ST_EIO, "http %s:%d: %s", host, port, strerror(err));
  }
  *port_out = addr.ss_family == AF_INET6
                  ? ntohs(((struct sockaddr_in6 *)&addr)->sin6_port)
                  : ntohs(((struct sockaddr_in *)&addr)->sin_port);
  *fd_out = fd;
  return ST_OK;
}

int st_http_server_start(uv_loop_t *loop, const char *host, int port,
                         st_http_handler handler, void *data,
                         st_http_server **out) {
  if (out)
    *out = NULL;
  if (!loop || !host || !handler || !out)
    return st_error_set(ST_EINVAL, "http: NULL argument");
  if (port < 0 || port > UINT16_MAX)
    return st_error_set(ST_EINVAL, "http: port %d is not in [0, 65535]", port);
  int fd = -1, bound_port = 0;
  int rc = listen_socket(host, port, &fd, &bound_port);
  if (rc)
    return rc;
  st_http_server *s = calloc(1, sizeof *s);
  if (!s) {
    close(fd);
    return st_error_set(ST_ENOMEM, "http: out of memory");
  }
  s->handler = handler;
  s->data = data;
  s->port = bound_port;
  int uv_rc = uv_tcp_init(loop, &s->listener);
  if (uv_rc < 0) {
    close(fd);
    free(s);
    return st_error_set(ST_EIO, "http: %s", uv_strerror(uv_rc));
  }
  s->listener.data = s;
  /* From a successful uv_tcp_open on, the handle owns fd. */
  uv_rc = uv_tcp_open(&s->listener, fd);
  if (uv_rc < 0)
    close(fd);
  else
    uv_rc = uv_listen((uv_stream_t *)&s->listener, HTTP_LISTEN_BACKLOG,
                      on_connection);
  if (uv_rc < 0) {
    /* Not expected after a successful listen(2); the handle exists now, so
     * it is closed and the server freed by the loop's next run. */
    s->stopping = 1;
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    return st_error_set(ST_EIO, "http %s:%d: %s", host, port,
                        uv_strerror(uv_rc));
  }
  *out = s;
  return ST_OK;
}

int st_http_server_port(const st_http_server *s) { return s ? s->port : -1; }

void st_http_server_stop(st_http_server *s) {
  if (!s || s->stopping)
    return;
  s->stopping = 1;
  uv_close((uv_handle_t *)&s->listener, on_listener_closed);
  /* Unlinked only in their close callbacks, so walking the list while
   * closing is safe. */
  for (http_conn *c = s->conns; c; c = c->next)
    conn_close(c);
}
