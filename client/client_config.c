#include "client_config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/error.h"
#include "base/json.h"
#include "proto/proto.h"

/* One row of the settings table. */
typedef struct setting {
  const char *key;
  st_setting_type type;
  size_t offset;       /* of the value in st_client_config */
  const char *def_str; /* string default (NULL: null) */
  double def_num;      /* number default */
  double lo, hi;       /* INT / NUM range */
  const char *choices; /* ENUM: "a|b|c" */
  const char *help;
} setting;

/* The X-macro's defaults are strings for some types and numbers for the
 * others; each type's row maker keeps the kind it understands. */
#define ROW_TEXT(kind, key, def, ch, help)                                     \
  {#key, kind, offsetof(st_client_config, key), def, 0, 0, 0, ch, help},
#define ROW_NUMERIC(kind, key, def, lo, hi, ch, help)                          \
  {#key,  kind, offsetof(st_client_config, key), NULL, (double)(def),          \
   (double)(lo), (double)(hi), ch, help},
#define ROW_STR(key, def, lo, hi, ch, help) ROW_TEXT(ST_SET_STR, key, def, ch, help)
#define ROW_PATH(key, def, lo, hi, ch, help)                                   \
  ROW_TEXT(ST_SET_PATH, key, def, ch, help)
#define ROW_ENUM(key, def, lo, hi, ch, help)                                   \
  ROW_TEXT(ST_SET_ENUM, key, def, ch, help)
#define ROW_INT(key, def, lo, hi, ch, help)                                    \
  ROW_NUMERIC(ST_SET_INT, key, def, lo, hi, ch, help)
#define ROW_NUM(key, def, lo, hi, ch, help)                                    \
  ROW_NUMERIC(ST_SET_NUM, key, def, lo, hi, ch, help)
#define ROW_BOOL(key, def, lo, hi, ch, help)                                   \
  ROW_NUMERIC(ST_SET_BOOL, key, def, 0, 1, ch, help)
#define ROW(key, type, def, lo, hi, ch, help)                                  \
  ROW_##type(key, def, lo, hi, ch, help)

static const setting settings[] = {ST_CLIENT_SETTINGS(ROW)};
#define SETTING_COUNT ((int)(sizeof settings / sizeof settings[0]))

int st_client_setting_count(void) { return SETTING_COUNT; }
const char *st_client_setting_key(int i) { return settings[i].key; }
const char *st_client_setting_help(int i) { return settings[i].help; }
int st_client_setting_is_bool(int i) {
  return settings[i].type == ST_SET_BOOL;
}

static char *str_field(st_client_config *c, const setting *s) {
  return (char *)c + s->offset;
}
static long long *int_field(st_client_config *c, const setting *s) {
  return (long long *)((char *)c + s->offset);
}
static double *num_field(st_client_config *c, const setting *s) {
  return (double *)((char *)c + s->offset);
}
static int *bool_field(st_client_config *c, const setting *s) {
  return (int *)((char *)c + s->offset);
}

static int is_string_type(st_setting_type t) {
  return t == ST_SET_STR || t == ST_SET_PATH || t == ST_SET_ENUM;
}

void st_client_setting_default_json(int i, char *buf, size_t len) {
  const setting *s = &settings[i];
  if (is_string_type(s->type))
    snprintf(buf, len, s->def_str ? "\"%s\"" : "null",
             s->def_str ? s->def_str : "");
  else if (s->type == ST_SET_BOOL)
    snprintf(buf, len, "%s", s->def_num != 0 ? "true" : "false");
  else if (s->type == ST_SET_INT)
    snprintf(buf, len, "%lld", (long long)s->def_num);
  else
    snprintf(buf, len, "%g", s->def_num);
}

void st_client_config_defaults(st_client_config *c) {
  memset(c, 0, sizeof *c);
  for (int i = 0; i < SETTING_COUNT; i++) {
    const setting *s = &settings[i];
    switch (s->type) {
    case ST_SET_STR:
    case ST_SET_PATH:
    case ST_SET_ENUM:
      snprintf(str_field(c, s), ST_CLIENT_STR_BYTES + 1, "%s",
               s->def_str ? s->def_str : "");
      break;
    case ST_SET_INT:
      *int_field(c, s) = (long long)s->def_num;
      break;
    case ST_SET_NUM:
      *num_field(c, s) = s->def_num;
      break;
    case ST_SET_BOOL:
      *bool_field(c, s) = s->def_num != 0;
      break;
    }
  }
}

/* 1 when `value` is one of the "|"-separated choices. */
static int enum_allows(const char *choices, const char *value) {
  size_t n = strlen(value);
  const char *p = choices;
  while (p && *p) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && strncmp(p, value, n) == 0)
      return 1;
    p = bar ? bar + 1 : NULL;
  }
  return 0;
}

/* Stores a string value (NULL: null) after its checks. `where` names the
 * source in errors ("client.json: jpeg_quality" or "--jpeg-quality"). */
static int set_string(st_client_config *c, const setting *s, const char *v,
                      const char *base_dir, const char *where) {
  char *dst = str_field(c, s);
  if (!v) {
    if (s->type == ST_SET_ENUM)
      return st_error_set(ST_EFORMAT, "%s must be one of %s", where,
                          s->choices);
    dst[0] = '\0';
    return ST_OK;
  }
  if (!*v)
    return st_error_set(ST_EINVAL, "%s must not be empty", where);
  if (s->type == ST_SET_ENUM && !enum_allows(s->choices, v))
    return st_error_set(ST_EINVAL, "%s must be one of %s, not '%s'", where,
                        s->choices, v);
  int n;
  if (s->type == ST_SET_PATH && base_dir && *base_dir && v[0] != '/')
    n = snprintf(dst, ST_CLIENT_STR_BYTES + 1, "%s/%s", base_dir, v);
  else
    n = snprintf(dst, ST_CLIENT_STR_BYTES + 1, "%s", v);
  if (n < 0 || n > ST_CLIENT_STR_BYTES) {
    dst[0] = '\0';
    return st_error_set(ST_EINVAL, "%s is longer than %d bytes", where,
                        ST_CLIENT_STR_BYTES);
  }
  return ST_OK;
}

static int set_number(st_client_config *c, const setting *s, double v,
                      int is_integer, const char *where) {
  if (s->type == ST_SET_INT) {
    if (!is_integer)
      return st_error_set(ST_EFORMAT, "%s must be an integer", where);
    if (v < s->lo || v > s->hi)
      return st_error_set(ST_EINVAL, "%s must be in [%lld, %lld]", where,
                          (long long)s->lo, (long long)s->hi);
    *int_field(c, s) = (long long)v;
    return ST_OK;
  }
  if (!isfinite(v) || v < s->lo || v > s->hi)
    return st_error_set(ST_EINVAL, "%s must be in [%g, %g]", where, s->lo,
                        s->hi);
  *num_field(c, s) = v;
  return ST_OK;
}

static int apply_json(st_client_config *c, const setting *s, json_t *v,
                      const char *label, const char *base_dir) {
  char where[256];
  snprintf(where, sizeof where, "%s: %s", label, s->key);
  switch (s->type) {
  case ST_SET_STR:
  case ST_SET_PATH:
  case ST_SET_ENUM:
    if (json_is_null(v))
      return set_string(c, s, NULL, base_dir, where);
    if (!json_is_string(v))
      return st_error_set(ST_EFORMAT, "%s must be a string%s", where,
                          s->type == ST_SET_ENUM ? "" : " or null");
    if (strlen(json_string_value(v)) != json_string_length(v))
      return st_error_set(ST_EFORMAT, "%s must not contain a NUL byte", where);
    return set_string(c, s, json_string_value(v), base_dir, where);
  case ST_SET_INT:
    if (!json_is_integer(v))
      return st_error_set(ST_EFORMAT, "%s must be an integer", where);
    return set_number(c, s, (double)json_integer_value(v), 1, where);
  case ST_SET_NUM:
    if (!json_is_number(v))
      return st_error_set(ST_EFORMAT, "%s must be a number", where);
    return set_number(c, s, json_number_value(v), 0, where);
  case ST_SET_BOOL:
    if (!json_is_boolean(v))
      return st_error_set(ST_EFORMAT, "%s must be true or false", where);
    *bool_field(c, s) = json_is_true(v);
    return ST_OK;
  }
  return st_error_set(ST_EINVAL, "%s: unknown setting type", where);
}

static int parse_root(json_t *root, const char *label, const char *base_dir,
                      st_client_config *c) {
  if (!json_is_object(root))
    return st_error_set(ST_EFORMAT, "%s: top level must be an object", label);
  const char *keys[SETTING_COUNT];
  for (int i = 0; i < SETTING_COUNT; i++)
    keys[i] = settings[i].key;
  int rc = st_json_check_keys(label, root, "", keys, SETTING_COUNT, 0);
  if (rc)
    return rc;
  /* Parsed into a copy, so a file with one bad value changes nothing. */
  st_client_config tmp = *c;
  for (int i = 0; i < SETTING_COUNT; i++) {
    json_t *v = json_object_get(root, settings[i].key);
    if (v && (rc = apply_json(&tmp, &settings[i], v, label, base_dir)))
      return rc;
  }
  *c = tmp;
  return ST_OK;
}

int st_client_config_parse(const char *text, const char *label,
                           const char *base_dir, st_client_config *c) {
  json_t *root = NULL;
  int rc = st_json_parse(text, label, &root);
  if (rc)
    return rc;
  rc = parse_root(root, label, base_dir, c);
  json_decref(root);
  return rc;
}

int st_client_config_load(const char *path, st_client_config *c) {
  json_t *root = NULL;
  int rc = st_json_load(path, &root);
  if (rc)
    return rc;
  char dir[ST_CLIENT_STR_BYTES + 1];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash)
    *slash = '\0';
  else
    snprintf(dir, sizeof dir, ".");
  if (slash == dir) /* "/client.json" */
    snprintf(dir, sizeof dir, "/");
  rc = parse_root(root, path, dir, c);
  json_decref(root);
  return rc;
}

/* The setting the words of a flag name ("jpeg-quality" -> jpeg_quality). */
static const setting *setting_of_words(const char *words) {
  for (int i = 0; i < SETTING_COUNT; i++) {
    const char *k = settings[i].key;
    size_t j = 0;
    /* Flags spell the key's '_' as '-', and only so. */
    while (k[j] && words[j] &&
           (k[j] == '_' ? words[j] == '-' : words[j] == k[j]))
      j++;
    if (!k[j] && !words[j])
      return &settings[i];
  }
  return NULL;
}

/* The setting a flag names: "--jpeg-quality" -> jpeg_quality. A boolean
 * setting has two flags: "--realtime" sets it, "--no-realtime" clears it
 * (*negated = 1). */
static const setting *setting_of_flag(const char *flag, int *negated) {
  *negated = 0;
  if (strncmp(flag, "--", 2) != 0)
    return NULL;
  const setting *s = setting_of_words(flag + 2);
  if (s || strncmp(flag + 2, "no-", 3) != 0)
    return s;
  s = setting_of_words(flag + 5);
  if (!s || s->type != ST_SET_BOOL)
    return NULL;
  *negated = 1;
  return s;
}

int st_client_config_flag(st_client_config *c, const char *flag,
                          const char *value, int *used) {
  *used = 0;
  int negated;
  const setting *s = setting_of_flag(flag, &negated);
  if (!s)
    return st_error_set(ST_ENOENT, "unknown option '%s'", flag);
  if (s->type == ST_SET_BOOL) {
    *bool_field(c, s) = !negated;
    return ST_OK;
  }
  if (!value)
    return st_error_set(ST_EINVAL, "%s needs a value", flag);
  *used = 1;
  switch (s->type) {
  case ST_SET_STR:
  case ST_SET_PATH:
  case ST_SET_ENUM:
    /* Flags are relative to the working directory, never the config's. */
    return set_string(
        c, s,
        strcmp(value, "null") == 0 && s->type != ST_SET_ENUM ? NULL : value,
        NULL, flag);
  case ST_SET_INT: {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(value, &end, 10);
    if (!*value || *end || errno)
      return st_error_set(ST_EINVAL, "%s must be an integer, not '%s'", flag,
                          value);
    if ((double)v < s->lo || (double)v > s->hi)
      return st_error_set(ST_EINVAL, "%s must be in [%lld, %lld]", flag,
                          (long long)s->lo, (long long)s->hi);
    *int_field(c, s) = v;
    return ST_OK;
  }
  case ST_SET_NUM: {
    char *end = NULL;
    double v = strtod(value, &end);
    if (!*value || *end)
      return st_error_set(ST_EINVAL, "%s must be a number, not '%s'", flag,
                          value);
    return set_number(c, s, v, 0, flag);
  }
  case ST_SET_BOOL:
    break;
  }
  return ST_OK;
}

int st_client_parse_host_port(const char *text, char *host, size_t host_len,
                              int *port) {
  const char *colon;
  const char *h = text;
  size_t hlen;
  if (text[0] == '[') {
    const char *close = strchr(text, ']');
    if (!close || close[1] != ':')
      return st_error_set(ST_EINVAL, "'%s' is not [IPv6]:PORT", text);
    h = text + 1;
    hlen = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(text, ':');
    if (!colon || strchr(text, ':') != colon)
      return st_error_set(ST_EINVAL, "'%s' is not HOST:PORT", text);
    hlen = (size_t)(colon - text);
  }
  if (hlen == 0 || hlen >= host_len)
    return st_error_set(ST_EINVAL, "'%s': the host must be 1..%zu bytes", text,
                        host_len - 1);
  char *end = NULL;
  errno = 0;
  long p = strtol(colon + 1, &end, 10);
  if (!colon[1] || *end || errno || p < 1 || p > 65535)
    return st_error_set(ST_EINVAL, "'%s': the port must be 1..65535", text);
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  *port = (int)p;
  return ST_OK;
}

int st_client_parse_size(const char *text, int *width, int *height) {
  char *end = NULL;
  errno = 0;
  long w = strtol(text, &end, 10);
  if (end == text || (*end != 'x' && *end != 'X') || errno)
    return st_error_set(ST_EINVAL, "size '%s' is not WxH", text);
  const char *hs = end + 1;
  long h = strtol(hs, &end, 10);
  if (end == hs || *end || errno)
    return st_error_set(ST_EINVAL, "size '%s' is not WxH", text);
  if (w < 1 || h < 1 || w > ST_CLIENT_MAX_SIDE || h > ST_CLIENT_MAX_SIDE)
    return st_error_set(ST_EINVAL, "size '%s': each side must be 1..%d", text,
                        ST_CLIENT_MAX_SIDE);
  *width = (int)w;
  *height = (int)h;
  return ST_OK;
}

int st_client_config_check(const st_client_config *c) {
  if (!c->input[0])
    return st_error_set(ST_EINVAL, "no input: give --input (a file, an "
                                   "rtsp:// URL, /dev/videoN or -)");
  char host[256];
  int port, w, h;
  /* The parsers' detail lines are already the whole story. */
  if (c->server[0] &&
      st_client_parse_host_port(c->server, host, sizeof host, &port))
    return ST_EINVAL;
  if (c->size[0] && st_client_parse_size(c->size, &w, &h))
    return ST_EINVAL;
  if (c->reconnect_initial_ms > c->reconnect_max_ms)
    return st_error_set(ST_EINVAL,
                        "reconnect_initial_ms must be <= reconnect_max_ms");
  if (strlen(c->client_id) > ST_PROTO_CLIENT_ID_BYTES)
    return st_error_set(ST_EINVAL, "client_id must be 1..%d bytes",
                        ST_PROTO_CLIENT_ID_BYTES);
  if (strlen(c->token) > ST_PROTO_TOKEN_BYTES)
    return st_error_set(ST_EINVAL, "token must be at most %d bytes",
                        ST_PROTO_TOKEN_BYTES);
  if (!c->server[0] && !c->weights[0])
    return st_error_set(ST_EINVAL, "without a server the client needs "
                                   "--weights (a blank device takes its "
                                   "student from the server)");
  return ST_OK;
}
