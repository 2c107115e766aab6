/* shadowtutor-server: the distillation service.
 *
 *   shadowtutor-server --config FILE [--listen HOST:PORT] [--metrics-port P]
 *                      [--check-config]
 *
 * Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT) or a passing
 * --check-config, 2 for a bad command line or config, 1 when serving could
 * not start (models, ports).
 */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "base/error.h"
#include "loop/server.h"
#include "loop/server_config.h"
#include "loop/worker.h"
#include "models/teacher.h"

#define EXIT_USAGE 2
/* Every key frame is a buffer of up to max_message_bytes that lives for
 * one job. glibc's defaults would map and unmap each one, or grow and trim
 * the heap around it: a page fault per 4 KiB on every frame. Keeping freed
 * memory for reuse (bounded by the peak in use) removes that cost. */
#define ST_SERVER_MMAP_THRESHOLD_BYTES (64 * 1024 * 1024)
#define ST_SERVER_TRIM_THRESHOLD_BYTES (256 * 1024 * 1024)

static void usage(FILE *f) {
  fprintf(f,
          "usage: shadowtutor-server --config FILE [--listen HOST:PORT]\n"
          "                          [--metrics-port P] [--check-config]\n");
}

static void on_signal(uv_signal_t *h, int signum) {
  st_log(ST_LOG_INFO, "event=signal signal=%d", signum);
  st_server_request_shutdown(h->data);
}

/* --check-config: the config parses, and the models it names load. */
static int check_config(const st_server_config *cfg) {
  st_model_info *mi = NULL;
  int rc = st_model_info_new(cfg, &mi);
  st_model_info_free(mi);
  if (rc || cfg->null_compute)
    return rc;
  st_backend_options bo = {.kind = ST_BACKEND_CPU, .threads = 1};
  st_backend *be = NULL;
  st_teacher *t = NULL;
  rc = st_backend_new(&bo, &be);
  if (!rc)
    rc = st_teacher_open(be, cfg->teacher_path, &t);
  st_teacher_free(t);
  st_backend_free(be);
  return rc;
}

/* libgomp reads OMP_WAIT_POLICY once, when it loads (before main). Its
 * default spins idle threads for a while after every parallel region,
 * which on a shared machine steals the cores the loop thread and the other
 * workers need (measured 5-30x slowdowns of the compute under load). So
 * the server re-executes itself once with the passive policy unless the
 * operator chose one. */
static void ensure_passive_openmp(char **argv) {
  if (getenv("OMP_WAIT_POLICY"))
    return;
  if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0)
    return;
  execv("/proc/self/exe", argv);
  /* exec failed (no /proc): carry on with the default policy. */
}

int main(int argc, char **argv) {
  ensure_passive_openmp(argv);
  const char *config = NULL, *listen = NULL, *metrics_port = NULL;
  int check = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--config") == 0 && i + 1 < argc) {
      config = argv[++i];
    } else if (strcmp(a, "--listen") == 0 && i + 1 < argc) {
      listen = argv[++i];
    } else if (strcmp(a, "--metrics-port") == 0 && i + 1 < argc) {
      metrics_port = argv[++i];
    } else if (strcmp(a, "--check-config") == 0) {
      check = 1;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "shadowtutor-server: unknown or incomplete argument '%s'\n", a);
      usage(stderr);
      return EXIT_USAGE;
    }
  }
  if (!config) {
    usage(stderr);
    return EXIT_USAGE;
  }
  static st_server_config cfg; /* large: keep it off the stack */
  if (st_server_config_load(config, &cfg)) {
    fprintf(stderr, "shadowtutor-server: %s\n", st_error_detail());
    return EXIT_USAGE;
  }
  if (listen && st_server_parse_host_port(listen, cfg.listen_host,
                                          sizeof cfg.listen_host,
                                          &cfg.listen_port)) {
    fprintf(stderr, "shadowtutor-server: --listen: %s\n", st_error_detail());
    return EXIT_USAGE;
  }
  if (metrics_port) {
    char *end = NULL;
    long p = strtol(metrics_port, &end, 10);
    if (!*metrics_port || *end || p < 0 || p > 65535) {
      fprintf(stderr, "shadowtutor-server: --metrics-port must be 0..65535\n");
      return EXIT_USAGE;
    }
    cfg.metrics_port = (int)p;
  }
  if (check) {
    if (check_config(&cfg)) {
      fprintf(stderr, "shadowtutor-server: %s\n", st_error_detail());
      return EXIT_USAGE;
    }
    printf("%s: ok\n", config);
    return 0;
  }

  /* A client that disconnects while we write to it must fail that write
   * (EPIPE, handled per session), not kill the process. */
  signal(SIGPIPE, SIG_IGN);
  mallopt(M_MMAP_THRESHOLD, ST_SERVER_MMAP_THRESHOLD_BYTES);
  mallopt(M_TRIM_THRESHOLD, ST_SERVER_TRIM_THRESHOLD_BYTES);
  uv_loop_t *loop = uv_default_loop();
  st_server *srv = NULL;
  if (st_server_new(loop, &cfg, &srv)) {
    fprintf(stderr, "shadowtutor-server: %s\n", st_error_detail());
    return 1;
  }
  uv_signal_t sigterm, sigint;
  uv_signal_init(loop, &sigterm);
  uv_signal_init(loop, &sigint);
  sigterm.data = sigint.data = srv;
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sigint, on_signal, SIGINT);
  /* The signal handles must not keep the loop alive once the server has
   * closed everything else. */
  uv_unref((uv_handle_t *)&sigterm);
  uv_unref((uv_handle_t *)&sigint);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&sigterm, NULL);
  uv_close((uv_handle_t *)&sigint, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  st_server_free(srv);
  uv_loop_close(loop);
  st_log(ST_LOG_INFO, "event=exit");
  return 0;
}
