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

int st_json_check_keys(const char *label, json_t *obj, const char *prefix,
                       const char *const *known, size_t n, int require_all) {
  const char *key;
  json_t *value;
  json_object_foreach(obj, key, value) {
    (void)value;
    size_t i = 0;
    while (i < n && strcmp(key, known[i]) != 0)
      i++;
    if (i == n)
      return st_error_set(ST_EFORMAT, "%s: unknown key %s%s", label, prefix,
                          key);
  }
  for (size_t i = 0; require_all && i < n; i++)
    if (!json_object_get(obj, known[i]))
      return st_error_set(ST_EFORMAT, "%s: missing key %s%s", label, prefix,
                          known[i]);
  return ST_OK;
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
