#include "base/json.h"

#include <errno.h>
#include <limits.h>
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

/* ---- typed readers ---------------------------------------------------------- */

int st_json_object(const char *label, json_t *parent, const char *key,
                   const char *const *known, size_t n, json_t **out) {
  *out = json_object_get(parent, key);
  if (!*out)
    return ST_OK;
  if (!json_is_object(*out))
    return st_error_set(ST_EFORMAT, "%s: %s must be an object", label, key);
  char prefix[64];
  snprintf(prefix, sizeof prefix, "%s.", key);
  return st_json_check_keys(label, *out, prefix, known, n, 0);
}

int st_json_int(const char *label, json_t *obj, const char *key,
                const char *path, long long lo, long long hi, long long *dst,
                int *present) {
  json_t *v = obj ? json_object_get(obj, key) : NULL;
  if (present)
    *present = v != NULL;
  if (!v)
    return ST_OK;
  if (!json_is_integer(v))
    return st_error_set(ST_EFORMAT, "%s: %s must be an integer", label, path);
  long long x = json_integer_value(v);
  if (x < lo || x > hi) {
    /* "must be >= 1" reads better than "in [1, 2147483647]" for the
     * common mistake; the full range is given for the overflow case. */
    if (hi == INT_MAX && x < lo)
      return st_error_set(ST_EINVAL, "%s: %s must be >= %lld", label, path, lo);
    return st_error_set(ST_EINVAL, "%s: %s must be in [%lld, %lld]", label,
                        path, lo, hi);
  }
  *dst = x;
  return ST_OK;
}

int st_json_number(const char *label, json_t *obj, const char *key,
                   const char *path, double *dst, int *present) {
  json_t *v = obj ? json_object_get(obj, key) : NULL;
  if (present)
    *present = v != NULL;
  if (!v)
    return ST_OK;
  if (!json_is_number(v))
    return st_error_set(ST_EFORMAT, "%s: %s must be a number", label, path);
  *dst = json_number_value(v);
  return ST_OK;
}
