#include "toolrun.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

enum { MAX_ARGS = 32, PATH_RING = 16, PATH_BYTES = 600 };

static char workdir[PATH_BYTES];

int st_tool_workdir_make(const char *tag) {
  snprintf(workdir, sizeof workdir, "/tmp/st_%s_XXXXXX", tag);
  return mkdtemp(workdir) ? 0 : -1;
}

int st_tool_workdir_remove(void) {
  char cmd[PATH_BYTES + 16];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", workdir);
  return system(cmd) == 0 ? 0 : -1;
}

const char *st_tool_workdir(void) { return workdir; }

const char *st_tool_work_path(const char *name) {
  static char buf[PATH_RING][2 * PATH_BYTES];
  static int next;
  char *p = buf[next++ % PATH_RING];
  snprintf(p, sizeof buf[0], "%s/%s", workdir, name);
  return p;
}

const char *st_tool_fixture(const char *name) {
  static char buf[PATH_RING][2 * PATH_BYTES];
  static int next;
  char *p = buf[next++ % PATH_RING];
  snprintf(p, sizeof buf[0], "%s", st_test_fixture_path(name));
  return p;
}

static void slurp(const char *path, char *dst, size_t cap) {
  FILE *f = fopen(path, "rb");
  size_t n = f ? fread(dst, 1, cap - 1, f) : 0;
  dst[n] = '\0';
  if (f)
    fclose(f);
}

void st_tool_run_args(st_tool_run *r, const char *tool, ...) {
  const char *env = getenv("ST_MODEL_TOOL");
  const char *path = env && *env ? env : tool;
  const char *argv[MAX_ARGS] = {path};
  int argc = 1;
  va_list ap;
  va_start(ap, tool);
  const char *a;
  while ((a = va_arg(ap, const char *)) && argc < MAX_ARGS - 1)
    argv[argc++] = a;
  va_end(ap);
  argv[argc] = NULL;
  char out[PATH_BYTES + 16], err[PATH_BYTES + 16]; /* workdir + "/stderr" */
  snprintf(out, sizeof out, "%s/stdout", workdir);
  snprintf(err, sizeof err, "%s/stderr", workdir);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (!freopen(out, "w", stdout) || !freopen(err, "w", stderr))
      _exit(127);
    execv(path, (char *const *)argv);
    _exit(127);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  r->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  slurp(out, r->out, sizeof r->out);
  slurp(err, r->err, sizeof r->err);
}

int st_tool_count_lines(const char *s) {
  int n = 0;
  for (; *s; s++)
    n += *s == '\n';
  return n;
}

void st_tool_assert_usage_error(const st_tool_run *r, const char *needle) {
  if (r->exit_code != 2 || st_tool_count_lines(r->err) != 1 ||
      !strstr(r->err, needle))
    fail_msg("expected exit 2 and one line with '%s'; got exit %d, stderr: %s",
             needle, r->exit_code, r->err);
}
