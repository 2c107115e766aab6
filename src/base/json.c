#include "base/json.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "base/error.h"

static int syntax_error(const char *label, const json_error_t *err) {
  return st_error_set(ST_EFORMAT, "%s:%d:%d: %s", label, err->line,
                      err->column, err->text);
}

int st_json_parse(const char *text, const char *label, json_t **root) {
  json_error_t err;
  *root = json_loads(text, JSON_REJECT_DUPLICATES, &err);
  return *root ? ST_OK : syntax_error(label, &err);
}

int st_json_load(const char *path, json_t **root) {
  *root = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    int e = errno;
    return st_error_set(e == ENOENT ? ST_ENOENT : ST_EIO, "%s: %s", path,
                        strerror(e));
  }
  json_error_t err;
  *root = json_loadf(f, JSON_REJECT_DUPLICATES, &err);
  fclose(f);
  return *root ? ST_OK : syntax_error(path, &err);
}
