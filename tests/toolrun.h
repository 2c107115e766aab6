/* Running a built program (shadowtutor-model) from a test: a scratch
 * folder, paths that stay valid while a test holds them, a fork/exec that
 * captures the exit code, stdout and stderr, and the usage-error check
 * every command's tests share. */
#ifndef ST_TESTS_TOOLRUN_H
#define ST_TESTS_TOOLRUN_H

#include <stddef.h>

enum { ST_TOOL_OUTPUT_BYTES = 1 << 16 };

typedef struct st_tool_run {
  int exit_code;                   /* -1 when killed by a signal */
  char out[ST_TOOL_OUTPUT_BYTES];  /* stdout (cut at the buffer size) */
  char err[ST_TOOL_OUTPUT_BYTES];  /* stderr */
} st_tool_run;

/* Makes /tmp/st_<tag>_XXXXXX; 0 on success (cmocka group setup style). */
int st_tool_workdir_make(const char *tag);
/* Removes it with everything in it; 0 on success. */
int st_tool_workdir_remove(void);
const char *st_tool_workdir(void);
/* <workdir>/<name> and fixture paths, from rings of 16 buffers: each stays
 * valid for the next 15 calls of the same function. */
const char *st_tool_work_path(const char *name);
const char *st_tool_fixture(const char *name);

/* Runs `tool` ($ST_MODEL_TOOL overrides it, for copied trees) with a
 * NULL-terminated argument list. */
void st_tool_run_args(st_tool_run *r, const char *tool, ...);
int st_tool_count_lines(const char *s);
/* Exit code 2 and exactly one stderr line that contains `needle`. */
void st_tool_assert_usage_error(const st_tool_run *r, const char *needle);

#endif
