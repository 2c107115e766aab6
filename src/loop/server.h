/* The server: one libuv loop multiplexing every client connection, the
 * protocol v1 session state machine, limits and timeouts, the job hand-off
 * to the compute workers (loop/worker.h), graceful shutdown, and the
 * operators' HTTP endpoint (metrics, health, readiness).
 *
 * Threading: everything here runs on the loop thread, except
 * st_server_request_shutdown, which any thread (or a signal handler's
 * uv_signal callback) may call.
 *
 * Life cycle: st_server_new loads the model description, starts the
 * workers, waits until they are loaded and warm, then binds the listeners;
 * uv_run(loop) serves; st_server_request_shutdown stops accepting, lets
 * queued and running jobs finish (at most limits.shutdown_timeout_ms, then at most
 * the one job each worker is running), sends `bye` to every client and
 * closes every handle, so uv_run returns; then st_server_free.
 *
 * Ownership: the server owns its sessions, workers, metrics and listeners;
 * the loop and the config are borrowed and must outlive it.
 */
#ifndef ST_LOOP_SERVER_H
#define ST_LOOP_SERVER_H

#include <uv.h>

#include "base/log.h"
#include "loop/metrics.h"
#include "loop/server_config.h"

typedef struct st_server st_server;

int st_server_new(uv_loop_t *loop, const st_server_config *cfg,
                  st_server **out);
/* The bound client port (useful with port 0) and metrics port (0: off). */
int st_server_port(const st_server *s);
int st_server_metrics_port(const st_server *s);
st_metrics *st_server_metrics(st_server *s);
/* Thread-safe: begins the graceful shutdown. */
void st_server_request_shutdown(st_server *s);
/* After uv_run returned. Accepts NULL. */
void st_server_free(st_server *s);

#endif
