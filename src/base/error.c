#include "base/error.h"

#include <stdarg.h>
#include <stdio.h>

enum { ST_ERROR_DETAIL_BYTES = 512 };

static _Thread_local char error_detail[ST_ERROR_DETAIL_BYTES];

const char *st_strerror(int err) {
  switch (err) {
  case ST_OK:
    return "success";
#define ST__ERR_MSG(sym, wire, msg)                                            \
  case ST_##sym:                                                               \
    return msg;
    ST_ERRNO_MAP(ST__ERR_MSG)
#undef ST__ERR_MSG
  default:
    return "unknown error";
  }
}

const char *st_err_name(int err) {
  switch (err) {
  case ST_OK:
    return "ok";
#define ST__ERR_WIRE(sym, wire, msg)                                           \
  case ST_##sym:                                                               \
    return wire;
    ST_ERRNO_MAP(ST__ERR_WIRE)
#undef ST__ERR_WIRE
  default:
    return "unknown";
  }
}

int st_error_set(int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(error_detail, sizeof error_detail, fmt, ap);
  va_end(ap);
  return err;
}

const char *st_error_detail(void) { return error_detail; }

void st_error_clear(void) { error_detail[0] = '\0'; }
