/* Whole-file reads for the loaders (safetensors, ONNX): the file is opened,
 * checked to be a regular file no larger than the caller's limit *before*
 * anything is allocated, and read completely (EINTR retried, a file that
 * shrinks while being read is an error). Errors name the path. */
#ifndef ST_BASE_FILE_H
#define ST_BASE_FILE_H

#include <stddef.h>
#include <stdint.h>

/* On success *out is a malloc'd buffer of *len bytes (at least one byte is
 * allocated, so an empty file still gives a non-NULL buffer) that the
 * caller frees. A file above max_bytes fails with too_big_code and a
 * message naming the limit. */
int st_read_file(const char *path, size_t max_bytes, int too_big_code,
                 uint8_t **out, size_t *len);

#endif
