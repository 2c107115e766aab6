/* Status codes shared by every layer and by the wire protocol.
 *
 * Every fallible function returns 0 (ST_OK) or a negative ST_E* code. The
 * codes, their wire names and their messages come from one X-macro list so
 * that st_strerror(), st_err_name() and the protocol's `error.code` strings
 * never disagree. A thread-local detail line (st_error_set / st_error_detail)
 * carries the specifics of the most recent failure ("file.safetensors:
 * tensor 'x' offsets past end of data") for the one line a tool prints.
 */
#ifndef ST_BASE_ERROR_H
#define ST_BASE_ERROR_H

/* XX(symbol, wire name, human message) */
#define ST_ERRNO_MAP(XX)                                                       \
  XX(EINVAL, "invalid_argument", "invalid argument")                           \
  XX(ENOMEM, "out_of_memory", "out of memory")                                 \
  XX(EIO, "io_error", "input/output error")                                    \
  XX(ENOENT, "not_found", "not found")                                         \
  XX(EFORMAT, "bad_format", "malformed file or message")                       \
  XX(ESHAPE, "bad_shape", "tensor shape mismatch")                             \
  XX(EDTYPE, "bad_dtype", "unsupported or mismatched dtype")                   \
  XX(ERANGE, "out_of_range", "value out of range")                             \
  XX(ENOTSUP, "unsupported", "operation not supported")                        \
  XX(EBACKEND, "backend_error", "compute backend failure")                     \
  XX(ENODEV, "no_device", "no compute device available")                      \
  XX(EBADMSG, "bad_message", "malformed protocol message")                     \
  XX(ETOOBIG, "message_too_large", "message exceeds the size limit")           \
  XX(ESTATE, "unexpected_message", "message not valid in this state")          \
  XX(EPROTOVER, "unsupported_protocol", "unsupported protocol version")        \
  XX(EAUTH, "unauthorized", "missing or wrong token")                          \
  XX(EFULL, "server_full", "server at its client limit")                       \
  XX(ETIMEDOUT, "timeout", "deadline passed")                                  \
  XX(ESHUTDOWN, "shutting_down", "server is shutting down")                    \
  XX(ECONN, "connection_error", "connection failed or closed")

typedef enum st_errno {
  ST_OK = 0,
#define ST__ERR_ENUM(sym, wire, msg) ST_##sym,
  ST__ERR_FIRST_ = -100,
  ST_ERRNO_MAP(ST__ERR_ENUM)
#undef ST__ERR_ENUM
  ST__ERR_END_
} st_errno;

/* Returns from the calling function with the status of `expr` when it is
 * not ST_OK: error paths read `ST_TRY(st_tensor_alloc(...));`. */
#define ST_TRY(expr)                                                           \
  do {                                                                         \
    int st_try_rc_ = (expr);                                                   \
    if (st_try_rc_)                                                            \
      return st_try_rc_;                                                       \
  } while (0)

/* Human message for a status code ("unknown error" for anything else). */
const char *st_strerror(int err);
/* Stable wire name for a status code ("unknown" for anything else). */
const char *st_err_name(int err);

/* Records a printf-style detail line for the calling thread and returns err,
 * so error paths read `return st_error_set(ST_EFORMAT, "...", ...);`. */
int st_error_set(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The calling thread's last detail line ("" when none was set). */
const char *st_error_detail(void);
/* Forgets the calling thread's detail line. */
void st_error_clear(void);

#endif
