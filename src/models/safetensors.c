/* Safetensors reader and writer.
 *
 * Reading trusts nothing in the file: the 8-byte header length is checked
 * against ST_SAFETENSORS_MAX_HEADER_BYTES and the file size before anything
 * is sized by it, the JSON header is parsed by jansson (duplicate keys
 * rejected), every tensor entry is checked on its own (keys, dtype, shape,
 * byte size, offsets) and then the entries together must tile the data block
 * exactly. Error codes: ST_EFORMAT for a malformed file, ST_EDTYPE for a
 * dtype we do not handle, ST_ESHAPE for a shape that does not fit its bytes
 * (size mismatch, byte count overflow, rank above ST_MAX_DIMS), ST_EIO and
 * ST_ENOENT for the file system, ST_ENOMEM for memory.
 *
 * An opened st_safetensors owns the whole file image and the parsed JSON
 * header; names and metadata strings handed out point into that header and
 * live until st_safetensors_free.
 */
#include "models/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "base/error.h"
#include "base/file.h"

/* Tensor bytes are copied straight out of the file, which is little-endian. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors I/O assumes a little-endian host");

/* Size of the little-endian header length that opens every file. */
enum { ST_ST_PREFIX_BYTES = 8 };
/* The header is padded with spaces to a multiple of this (as the reference
 * writer and the Hugging Face one do), so the data block starts aligned. */
enum { ST_ST_HEADER_ALIGN_BYTES = 8 };

static const char METADATA_KEY[] = "__metadata__";

typedef struct st_entry {
  const char *name;           /* borrowed from the JSON header */
  st_dtype dtype;             /* element type */
  int ndim;                   /* rank, 0..ST_MAX_DIMS */
  int64_t shape[ST_MAX_DIMS]; /* extents; trailing entries are 1 */
  uint64_t begin;             /* byte offset into the data block */
  uint64_t end;               /* one past the last byte */
} st_entry;

struct st_safetensors {
  char *label;              /* file path or buffer label, for errors */
  uint8_t *file;            /* owned image of the whole file */
  const uint8_t *data;      /* start of the data block inside file */
  size_t data_bytes;        /* length of the data block */
  json_t *header;           /* parsed header; owns names and metadata */
  json_t *metadata;         /* borrowed "__metadata__" object or NULL */
  st_entry *entries;        /* ordered by data offset */
  const st_entry **by_name; /* the same entries ordered by name */
  size_t count;             /* number of tensors */
};

/* ---- dtypes ---------------------------------------------------------------*/

/* Dtypes of the safetensors format that we read no data for: a file that
 * uses one is a valid file we cannot load, which deserves a different
 * message from a misspelt dtype. */
static const char *const FOREIGN_DTYPES[] = {
    "BOOL",    "I8",      "I16",     "U16", "U32",     "U64",     "BF16", "F64",
    "F8_E5M2", "F8_E4M3", "F8_E8M0", "F4",  "F6_E2M3", "F6_E3M2", "C64"};

static int dtype_parse(const char *label, const char *tensor, const char *name,
                       st_dtype *out) {
  for (int i = 0; i < ST_DTYPE_COUNT; i++) {
    if (strcmp(name, st_dtype_name((st_dtype)i)) == 0) {
      *out = (st_dtype)i;
      return ST_OK;
    }
  }
  for (size_t i = 0; i < sizeof FOREIGN_DTYPES / sizeof FOREIGN_DTYPES[0];
       i++) {
    if (strcmp(name, FOREIGN_DTYPES[i]) == 0)
      return st_error_set(ST_EDTYPE,
                          "%s: tensor '%s': dtype %s is not supported "
                          "(F32, F16, U8, I32 and I64 are)",
                          label, tensor, name);
  }
  return st_error_set(ST_EDTYPE, "%s: tensor '%s': unknown dtype '%s'", label,
                      tensor, name);
}

/* Bytes of a tensor, with every multiplication checked. Each prefix of the
 * product must fit, as st_tensor_alloc requires, so a zero extent late in
 * the shape does not excuse huge ones before it. */
static int checked_nbytes(st_dtype dtype, int ndim, const int64_t *shape,
                          uint64_t *out) {
  uint64_t bytes = st_dtype_size(dtype);
  for (int i = 0; i < ndim; i++) {
    uint64_t extent = (uint64_t)shape[i];
    if (extent != 0 && bytes > UINT64_MAX / extent)
      return -1;
    bytes *= extent;
  }
  if (bytes > SIZE_MAX)
    return -1;
  *out = bytes;
  return 0;
}

static void shape_format(const int64_t *shape, int ndim, char *buf,
                         size_t len) {
  st_tensor view = st_tensor_view(NULL, ST_U8, ndim, shape);
  st_tensor_shape_str(&view, buf, len);
}

/* ---- reading ------------------------------------------------------------- */

static uint64_t load_u64_le(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = ST_ST_PREFIX_BYTES - 1; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

/* Checks one tensor entry on its own and fills *e. */
static int entry_parse(const char *label, const char *name, json_t *value,
                       size_t data_bytes, st_entry *e) {
  memset(e, 0, sizeof *e);
  e->name = name;
  if (name[0] == '\0')
    return st_error_set(ST_EFORMAT, "%s: a tensor has an empty name", label);
  if (!json_is_object(value))
    return st_error_set(ST_EFORMAT, "%s: tensor '%s' is not a JSON object",
                        label, name);

  const char *key;
  json_t *field;
  json_object_foreach(value, key, field) {
    if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
        strcmp(key, "data_offsets") != 0)
      return st_error_set(ST_EFORMAT, "%s: tensor '%s' has unknown key '%s'",
                          label, name, key);
  }

  json_t *dtype = json_object_get(value, "dtype");
  if (!dtype)
    return st_error_set(ST_EFORMAT, "%s: tensor '%s' lacks \"dtype\"", label,
                        name);
  if (!json_is_string(dtype))
    return st_error_set(ST_EFORMAT, "%s: tensor '%s': dtype is not a string",
                        label, name);
  int rc = dtype_parse(label, name, json_string_value(dtype), &e->dtype);
  if (rc)
    return rc;

  json_t *shape = json_object_get(value, "shape");
  if (!shape)
    return st_error_set(ST_EFORMAT, "%s: tensor '%s' lacks \"shape\"", label,
                        name);
  if (!json_is_array(shape))
    return st_error_set(ST_EFORMAT, "%s: tensor '%s': shape is not an array",
                        label, name);
  size_t rank = json_array_size(shape);
  if (rank > ST_MAX_DIMS)
    return st_error_set(ST_ESHAPE,
                        "%s: tensor '%s': rank %zu is above the limit of %d",
                        label, name, rank, ST_MAX_DIMS);
  e->ndim = (int)rank;
  for (int i = 0; i < ST_MAX_DIMS; i++)
    e->shape[i] = 1;
  for (size_t i = 0; i < rank; i++) {
    json_t *dim = json_array_get(shape, i);
    if (!json_is_integer(dim) || json_integer_value(dim) < 0)
      return st_error_set(ST_EFORMAT,
                          "%s: tensor '%s': shape[%zu] is not a non-negative "
                          "integer",
                          label, name, i);
    e->shape[i] = (int64_t)json_integer_value(dim);
  }
  char shape_str[ST_MAX_DIMS * 24];
  shape_format(e->shape, e->ndim, shape_str, sizeof shape_str);
  uint64_t nbytes;
  if (checked_nbytes(e->dtype, e->ndim, e->shape, &nbytes))
    return st_error_set(ST_ESHAPE,
                        "%s: tensor '%s': byte size of %s %s overflows", label,
                        name, st_dtype_name(e->dtype), shape_str);

  json_t *offsets = json_object_get(value, "data_offsets");
  if (!offsets)
    return st_error_set(ST_EFORMAT, "%s: tensor '%s' lacks \"data_offsets\"",
                        label, name);
  json_t *begin = json_array_get(offsets, 0); /* NULL unless an array */
  json_t *end = json_array_get(offsets, 1);
  if (!json_is_array(offsets) || json_array_size(offsets) != 2 ||
      !json_is_integer(begin) || !json_is_integer(end) ||
      json_integer_value(begin) < 0 || json_integer_value(end) < 0)
    return st_error_set(ST_EFORMAT,
                        "%s: tensor '%s': data_offsets is not two "
                        "non-negative integers [begin, end]",
                        label, name);
  e->begin = (uint64_t)json_integer_value(begin);
  e->end = (uint64_t)json_integer_value(end);
  if (e->begin > e->end)
    return st_error_set(ST_EFORMAT,
                        "%s: tensor '%s': data_offsets begin %llu is after "
                        "end %llu",
                        label, name, (unsigned long long)e->begin,
                        (unsigned long long)e->end);
  if (e->end - e->begin != nbytes)
    return st_error_set(
        ST_ESHAPE,
        "%s: tensor '%s': data_offsets [%llu,%llu] hold %llu "
        "bytes but %s %s needs %llu (size mismatch)",
        label, name, (unsigned long long)e->begin, (unsigned long long)e->end,
        (unsigned long long)(e->end - e->begin), st_dtype_name(e->dtype),
        shape_str, (unsigned long long)nbytes);
  if (e->end > data_bytes)
    return st_error_set(ST_EFORMAT,
                        "%s: tensor '%s': data_offsets [%llu,%llu] run past "
                        "the end of the data block (%zu bytes)",
                        label, name, (unsigned long long)e->begin,
                        (unsigned long long)e->end, data_bytes);
  return ST_OK;
}

static int metadata_check(const char *label, json_t *md) {
  if (!json_is_object(md))
    return st_error_set(ST_EFORMAT, "%s: %s is not a JSON object", label,
                        METADATA_KEY);
  const char *key;
  json_t *value;
  json_object_foreach(md, key, value) {
    if (!json_is_string(value))
      return st_error_set(ST_EFORMAT, "%s: %s value of '%s' is not a string",
                          label, METADATA_KEY, key);
  }
  return ST_OK;
}

/* Data order; zero-byte tensors sharing an offset are ordered by name so
 * the listing does not depend on the hash table. */
static int entry_cmp_offset(const void *pa, const void *pb) {
  const st_entry *a = pa, *b = pb;
  if (a->begin != b->begin)
    return a->begin < b->begin ? -1 : 1;
  if (a->end != b->end)
    return a->end < b->end ? -1 : 1;
  return strcmp(a->name, b->name);
}

static int entry_ptr_cmp_name(const void *pa, const void *pb) {
  const st_entry *const *a = pa, *const *b = pb;
  return strcmp((*a)->name, (*b)->name);
}

/* With entries sorted by offset, each must start exactly where the one
 * before it ended and the last must end at the end of the data block. */
static int tiling_check(const st_safetensors *st) {
  uint64_t expected = 0;
  for (size_t i = 0; i < st->count; i++) {
    const st_entry *e = &st->entries[i];
    if (e->begin < expected)
      return st_error_set(ST_EFORMAT,
                          "%s: tensor '%s' at [%llu,%llu] overlaps tensor "
                          "'%s' which ends at %llu",
                          st->label, e->name, (unsigned long long)e->begin,
                          (unsigned long long)e->end, st->entries[i - 1].name,
                          (unsigned long long)expected);
    if (e->begin > expected)
      return st_error_set(ST_EFORMAT,
                          "%s: hole of %llu bytes in the data block before "
                          "tensor '%s' at %llu",
                          st->label, (unsigned long long)(e->begin - expected),
                          e->name, (unsigned long long)e->begin);
    expected = e->end;
  }
  if (expected != st->data_bytes)
    return st_error_set(ST_EFORMAT,
                        "%s: %llu trailing bytes after the tensor data "
                        "(data block is %zu bytes, tensors end at %llu)",
                        st->label,
                        (unsigned long long)(st->data_bytes - expected),
                        st->data_bytes, (unsigned long long)expected);
  return ST_OK;
}

/* Validates a whole file image. Takes ownership of `file` (freed on
 * failure too). */
static int parse_owned(uint8_t *file, size_t len, const char *label,
                       st_safetensors **out) {
  int rc;
  *out = NULL;
  st_safetensors *st = calloc(1, sizeof *st);
  if (!st) {
    free(file);
    return st_error_set(ST_ENOMEM, "%s: out of memory", label);
  }
  st->file = file;
  st->label = strdup(label);
  if (!st->label) {
    rc = st_error_set(ST_ENOMEM, "%s: out of memory", label);
    goto err;
  }

  if (len < ST_ST_PREFIX_BYTES) {
    rc = st_error_set(ST_EFORMAT,
                      "%s: file is %zu bytes, shorter than the %d-byte "
                      "header length (truncated)",
                      label, len, ST_ST_PREFIX_BYTES);
    goto err;
  }
  /* The header length is untrusted: check it before anything depends on
   * it. jansson parses in place, so nothing is ever sized by it. */
  uint64_t header_bytes = load_u64_le(file);
  if (header_bytes > ST_SAFETENSORS_MAX_HEADER_BYTES) {
    rc = st_error_set(ST_EFORMAT,
                      "%s: header length %llu exceeds the limit of %u bytes",
                      label, (unsigned long long)header_bytes,
                      ST_SAFETENSORS_MAX_HEADER_BYTES);
    goto err;
  }
  if (header_bytes > len - ST_ST_PREFIX_BYTES) {
    rc = st_error_set(ST_EFORMAT,
                      "%s: header length %llu runs past the end of the file "
                      "(%zu bytes after the length; truncated header)",
                      label, (unsigned long long)header_bytes,
                      len - ST_ST_PREFIX_BYTES);
    goto err;
  }
  st->data = file + ST_ST_PREFIX_BYTES + header_bytes;
  st->data_bytes = len - ST_ST_PREFIX_BYTES - (size_t)header_bytes;

  json_error_t jerr;
  st->header = json_loadb((const char *)file + ST_ST_PREFIX_BYTES,
                          (size_t)header_bytes, JSON_REJECT_DUPLICATES, &jerr);
  if (!st->header) {
    rc = json_error_code(&jerr) == json_error_out_of_memory ? ST_ENOMEM
                                                            : ST_EFORMAT;
    rc = st_error_set(rc, "%s: header is not valid JSON: %s (byte %d)", label,
                      jerr.text, jerr.position);
    goto err;
  }
  if (!json_is_object(st->header)) {
    rc = st_error_set(ST_EFORMAT, "%s: header is not a JSON object", label);
    goto err;
  }

  size_t slots = json_object_size(st->header);
  st->entries = calloc(slots ? slots : 1, sizeof *st->entries);
  st->by_name = calloc(slots ? slots : 1, sizeof *st->by_name);
  if (!st->entries || !st->by_name) {
    rc = st_error_set(ST_ENOMEM, "%s: out of memory for %zu tensors", label,
                      slots);
    goto err;
  }
  const char *key;
  json_t *value;
  json_object_foreach(st->header, key, value) {
    if (strcmp(key, METADATA_KEY) == 0) {
      rc = metadata_check(label, value);
      if (rc)
        goto err;
      st->metadata = value;
      continue;
    }
    rc =
        entry_parse(label, key, value, st->data_bytes, &st->entries[st->count]);
    if (rc)
      goto err;
    st->count++;
  }

  qsort(st->entries, st->count, sizeof *st->entries, entry_cmp_offset);
  rc = tiling_check(st);
  if (rc)
    goto err;
  for (size_t i = 0; i < st->count; i++)
    st->by_name[i] = &st->entries[i];
  qsort(st->by_name, st->count, sizeof *st->by_name, entry_ptr_cmp_name);
  *out = st;
  return ST_OK;

err:
  st_safetensors_free(st);
  return rc;
}

int st_safetensors_parse(const void *buf, size_t len, const char *label,
                         st_safetensors **out) {
  *out = NULL;
  if (!label)
    label = "<buffer>";
  if (!buf && len)
    return st_error_set(ST_EINVAL, "%s: NULL buffer of %zu bytes", label, len);
  uint8_t *copy = malloc(len ? len : 1);
  if (!copy)
    return st_error_set(ST_ENOMEM, "%s: cannot copy %zu bytes", label, len);
  if (len)
    memcpy(copy, buf, len);
  return parse_owned(copy, len, label, out);
}

int st_safetensors_open(const char *path, st_safetensors **out) {
  uint8_t *file = NULL;
  size_t len = 0;
  *out = NULL;
  int rc = st_read_file(path, SIZE_MAX, ST_ENOMEM, &file, &len);
  if (rc)
    return rc;
  return parse_owned(file, len, path, out);
}

void st_safetensors_free(st_safetensors *st) {
  if (!st)
    return;
  json_decref(st->header);
  free(st->entries);
  free(st->by_name);
  free(st->file);
  free(st->label);
  free(st);
}

size_t st_safetensors_count(const st_safetensors *st) { return st->count; }

const char *st_safetensors_name(const st_safetensors *st, size_t index) {
  return index < st->count ? st->entries[index].name : NULL;
}

static const st_entry *entry_find(const st_safetensors *st, const char *name) {
  st_entry key = {.name = name};
  const st_entry *keyp = &key;
  const st_entry **hit = bsearch(&keyp, st->by_name, st->count,
                                 sizeof *st->by_name, entry_ptr_cmp_name);
  return hit ? *hit : NULL;
}

int st_safetensors_info(const st_safetensors *st, const char *name,
                        st_dtype *dtype, int *ndim, int64_t *shape) {
  const st_entry *e = entry_find(st, name);
  if (!e)
    return st_error_set(ST_ENOENT, "%s: no tensor '%s'", st->label, name);
  *dtype = e->dtype;
  *ndim = e->ndim;
  memcpy(shape, e->shape, sizeof e->shape);
  return ST_OK;
}

int st_safetensors_read(const st_safetensors *st, const char *name,
                        st_tensor *out) {
  memset(out, 0, sizeof *out);
  const st_entry *e = entry_find(st, name);
  if (!e)
    return st_error_set(ST_ENOENT, "%s: no tensor '%s'", st->label, name);
  /* Every dtype was checked at open, so this copy is the only failure. A
   * new aligned tensor also makes misaligned offsets in the file harmless. */
  int rc = st_tensor_alloc(NULL, out, e->dtype, e->ndim, e->shape);
  if (rc)
    return rc;
  size_t nbytes = (size_t)(e->end - e->begin);
  if (nbytes)
    memcpy(out->data, st->data + e->begin, nbytes);
  return ST_OK;
}

const char *st_safetensors_metadata(const st_safetensors *st, const char *key) {
  if (!st->metadata)
    return NULL;
  return json_string_value(json_object_get(st->metadata, key));
}

/* ---- writing ------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int named_cmp(const void *pa, const void *pb) {
  const st_named_tensor *a = pa, *b = pb;
  return strcmp(a->name, b->name);
}

/* Adds value under key, taking ownership of value even on failure. jansson
 * refuses keys that are not UTF-8, which is the likely failure. */
static int json_put(const char *path, json_t *obj, const char *key,
                    json_t *value) {
  if (json_object_set_new(obj, key, value) != 0)
    return st_error_set(ST_EINVAL,
                        "%s: cannot store key '%s' in the header (not "
                        "UTF-8, or out of memory)",
                        path, key);
  return ST_OK;
}

static int tensor_entry_new(const char *path, const st_named_tensor *nt,
                            uint64_t begin, uint64_t nbytes, json_t **out) {
  json_t *entry = json_object();
  json_t *shape = json_array();
  json_t *offsets = json_array();
  /* Each step runs only while all before it worked; the keys are ours and
   * ASCII, so any failure here is memory. */
  int ok = entry && shape && offsets;
  for (int i = 0; ok && i < nt->tensor->ndim; i++)
    ok = json_array_append_new(shape, json_integer(nt->tensor->shape[i])) == 0;
  ok =
      ok &&
      json_array_append_new(offsets, json_integer((json_int_t)begin)) == 0 &&
      json_array_append_new(offsets,
                            json_integer((json_int_t)(begin + nbytes))) == 0 &&
      json_object_set_new(entry, "dtype",
                          json_string(st_dtype_name(nt->tensor->dtype))) == 0 &&
      json_object_set(entry, "shape", shape) == 0 &&
      json_object_set(entry, "data_offsets", offsets) == 0;
  json_decref(shape);
  json_decref(offsets);
  if (!ok) {
    json_decref(entry);
    *out = NULL;
    return st_error_set(ST_ENOMEM, "%s: out of memory building the header",
                        path);
  }
  *out = entry;
  return ST_OK;
}

/* Builds the padded header text for tensors already sorted by name. */
static int header_build(const char *path, const st_named_tensor *sorted,
                        size_t count, const uint64_t *nbytes,
                        const char *const *metadata_kv, char **text,
                        size_t *text_bytes) {
  int rc;
  char *dumped = NULL;
  json_t *root = json_object();
  if (!root)
    return st_error_set(ST_ENOMEM, "%s: out of memory building the header",
                        path);
  if (metadata_kv && metadata_kv[0]) {
    json_t *md = json_object();
    if (!md) {
      rc = st_error_set(ST_ENOMEM, "%s: out of memory building the header",
                        path);
      goto err;
    }
    if ((rc = json_put(path, root, METADATA_KEY, md)))
      goto err;
    for (size_t i = 0; metadata_kv[i]; i += 2) {
      if (!metadata_kv[i + 1]) {
        rc = st_error_set(ST_EINVAL, "%s: metadata key '%s' has no value", path,
                          metadata_kv[i]);
        goto err;
      }
      if (json_object_get(md, metadata_kv[i])) {
        rc = st_error_set(ST_EINVAL, "%s: duplicate metadata key '%s'", path,
                          metadata_kv[i]);
        goto err;
      }
      json_t *value = json_string(metadata_kv[i + 1]);
      if (!value) {
        rc = st_error_set(ST_EINVAL, "%s: metadata value of '%s' is not UTF-8",
                          path, metadata_kv[i]);
        goto err;
      }
      if ((rc = json_put(path, md, metadata_kv[i], value)))
        goto err;
    }
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < count; i++) {
    json_t *entry;
    if ((rc = tensor_entry_new(path, &sorted[i], offset, nbytes[i], &entry)))
      goto err;
    if ((rc = json_put(path, root, sorted[i].name, entry)))
      goto err;
    offset += nbytes[i];
  }

  dumped = json_dumps(root, JSON_COMPACT);
  if (!dumped) {
    rc = st_error_set(ST_ENOMEM, "%s: out of memory encoding the header", path);
    goto err;
  }
  size_t len = strlen(dumped);
  size_t padded = (len + ST_ST_HEADER_ALIGN_BYTES - 1) /
                  ST_ST_HEADER_ALIGN_BYTES * ST_ST_HEADER_ALIGN_BYTES;
  if (padded > ST_SAFETENSORS_MAX_HEADER_BYTES) {
    rc = st_error_set(ST_ERANGE,
                      "%s: header of %zu bytes exceeds the limit of %u", path,
                      padded, ST_SAFETENSORS_MAX_HEADER_BYTES);
    goto err;
  }
  char *grown = realloc(dumped, padded + 1);
  if (!grown) {
    rc = st_error_set(ST_ENOMEM, "%s: out of memory padding the header", path);
    goto err;
  }
  dumped = grown;
  memset(dumped + len, ' ', padded - len);
  dumped[padded] = '\0';
  json_decref(root);
  *text = dumped;
  *text_bytes = padded;
  return ST_OK;

err:
  free(dumped);
  json_decref(root);
  return rc;
}

/* Checks the caller's tensors and computes each one's byte size. */
static int tensors_check(const char *path, const st_named_tensor *sorted,
                         size_t count, uint64_t *nbytes) {
  for (size_t i = 0; i < count; i++) {
    const st_named_tensor *nt = &sorted[i];
    const st_tensor *t = nt->tensor;
    if (nt->name[0] == '\0' || strcmp(nt->name, METADATA_KEY) == 0)
      return st_error_set(ST_EINVAL, "%s: invalid tensor name '%s'", path,
                          nt->name);
    if (i > 0 && strcmp(nt->name, sorted[i - 1].name) == 0)
      return st_error_set(ST_EINVAL, "%s: duplicate tensor name '%s'", path,
                          nt->name);
    if (!t || t->ndim < 0 || t->ndim > ST_MAX_DIMS ||
        st_dtype_size(t->dtype) == 0)
      return st_error_set(ST_EINVAL, "%s: tensor '%s' is not a valid tensor",
                          path, nt->name);
    for (int d = 0; d < t->ndim; d++)
      if (t->shape[d] < 0)
        return st_error_set(ST_ESHAPE, "%s: tensor '%s' has extent %lld", path,
                            nt->name, (long long)t->shape[d]);
    if (checked_nbytes(t->dtype, t->ndim, t->shape, &nbytes[i]))
      return st_error_set(ST_ESHAPE, "%s: tensor '%s' byte size overflows",
                          path, nt->name);
    if (nbytes[i] && !t->data)
      return st_error_set(ST_EINVAL, "%s: tensor '%s' has no data", path,
                          nt->name);
  }
  return ST_OK;
}

/* Numbers the temporary files of this process's writes. */
static atomic_ulong tmp_counter;

/* fsync of the folder holding `path`, so that the rename itself survives a
 * crash, not only the file's bytes. File systems that cannot sync a folder
 * (EINVAL) have nothing more to make durable. */
static int sync_parent_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path))
                    : strdup(".");
  if (!dir)
    return st_error_set(ST_ENOMEM, "%s: out of memory", path);
  int rc = ST_OK;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL))
    rc = st_error_set(ST_EIO, "%s: cannot sync folder %s: %s", path, dir,
                      strerror(errno));
  if (fd >= 0)
    close(fd);
  free(dir);
  return rc;
}

int st_safetensors_write(const char *path, const st_named_tensor *tensors,
                         size_t count, const char *const *metadata_kv) {
  int rc;
  int fd = -1;
  int tmp_created = 0;
  char *tmp_path = NULL;
  char *header = NULL;
  size_t header_bytes = 0;
  st_named_tensor *sorted = NULL;
  uint64_t *nbytes = NULL;
  if (count && !tensors) {
    rc = st_error_set(ST_EINVAL, "%s: %zu tensors but no list", path, count);
    goto err;
  }
  sorted = calloc(count ? count : 1, sizeof *sorted);
  nbytes = calloc(count ? count : 1, sizeof *nbytes);
  if (!sorted || !nbytes) {
    rc = st_error_set(ST_ENOMEM, "%s: out of memory", path);
    goto err;
  }
  for (size_t i = 0; i < count; i++) {
    if (!tensors[i].name) {
      rc = st_error_set(ST_EINVAL, "%s: tensor %zu has no name", path, i);
      goto err;
    }
    sorted[i] = tensors[i];
  }
  /* Sorted by name as the reference writer does; that also puts duplicate
   * names next to each other. */
  qsort(sorted, count, sizeof *sorted, named_cmp);
  if ((rc = tensors_check(path, sorted, count, nbytes)))
    goto err;
  if ((rc = header_build(path, sorted, count, nbytes, metadata_kv, &header,
                         &header_bytes)))
    goto err;

  /* Written beside the target and renamed over it, so a reader never sees
   * a half-written file and a crash leaves the old one intact. The name is
   * unique per call (process id and a process-wide counter) and created
   * exclusively, so threads and processes writing the same path at once
   * never share a temporary; the last rename wins whole. */
  unsigned long call = atomic_fetch_add(&tmp_counter, 1);
  int tmp_len =
      snprintf(NULL, 0, "%s.tmp.%ld.%lu", path, (long)getpid(), call);
  tmp_path = malloc((size_t)tmp_len + 1);
  if (!tmp_path) {
    rc = st_error_set(ST_ENOMEM, "%s: out of memory", path);
    goto err;
  }
  snprintf(tmp_path, (size_t)tmp_len + 1, "%s.tmp.%ld.%lu", path,
           (long)getpid(), call);
  fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = st_error_set(errno == ENOENT ? ST_ENOENT : ST_EIO,
                      "%s: cannot create: %s", tmp_path, strerror(errno));
    goto err;
  }
  tmp_created = 1;
  uint8_t prefix[ST_ST_PREFIX_BYTES];
  for (int i = 0; i < ST_ST_PREFIX_BYTES; i++)
    prefix[i] = (uint8_t)((uint64_t)header_bytes >> (8 * i));
  if (write_all(fd, prefix, sizeof prefix) ||
      write_all(fd, header, header_bytes))
    goto err_io;
  for (size_t i = 0; i < count; i++)
    if (nbytes[i] && write_all(fd, sorted[i].tensor->data, (size_t)nbytes[i]))
      goto err_io;
  if (fsync(fd) != 0)
    goto err_io;
  int close_rc = close(fd);
  fd = -1;
  if (close_rc != 0)
    goto err_io;
  if (rename(tmp_path, path) != 0) {
    rc = st_error_set(ST_EIO, "%s: cannot rename %s into place: %s", path,
                      tmp_path, strerror(errno));
    goto err;
  }
  tmp_created = 0;
  if ((rc = sync_parent_dir(path)))
    goto err;
  free(tmp_path);
  free(header);
  free(nbytes);
  free(sorted);
  return ST_OK;

err_io:
  rc = st_error_set(ST_EIO, "%s: write failed: %s", tmp_path, strerror(errno));
err:
  if (fd >= 0)
    close(fd);
  if (tmp_created)
    unlink(tmp_path);
  free(tmp_path);
  free(header);
  free(nbytes);
  free(sorted);
  return rc;
}
