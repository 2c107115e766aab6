/* shadowtutor-client: the edge daemon (docs/client.md).
 *
 *   shadowtutor-client --config FILE --server HOST:PORT --input SRC
 *                      [--output overlay.mp4] [--masks DIR] [--stats FILE]
 *                      [--realtime] [--weights FILE] [--FLAG VALUE ...]
 *
 * Every setting of the config file is also a flag (client_config.h);
 * `--help` lists them with their defaults. Exit statuses: run.h.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libavutil/log.h>

#include "base/error.h"
#include "base/log.h"
#include "client_config.h"
#include "run.h"

#define HELP_DEFAULT_BYTES 64

static void usage(FILE *f) {
  fprintf(f, "usage: shadowtutor-client --config FILE --server HOST:PORT "
             "--input SRC\n"
             "                          [--output overlay.mp4] [--masks DIR] "
             "[--stats FILE]\n"
             "                          [--realtime] [--weights FILE] "
             "[--FLAG VALUE ...]\n"
             "\nEvery config key is a flag ('_' written '-'); defaults:\n");
  for (int i = 0; i < st_client_setting_count(); i++) {
    char def[HELP_DEFAULT_BYTES];
    st_client_setting_default_json(i, def, sizeof def);
    char flag[64];
    snprintf(flag, sizeof flag, "--%s%s",
             st_client_setting_is_bool(i) ? "[no-]" : "",
             st_client_setting_key(i));
    for (char *p = flag; *p; p++)
      if (*p == '_')
        *p = '-';
    fprintf(f, "  %-24s %-18s %s\n", flag, def, st_client_setting_help(i));
  }
}

static void on_stop_signal(int signum) {
  (void)signum;
  st_client_request_stop();
}

/* libgomp reads OMP_WAIT_POLICY once, when it loads. Its default spins
 * idle threads for ~3 ms after every parallel region, which on a small
 * board takes the cores the reader, network and writer threads need; so
 * the client re-executes itself once with the passive policy unless the
 * operator chose one (as shadowtutor-server does). Passive alone makes
 * every one of the student's parallel loops wake its threads from sleep:
 * 720p inference measured 6-8 % slower than with a short spin
 * (docs/performance.md, "The client"). So the re-exec also bounds the spin
 * to ST_CLIENT_OMP_SPIN_COUNT (libgomp honours GOMP_SPINCOUNT under the
 * passive policy), about a millisecond: enough to bridge the gaps between
 * one forward pass's loops, short enough to leave the cores to the other
 * threads between frames. */
#define ST_CLIENT_OMP_SPIN_COUNT "100000"

static void ensure_passive_openmp(char **argv) {
  if (getenv("OMP_WAIT_POLICY"))
    return;
  if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0)
    return;
  if (!getenv("GOMP_SPINCOUNT"))
    setenv("GOMP_SPINCOUNT", ST_CLIENT_OMP_SPIN_COUNT, 1);
  execv("/proc/self/exe", argv);
  /* exec failed (no /proc): carry on with the default policy. */
}

int main(int argc, char **argv) {
  ensure_passive_openmp(argv);
  /* The config file first, wherever --config stands, so flags override it
   * whatever their order. */
  const char *config = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return ST_CLIENT_EXIT_OK;
    }
    if (strcmp(argv[i], "--config") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "shadowtutor-client: --config needs a file\n");
        return ST_CLIENT_EXIT_USAGE;
      }
      config = argv[++i];
    }
  }
  static st_client_config cfg; /* large: keep it off the stack */
  st_client_config_defaults(&cfg);
  if (config && st_client_config_load(config, &cfg)) {
    fprintf(stderr, "shadowtutor-client: %s\n", st_error_detail());
    return ST_CLIENT_EXIT_USAGE;
  }
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--config") == 0) {
      i++;
      continue;
    }
    int used = 0;
    if (st_client_config_flag(&cfg, argv[i], i + 1 < argc ? argv[i + 1] : NULL,
                              &used)) {
      fprintf(stderr, "shadowtutor-client: %s (see --help)\n",
              st_error_detail());
      return ST_CLIENT_EXIT_USAGE;
    }
    i += used;
  }
  if (st_client_config_check(&cfg)) {
    fprintf(stderr, "shadowtutor-client: %s\n", st_error_detail());
    return ST_CLIENT_EXIT_USAGE;
  }
  st_log_level level = ST_LOG_INFO;
  st_log_level_from_name(cfg.log_level, &level);
  st_log_set_level(level);
  /* FFmpeg reports through return codes here; its own log lines would
   * repeat them, one per corrupt packet. */
  av_log_set_level(AV_LOG_QUIET);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  /* A server that vanishes mid-write must fail that write (EPIPE), not
   * kill the client. */
  signal(SIGPIPE, SIG_IGN);
  return st_client_run(&cfg);
}
