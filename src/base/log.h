/* One log line per event, for the long-running programs (server, client):
 * "2026-11-28T00:29:21.650Z info event=... key=value ...", UTC with
 * milliseconds, on stderr, written with one call so lines from several
 * threads never interleave. A process-wide level drops finer lines. */
#ifndef ST_BASE_LOG_H
#define ST_BASE_LOG_H

typedef enum st_log_level {
  ST_LOG_ERROR = 0,
  ST_LOG_WARN,
  ST_LOG_INFO,
  ST_LOG_DEBUG
} st_log_level;

/* "error", "warn", "info", "debug". */
const char *st_log_level_name(st_log_level level);
/* Parses a level name; ST_EINVAL for anything else. */
int st_log_level_from_name(const char *name, st_log_level *out);

/* Lines above this level are dropped (default ST_LOG_INFO). Thread-safe. */
void st_log_set_level(st_log_level level);
void st_log(st_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
