#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"

int st_read_file(const char *path, size_t max_bytes, int too_big_code,
                 uint8_t **out, size_t *len) {
  int rc;
  uint8_t *file = NULL;
  *out = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return st_error_set(errno == ENOENT ? ST_ENOENT : ST_EIO,
                        "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    rc = st_error_set(ST_EIO, "%s: cannot stat: %s", path, strerror(errno));
    goto err;
  }
  if (!S_ISREG(sb.st_mode)) {
    rc = st_error_set(ST_EIO, "%s: not a regular file", path);
    goto err;
  }
  /* Bounded before anything is sized by it. */
  if ((uintmax_t)sb.st_size > max_bytes) {
    rc = st_error_set(too_big_code, "%s: %jd bytes is above the limit of %zu",
                      path, (intmax_t)sb.st_size, max_bytes);
    goto err;
  }
  size_t size = (size_t)sb.st_size;
  file = malloc(size ? size : 1);
  if (!file) {
    rc = st_error_set(ST_ENOMEM, "%s: cannot allocate %zu bytes", path, size);
    goto err;
  }
  size_t done = 0;
  while (done < size) {
    ssize_t n = read(fd, file + done, size - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = st_error_set(ST_EIO, "%s: read failed: %s", path, strerror(errno));
      goto err;
    }
    if (n == 0) {
      rc = st_error_set(ST_EIO,
                        "%s: file shrank while reading (%zu of %zu bytes)",
                        path, done, size);
      goto err;
    }
    done += (size_t)n;
  }
  close(fd);
  *out = file;
  *len = size;
  return ST_OK;

err:
  free(file);
  close(fd);
  return rc;
}
