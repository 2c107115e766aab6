#include "base/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "base/error.h"

/* Longest line; longer ones are cut. */
#define ST_LOG_LINE_BYTES 1024
#define NS_PER_MS 1000000L

static atomic_int log_level = ST_LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

const char *st_log_level_name(st_log_level level) {
  return (unsigned)level <= ST_LOG_DEBUG ? level_names[level] : "?";
}

int st_log_level_from_name(const char *name, st_log_level *out) {
  for (int i = 0; i <= ST_LOG_DEBUG; i++)
    if (strcmp(name, level_names[i]) == 0) {
      *out = (st_log_level)i;
      return ST_OK;
    }
  return st_error_set(ST_EINVAL, "log level '%s' is not error, warn, info "
                      "or debug", name);
}

void st_log_set_level(st_log_level level) { atomic_store(&log_level, level); }

void st_log(st_log_level level, const char *fmt, ...) {
  if ((int)level > atomic_load(&log_level))
    return;
  char line[ST_LOG_LINE_BYTES];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
  n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %s ",
                        ts.tv_nsec / NS_PER_MS, st_log_level_name(level));
  va_list ap;
  va_start(ap, fmt);
  if (n < sizeof line)
    vsnprintf(line + n, sizeof line - n, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", line);
}
