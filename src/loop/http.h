/* A minimal HTTP/1.1 endpoint on the server's libuv loop for operators:
 * GET (and HEAD) requests parsed with http-parser, one response per
 * connection, then close. It serves /metrics, /healthz and /readyz through
 * a handler callback; anything else is 404, other methods 405, a request
 * that is malformed or larger than ST_HTTP_MAX_REQUEST_BYTES 400 / 431, and
 * a client that does not finish its request within ST_HTTP_TIMEOUT_MS is
 * closed, and at most ST_HTTP_MAX_CONNECTIONS are open at once. It is for a
 * scraper on a private network, not the internet.
 *
 * Threading: everything runs on the loop thread that started it.
 * Ownership: the server owns its connections; st_http_server_stop closes
 * them all and frees the server from the close callbacks (the loop must run
 * afterwards for that to finish). The handler's body is copied before the
 * handler returns control, so it may point to the handler's own storage.
 */
#ifndef ST_LOOP_HTTP_H
#define ST_LOOP_HTTP_H

#include <stddef.h>

#include <uv.h>

#define ST_HTTP_MAX_REQUEST_BYTES 8192
#define ST_HTTP_TIMEOUT_MS 5000
/* Connections served at once; more are accepted and closed at once. */
#define ST_HTTP_MAX_CONNECTIONS 64

typedef struct st_http_response {
  int status;               /* 200, 404, 503, ... */
  const char *content_type; /* "text/plain; version=0.0.4" */
  char *body;               /* malloc'd by the handler; the server frees it */
  size_t body_len;
} st_http_response;

/* Fills *resp for a GET of `path` (the path without the query string).
 * Returns ST_OK, or an error code to answer 500. */
typedef int (*st_http_handler)(void *data, const char *path,
                               st_http_response *resp);

typedef struct st_http_server st_http_server;

/* Binds host:port (port 0 picks a free port; st_http_server_port tells
 * which) and starts listening on `loop`. */
int st_http_server_start(uv_loop_t *loop, const char *host, int port,
                         st_http_handler handler, void *data,
                         st_http_server **out);
int st_http_server_port(const st_http_server *s);
/* Stops listening and closes every connection; accepts NULL. */
void st_http_server_stop(st_http_server *s);

#endif
