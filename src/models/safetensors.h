/* Safetensors files: read with every check of the format, and write.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of a JSON object
 * mapping tensor names to {"dtype", "shape", "data_offsets": [begin, end]}
 * (plus an optional "__metadata__" object of string values), then the data
 * block. Offsets are relative to the data block; tensors must tile it
 * exactly (no holes, no overlap) and the data must end at end of file.
 *
 * An opened file (st_safetensors) owns a copy of the whole file; tensors are
 * read out of it into new, aligned host tensors. Every error names the file
 * (or the buffer's label) and the problem, through st_error_detail().
 */
#ifndef ST_MODELS_SAFETENSORS_H
#define ST_MODELS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "gpu/tensor.h"

/* Largest header we accept, in bytes (the format's own limit). */
#define ST_SAFETENSORS_MAX_HEADER_BYTES (100u * 1000u * 1000u)

typedef struct st_safetensors st_safetensors;

/* Reads and validates a whole file. */
int st_safetensors_open(const char *path, st_safetensors **out);
/* Validates a file image held in memory; `label` names it in errors. The
 * buffer is copied. */
int st_safetensors_parse(const void *buf, size_t len, const char *label,
                         st_safetensors **out);
/* Accepts NULL. */
void st_safetensors_free(st_safetensors *st);

/* Number of tensors (metadata excluded), and their names in file order of
 * data offsets. */
size_t st_safetensors_count(const st_safetensors *st);
const char *st_safetensors_name(const st_safetensors *st, size_t index);
/* Dtype and shape of a named tensor without copying it (ST_ENOENT when it is
 * absent). shape must hold ST_MAX_DIMS entries. */
int st_safetensors_info(const st_safetensors *st, const char *name,
                        st_dtype *dtype, int *ndim, int64_t *shape);
/* Copies a named tensor into a new host tensor (freed with st_tensor_free).
 * ST_ENOENT when absent; ST_EDTYPE for a dtype the file declares but we do
 * not handle (reported at open for every tensor anyway). */
int st_safetensors_read(const st_safetensors *st, const char *name,
                        st_tensor *out);
/* Value of a "__metadata__" key, or NULL. */
const char *st_safetensors_metadata(const st_safetensors *st, const char *key);

typedef struct st_named_tensor {
  const char *name;        /* unique, not "__metadata__" */
  const st_tensor *tensor; /* host-addressable */
} st_named_tensor;

/* Writes tensors (sorted by name, as the reference writer does) and an
 * optional metadata list of key/value string pairs terminated by a NULL key.
 * Writes to a temporary file of its own (safe for threads and processes
 * writing the same path at once), fsyncs it, renames it into place and
 * fsyncs the folder: a crash leaves the old file or the new one, whole. */
int st_safetensors_write(const char *path, const st_named_tensor *tensors,
                         size_t count, const char *const *metadata_kv);

#endif
