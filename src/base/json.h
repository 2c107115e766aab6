/* JSON documents for the config loaders (jansson), parsed strictly:
 * duplicate keys are refused, and a syntax error reads
 * "<label>:<line>:<column>: <what>". */
#ifndef ST_BASE_JSON_H
#define ST_BASE_JSON_H

#include <jansson.h>

/* Parses text; `label` names it in errors. *root is the caller's reference. */
int st_json_parse(const char *text, const char *label, json_t **root);
/* Reads and parses a file (ST_ENOENT when it is missing). */
int st_json_load(const char *path, json_t **root);
/* Refuses keys of the object `obj` that `known` (n names) does not list,
 * and with require_all also a listed key that is absent. `prefix` is obj's
 * key path with a trailing dot ("" at the top) for the messages
 * ("cfg.json: unknown key input.gamma"). */
int st_json_check_keys(const char *label, json_t *obj, const char *prefix,
                       const char *const *known, size_t n, int require_all);

/* Typed readers shared by the config loaders. Each leaves *dst alone when
 * the key is absent (obj may be NULL: absent), sets *present (may be NULL)
 * to whether it was there, and names `path` in its error: wrong JSON type
 * ST_EFORMAT ("<label>: <path> must be an integer"), out of range
 * ST_EINVAL ("must be in [lo, hi]", or "must be >= lo" when hi is
 * INT_MAX). */
int st_json_int(const char *label, json_t *obj, const char *key,
                const char *path, long long lo, long long hi, long long *dst,
                int *present);
int st_json_number(const char *label, json_t *obj, const char *key,
                   const char *path, double *dst, int *present);
/* A nested object checked against its key list (unknown keys refused,
 * named "<key>.<name>"); *out is NULL when absent. */
int st_json_object(const char *label, json_t *parent, const char *key,
                   const char *const *known, size_t n, json_t **out);

#endif
