/* Protocol v1: framing, the allocation-free structural walker, and the
 * msgpack encode/decode of every message.
 *
 * docs/protocol.md is the specification of what this file does; the two
 * must say the same thing, so a change here is a change there.
 *
 * Decoding is three steps, each only reached when the previous one passed:
 *   1. st_msg_validate walks the raw bytes without allocating, so a peer's
 *      declared counts and lengths are checked before msgpack-c sizes any
 *      allocation from them (msgpack-c issue #1013: `dd ff ff ff ff` asks it
 *      for ~96 GB);
 *   2. msgpack-c builds its object tree (str and bin objects point into the
 *      body, which is why decoded `data` fields borrow the body);
 *   3. the per-type schema copies the fields into an st_msg, and the same
 *      semantic checks the encoder runs (check_msg) judge the result.
 * Because the encoder runs check_msg too, anything it produces decodes. */
#include "proto/proto.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "base/error.h"
#include "proto/codec.h"

/* ---- names ---------------------------------------------------------------- */

static const char *const msg_type_names[ST_MSG_TYPE_COUNT] = {
    [ST_MSG_NONE] = NULL,          [ST_MSG_HELLO] = "hello",
    [ST_MSG_KEYFRAME] = "keyframe", [ST_MSG_OFFLOAD] = "offload",
    [ST_MSG_PING] = "ping",        [ST_MSG_BYE] = "bye",
    [ST_MSG_WELCOME] = "welcome",  [ST_MSG_MODEL] = "model",
    [ST_MSG_UPDATE] = "update",    [ST_MSG_LABELS] = "labels",
    [ST_MSG_ERROR] = "error",      [ST_MSG_PONG] = "pong",
};

static const char *const frame_encoding_names[ST_FRAME_ENCODING_COUNT] = {
    [ST_FRAME_JPEG] = "jpeg",
    [ST_FRAME_RAW] = "raw",
};

static const char *const update_encoding_names[ST_UPDATE_ENCODING_COUNT] = {
    [ST_UPDATE_F32] = "f32",
    [ST_UPDATE_F16] = "f16",
    [ST_UPDATE_F16_DELTA] = "f16-delta",
};

enum { WIRE_DTYPE_COUNT = 2 };
static const char *const wire_dtype_names[WIRE_DTYPE_COUNT] = {
    [ST_WIRE_F32] = "f32",
    [ST_WIRE_F16] = "f16",
};
static const size_t wire_dtype_bytes[WIRE_DTYPE_COUNT] = {
    [ST_WIRE_F32] = sizeof(float),
    [ST_WIRE_F16] = sizeof(uint16_t),
};

/* Raw frames are RGB, one byte per channel. */
enum { RAW_CHANNELS = 3 };

/* Index of the name equal to the n bytes at s, or -1 (NULL entries never
 * match, so tables may leave slot 0 empty). */
static int name_lookup(const char *const *names, int count, const char *s,
                       size_t n) {
  for (int i = 0; i < count; i++)
    if (names[i] && strlen(names[i]) == n && memcmp(names[i], s, n) == 0)
      return i;
  return -1;
}

const char *st_msg_type_name(st_msg_type t) {
  if ((int)t <= (int)ST_MSG_NONE || (int)t >= (int)ST_MSG_TYPE_COUNT)
    return NULL;
  return msg_type_names[t];
}

const char *st_frame_encoding_name(st_frame_encoding e) {
  if ((int)e < 0 || (int)e >= (int)ST_FRAME_ENCODING_COUNT)
    return NULL;
  return frame_encoding_names[e];
}

int st_frame_encoding_from_name(const char *name, st_frame_encoding *out) {
  if (!name || !out)
    return st_error_set(ST_EINVAL, "frame encoding: NULL argument");
  int i = name_lookup(frame_encoding_names, ST_FRAME_ENCODING_COUNT, name,
                      strlen(name));
  if (i < 0)
    return st_error_set(ST_EINVAL, "unknown frame encoding '%s' (jpeg, raw)",
                        name);
  *out = (st_frame_encoding)i;
  return ST_OK;
}

const char *st_update_encoding_name(st_update_encoding e) {
  if ((int)e < 0 || (int)e >= (int)ST_UPDATE_ENCODING_COUNT)
    return NULL;
  return update_encoding_names[e];
}

int st_update_encoding_from_name(const char *name, st_update_encoding *out) {
  if (!name || !out)
    return st_error_set(ST_EINVAL, "update encoding: NULL argument");
  int i = name_lookup(update_encoding_names, ST_UPDATE_ENCODING_COUNT, name,
                      strlen(name));
  if (i < 0)
    return st_error_set(ST_EINVAL,
                        "unknown update encoding '%s' (f32, f16, f16-delta)",
                        name);
  *out = (st_update_encoding)i;
  return ST_OK;
}

void st_proto_limits_default(st_proto_limits *l) {
  if (l)
    l->max_message_bytes = ST_PROTO_DEFAULT_MAX_MESSAGE_BYTES;
}

static bool limit_valid(uint32_t max_message_bytes) {
  return max_message_bytes >= 1 &&
         max_message_bytes <= ST_PROTO_MAX_MESSAGE_BYTES_CEILING;
}

/* ---- framing ------------------------------------------------------------- */

void st_frame_header_write(uint8_t hdr[ST_PROTO_HEADER_BYTES], uint32_t len) {
  /* Big-endian: most significant byte first. */
  for (int i = 0; i < ST_PROTO_HEADER_BYTES; i++)
    hdr[i] = (uint8_t)(len >> (8 * (ST_PROTO_HEADER_BYTES - 1 - i)));
}

int st_frame_header_parse(const uint8_t hdr[ST_PROTO_HEADER_BYTES],
                          uint32_t max_message_bytes, uint32_t *len) {
  if (!hdr || !len || !limit_valid(max_message_bytes))
    return st_error_set(ST_EINVAL, "frame header: bad argument");
  uint32_t n = 0;
  for (int i = 0; i < ST_PROTO_HEADER_BYTES; i++)
    n = (n << 8) | hdr[i];
  if (n == 0)
    return st_error_set(ST_EBADMSG, "frame header: length 0 (a body holds "
                                    "at least one map)");
  if (n > max_message_bytes)
    return st_error_set(ST_ETOOBIG,
                        "frame header: length %" PRIu32
                        " exceeds max_message_bytes %" PRIu32,
                        n, max_message_bytes);
  *len = n;
  return ST_OK;
}

void st_framer_init(st_framer *f, uint32_t max_message_bytes) {
  memset(f, 0, sizeof *f);
  f->max_message_bytes = max_message_bytes;
}

void st_framer_reset(st_framer *f) {
  free(f->body);
  st_framer_init(f, f->max_message_bytes);
}

/* Hands the finished body over and starts the next message. */
static void framer_take(st_framer *f, uint8_t **body, uint32_t *body_len) {
  *body = f->body;
  *body_len = f->body_len;
  f->body = NULL;
  f->body_len = f->body_have = 0;
  f->hdr_have = 0;
}

int st_framer_feed(st_framer *f, const uint8_t *p, size_t len, size_t *used,
                   uint8_t **body, uint32_t *body_len) {
  *used = 0;
  *body = NULL;
  *body_len = 0;
  while (*used < len) {
    if (!f->body) {
      size_t take = ST_PROTO_HEADER_BYTES - f->hdr_have;
      if (take > len - *used)
        take = len - *used;
      memcpy(f->hdr + f->hdr_have, p + *used, take);
      f->hdr_have += take;
      *used += take;
      if (f->hdr_have < ST_PROTO_HEADER_BYTES)
        return ST_OK;
      uint32_t n = 0;
      int rc = st_frame_header_parse(f->hdr, f->max_message_bytes, &n);
      if (rc) {
        st_framer_reset(f);
        return rc;
      }
      if (!(f->body = malloc(n))) {
        st_framer_reset(f);
        return st_error_set(ST_ENOMEM, "out of memory for a %" PRIu32
                                       "-byte message", n);
      }
      f->body_len = n;
      f->body_have = 0;
    }
    size_t take = f->body_len - f->body_have;
    if (take > len - *used)
      take = len - *used;
    memcpy(f->body + f->body_have, p + *used, take);
    f->body_have += (uint32_t)take;
    *used += take;
    if (f->body_have == f->body_len) {
      framer_take(f, body, body_len);
      return ST_OK;
    }
  }
  return ST_OK;
}

uint8_t *st_framer_body_space(st_framer *f, size_t *n) {
  *n = f->body ? f->body_len - f->body_have : 0;
  return f->body ? f->body + f->body_have : NULL;
}

void st_framer_body_commit(st_framer *f, size_t n, uint8_t **body,
                           uint32_t *body_len) {
  *body = NULL;
  *body_len = 0;
  f->body_have += (uint32_t)n;
  if (f->body && f->body_have == f->body_len)
    framer_take(f, body, body_len);
}

/* ---- the structural walker ------------------------------------------------ */

/* msgpack format bytes, named as in the msgpack specification. */
enum {
  MP_POSITIVE_FIXINT_MAX = 0x7f,
  MP_FIXMAP = 0x80,
  MP_FIXMAP_LAST = 0x8f,
  MP_FIXARRAY = 0x90,
  MP_FIXARRAY_LAST = 0x9f,
  MP_FIXSTR = 0xa0,
  MP_FIXSTR_LAST = 0xbf,
  MP_NIL = 0xc0,
  MP_NEVER_USED = 0xc1,
  MP_FALSE = 0xc2,
  MP_TRUE = 0xc3,
  MP_BIN8 = 0xc4,
  MP_BIN16 = 0xc5,
  MP_BIN32 = 0xc6,
  MP_EXT8 = 0xc7,
  MP_EXT16 = 0xc8,
  MP_EXT32 = 0xc9,
  MP_FLOAT32 = 0xca,
  MP_FLOAT64 = 0xcb,
  MP_UINT8 = 0xcc,
  MP_UINT16 = 0xcd,
  MP_UINT32 = 0xce,
  MP_UINT64 = 0xcf,
  MP_INT8 = 0xd0,
  MP_INT16 = 0xd1,
  MP_INT32 = 0xd2,
  MP_INT64 = 0xd3,
  MP_FIXEXT1 = 0xd4,
  MP_FIXEXT16 = 0xd8,
  MP_STR8 = 0xd9,
  MP_STR16 = 0xda,
  MP_STR32 = 0xdb,
  MP_ARRAY16 = 0xdc,
  MP_ARRAY32 = 0xdd,
  MP_MAP16 = 0xde,
  MP_MAP32 = 0xdf,
  MP_NEGATIVE_FIXINT = 0xe0,
};
/* The count or length packed into the low bits of the fix* formats. */
#define MP_FIXCONTAINER_COUNT_MASK 0x0fu
#define MP_FIXSTR_LEN_MASK 0x1fu

typedef enum mp_kind {
  MP_KIND_SCALAR, /* nil, bool, integers */
  MP_KIND_FLOAT,
  MP_KIND_STR,
  MP_KIND_BIN,
  MP_KIND_ARRAY,
  MP_KIND_MAP,
} mp_kind;

/* One msgpack head: what the object is and what follows the head. */
typedef struct mp_head {
  mp_kind kind;
  uint64_t payload; /* bytes after the head: scalar value, str/bin bytes */
  uint64_t count;   /* array items or map entries */
} mp_head;

static int walk_truncated(size_t at) {
  return st_error_set(ST_EBADMSG, "msgpack: truncated at byte %zu", at);
}

/* Reads the head at *pos (format byte and any length field), advancing *pos
 * past it; the payload is not consumed. */
static int mp_read_head(const uint8_t *b, size_t len, size_t *pos,
                        mp_head *h) {
  size_t at = *pos;
  if (at >= len)
    return walk_truncated(at);
  uint8_t f = b[at++];
  size_t field = 0; /* bytes of the big-endian length/count field */
  h->payload = 0;
  h->count = 0;
  if (f <= MP_POSITIVE_FIXINT_MAX || f >= MP_NEGATIVE_FIXINT) {
    h->kind = MP_KIND_SCALAR;
  } else if (f <= MP_FIXMAP_LAST) {
    h->kind = MP_KIND_MAP;
    h->count = f & MP_FIXCONTAINER_COUNT_MASK;
  } else if (f <= MP_FIXARRAY_LAST) {
    h->kind = MP_KIND_ARRAY;
    h->count = f & MP_FIXCONTAINER_COUNT_MASK;
  } else if (f <= MP_FIXSTR_LAST) {
    h->kind = MP_KIND_STR;
    h->payload = f & MP_FIXSTR_LEN_MASK;
  } else {
    switch (f) {
    case MP_NIL:
    case MP_FALSE:
    case MP_TRUE:
      h->kind = MP_KIND_SCALAR;
      break;
    case MP_NEVER_USED:
      return st_error_set(ST_EBADMSG,
                          "msgpack: byte 0x%02x at %zu is never used", f,
                          at - 1);
    case MP_BIN8:
    case MP_BIN16:
    case MP_BIN32:
      h->kind = MP_KIND_BIN;
      field = (size_t)1 << (f - MP_BIN8); /* 1, 2, 4 */
      break;
    case MP_STR8:
    case MP_STR16:
    case MP_STR32:
      h->kind = MP_KIND_STR;
      field = (size_t)1 << (f - MP_STR8);
      break;
    case MP_ARRAY16:
    case MP_ARRAY32:
      h->kind = MP_KIND_ARRAY;
      field = (size_t)2 << (f - MP_ARRAY16); /* 2, 4 */
      break;
    case MP_MAP16:
    case MP_MAP32:
      h->kind = MP_KIND_MAP;
      field = (size_t)2 << (f - MP_MAP16);
      break;
    case MP_FLOAT32:
      h->kind = MP_KIND_FLOAT;
      h->payload = sizeof(float);
      break;
    case MP_FLOAT64:
      h->kind = MP_KIND_FLOAT;
      h->payload = sizeof(double);
      break;
    case MP_UINT8:
    case MP_UINT16:
    case MP_UINT32:
    case MP_UINT64:
      h->kind = MP_KIND_SCALAR;
      h->payload = (uint64_t)1 << (f - MP_UINT8); /* 1, 2, 4, 8 */
      break;
    case MP_INT8:
    case MP_INT16:
    case MP_INT32:
    case MP_INT64:
      h->kind = MP_KIND_SCALAR;
      h->payload = (uint64_t)1 << (f - MP_INT8);
      break;
    default: /* ext 8/16/32 and fixext 1..16 */
      return st_error_set(ST_EBADMSG,
                          "msgpack: ext type (0x%02x) at byte %zu is not "
                          "allowed",
                          f, at - 1);
    }
  }
  if (field) {
    if (len - at < field)
      return walk_truncated(at);
    uint64_t n = 0;
    for (size_t i = 0; i < field; i++)
      n = (n << 8) | b[at + i];
    at += field;
    if (h->kind == MP_KIND_ARRAY || h->kind == MP_KIND_MAP)
      h->count = n;
    else
      h->payload = n;
  }
  *pos = at;
  return ST_OK;
}

/* An open container: how many items (a map counts keys and values) are
 * still to come. */
typedef struct walk_frame {
  uint64_t left;
  bool is_map;
} walk_frame;

static const char type_key[] = "type";
enum { TYPE_KEY_BYTES = sizeof type_key - 1 };

int st_msg_validate(const uint8_t *body, size_t len) {
  if (!body || len == 0)
    return st_error_set(ST_EBADMSG, "msgpack: empty body");
  walk_frame stack[ST_PROTO_MAX_DEPTH];
  int depth = 0; /* open containers; the top map is depth 1 */
  /* Items announced by the open containers and not yet begun. Each needs at
   * least one byte, so `owed` bytes must stay after every object: this
   * bounds every count by the bytes really present. */
  uint64_t owed = 0;
  size_t pos = 0;
  uint64_t objects = 0;
  bool seen_type = false, type_value_next = false;
  do {
    if (++objects > ST_PROTO_MAX_OBJECTS)
      return st_error_set(ST_EBADMSG, "msgpack: more than %d objects",
                          ST_PROTO_MAX_OBJECTS);
    bool is_key = depth > 0 && stack[depth - 1].is_map &&
                  stack[depth - 1].left % 2 == 0;
    bool is_type_value = type_value_next;
    bool in_top_map = depth == 1;
    type_value_next = false;
    if (depth > 0) {
      stack[depth - 1].left--;
      owed--;
    }
    size_t at = pos;
    mp_head h = {MP_KIND_SCALAR, 0, 0};
    int rc = mp_read_head(body, len, &pos, &h);
    if (rc)
      return rc;
    if (depth == 0 && h.kind != MP_KIND_MAP)
      return st_error_set(ST_EBADMSG,
                          "msgpack: the top-level object is not a map");
    if (is_key && h.kind == MP_KIND_FLOAT)
      return st_error_set(ST_EBADMSG, "msgpack: float map key at byte %zu",
                          at);
    if (is_type_value && h.kind != MP_KIND_STR)
      return st_error_set(ST_EBADMSG,
                          "message: key 'type' must be a string");
    if (h.kind == MP_KIND_STR && h.payload > ST_PROTO_MAX_STRING_BYTES)
      return st_error_set(ST_EBADMSG,
                          "msgpack: string of %" PRIu64
                          " bytes at byte %zu exceeds %d",
                          h.payload, at, ST_PROTO_MAX_STRING_BYTES);
    if (h.payload > len - pos)
      return walk_truncated(len);
    if (in_top_map && is_key && h.kind == MP_KIND_STR &&
        h.payload == TYPE_KEY_BYTES &&
        memcmp(body + pos, type_key, TYPE_KEY_BYTES) == 0) {
      seen_type = true;
      type_value_next = true;
    }
    pos += (size_t)h.payload;

    if (h.kind == MP_KIND_ARRAY || h.kind == MP_KIND_MAP) {
      if (depth == ST_PROTO_MAX_DEPTH)
        return st_error_set(ST_EBADMSG,
                            "msgpack: nesting deeper than %d at byte %zu",
                            ST_PROTO_MAX_DEPTH, at);
      if (h.count > ST_PROTO_MAX_CONTAINER_ITEMS)
        return st_error_set(ST_EBADMSG,
                            "msgpack: container of %" PRIu64
                            " items at byte %zu exceeds %d",
                            h.count, at, ST_PROTO_MAX_CONTAINER_ITEMS);
      uint64_t items = h.kind == MP_KIND_MAP ? 2 * h.count : h.count;
      if (items + owed > len - pos)
        return st_error_set(ST_EBADMSG,
                            "msgpack: container at byte %zu declares %" PRIu64
                            " items but only %zu bytes follow",
                            at, h.count, len - pos);
      if (items > 0) {
        stack[depth].left = items;
        stack[depth].is_map = h.kind == MP_KIND_MAP;
        depth++;
        owed += items;
        continue;
      }
    }
    /* The object is complete; so is every container it was the last of. */
    while (depth > 0 && stack[depth - 1].left == 0)
      depth--;
  } while (depth > 0);

  if (pos != len)
    return st_error_set(ST_EBADMSG,
                        "msgpack: %zu trailing bytes after the message",
                        len - pos);
  if (!seen_type)
    return st_error_set(ST_EBADMSG, "message: key 'type' is missing");
  return ST_OK;
}

/* ---- semantic checks shared by the encoder and the decoder ----------------
 *
 * Each takes the status to fail with: ST_EINVAL when the encoder judges a
 * caller's struct, ST_EBADMSG when the decoder judges what a peer sent.
 * hello/welcome.proto fail with ST_EPROTOVER either way. */

/* A NUL-terminated string field stored in an array of `cap` bytes. */
static int check_cstr(int bad, const char *ctx, const char *key,
                      const char *s, size_t cap, size_t min, size_t max) {
  size_t n = strnlen(s, cap);
  if (n < min || n > max)
    return st_error_set(bad, "%s: key '%s' must be %zu..%zu bytes", ctx, key,
                        min, max);
  return ST_OK;
}

static int check_side(int bad, const char *ctx, const char *key,
                      uint32_t v) {
  if (v < 1 || v > ST_PROTO_MAX_SIDE)
    return st_error_set(bad, "%s: key '%s' must be 1..%d", ctx, key,
                        ST_PROTO_MAX_SIDE);
  return ST_OK;
}

static int check_finite(int bad, const char *ctx, const char *key,
                        double v) {
  if (!isfinite(v))
    return st_error_set(bad, "%s: key '%s' must be a finite number", ctx,
                        key);
  return ST_OK;
}

static bool is_lower_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  return true;
}

/* Payload bytes of a tensor's shape and dtype; false on overflow. */
static bool tensor_payload_bytes(const st_wire_tensor *t, size_t *bytes) {
  size_t numel = 1;
  bool overflow = false;
  for (int d = 0; d < t->ndim; d++) {
    /* An empty extent makes the tensor empty, whatever the others say. */
    if (t->shape[d] == 0) {
      *bytes = 0;
      return true;
    }
    if ((uint64_t)t->shape[d] > SIZE_MAX / numel)
      overflow = true;
    else
      numel *= (size_t)t->shape[d];
  }
  size_t elem = wire_dtype_bytes[t->dtype];
  if (overflow || numel > SIZE_MAX / elem)
    return false;
  *bytes = numel * elem;
  return true;
}

static int check_tensor(int bad, const char *ctx, const st_wire_tensor *t) {
  int rc = check_cstr(bad, ctx, "name", t->name, sizeof t->name, 1,
                      ST_PROTO_TENSOR_NAME_BYTES);
  if (rc)
    return rc;
  if (t->ndim < 0 || t->ndim > ST_PROTO_MAX_NDIM)
    return st_error_set(bad, "%s: key 'shape' must have 0..%d dimensions",
                        ctx, ST_PROTO_MAX_NDIM);
  for (int d = 0; d < t->ndim; d++)
    if (t->shape[d] < 0)
      return st_error_set(bad, "%s: key 'shape' has a negative extent", ctx);
  if ((int)t->dtype < 0 || (int)t->dtype >= WIRE_DTYPE_COUNT)
    return st_error_set(bad, "%s: key 'dtype' must be \"f32\" or \"f16\"",
                        ctx);
  size_t want;
  if (!tensor_payload_bytes(t, &want))
    return st_error_set(bad, "%s: key 'shape' overflows the element count",
                        ctx);
  if (t->bytes != want)
    return st_error_set(bad,
                        "%s: key 'data' holds %zu bytes, shape and dtype "
                        "need %zu",
                        ctx, t->bytes, want);
  if (want > 0 && !t->data)
    return st_error_set(bad, "%s: key 'data' is NULL", ctx);
  return ST_OK;
}

/* Context of tensor i of a message ("update: tensors[3]"). */
enum { TENSOR_CTX_BYTES = 48 };
static void tensor_ctx(char buf[TENSOR_CTX_BYTES], const char *type,
                       size_t i) {
  snprintf(buf, TENSOR_CTX_BYTES, "%s: tensors[%zu]", type, i);
}

static int check_tensors(int bad, const char *type, size_t count,
                         const st_wire_tensor *tensors, bool has_dtype,
                         st_wire_dtype dtype) {
  if (count > ST_PROTO_MAX_TENSORS)
    return st_error_set(bad, "%s: key 'tensors' holds more than %d tensors",
                        type, ST_PROTO_MAX_TENSORS);
  if (count > 0 && !tensors)
    return st_error_set(bad, "%s: key 'tensors' is NULL", type);
  for (size_t i = 0; i < count; i++) {
    char ctx[TENSOR_CTX_BYTES];
    tensor_ctx(ctx, type, i);
    /* The encoding's dtype first: it explains a byte count that is off. */
    if (has_dtype && tensors[i].dtype != dtype)
      return st_error_set(bad, "%s: key 'dtype' must be \"%s\" for this "
                               "update encoding",
                          ctx, wire_dtype_names[dtype]);
    int rc = check_tensor(bad, ctx, &tensors[i]);
    if (rc)
      return rc;
  }
  return ST_OK;
}

static int check_hello(int bad, const st_msg_hello *h) {
  static const char ctx[] = "hello";
  if (h->proto != ST_PROTO_VERSION)
    return st_error_set(ST_EPROTOVER, "hello: proto %d is not supported (%d)",
                        h->proto, ST_PROTO_VERSION);
  int rc = check_cstr(bad, ctx, "client_id", h->client_id,
                      sizeof h->client_id, 1, ST_PROTO_CLIENT_ID_BYTES);
  if (!rc && h->has_token)
    rc = check_cstr(bad, ctx, "token", h->token, sizeof h->token, 0,
                    ST_PROTO_TOKEN_BYTES);
  if (rc)
    return rc;
  if (h->has_student &&
      (strnlen(h->student, sizeof h->student) != ST_PROTO_HASH_HEX_BYTES ||
       !is_lower_hex(h->student, ST_PROTO_HASH_HEX_BYTES)))
    return st_error_set(bad,
                        "hello: key 'student' must be %d lower-case hex "
                        "digits",
                        ST_PROTO_HASH_HEX_BYTES);
  rc = check_side(bad, ctx, "width", h->width);
  if (!rc)
    rc = check_side(bad, ctx, "height", h->height);
  if (rc)
    return rc;
  unsigned known = (1u << ST_FRAME_ENCODING_COUNT) - 1;
  if (h->encodings & ~known)
    return st_error_set(bad, "hello: key 'encodings' has unknown bits 0x%x",
                        h->encodings & ~known);
  if (!(h->encodings & known))
    return st_error_set(bad,
                        "hello: key 'encodings' must name at least one of "
                        "\"jpeg\", \"raw\"");
  if (h->has_resume)
    return check_cstr(bad, "hello: resume", "session", h->resume_session,
                      sizeof h->resume_session, 1, ST_PROTO_SESSION_BYTES);
  return ST_OK;
}

static int check_frame(int bad, const char *ctx, const st_msg_frame *f) {
  if ((int)f->encoding < 0 || (int)f->encoding >= ST_FRAME_ENCODING_COUNT)
    return st_error_set(bad, "%s: key 'encoding' must be \"jpeg\" or \"raw\"",
                        ctx);
  int rc = check_side(bad, ctx, "width", f->width);
  if (!rc)
    rc = check_side(bad, ctx, "height", f->height);
  if (rc)
    return rc;
  /* At most 8192 * 8192 * 3 = 201326592, far from overflowing. */
  size_t raw_bytes = (size_t)f->width * f->height * RAW_CHANNELS;
  if (f->encoding == ST_FRAME_RAW && f->data_len != raw_bytes)
    return st_error_set(bad,
                        "%s: key 'data' must be exactly width*height*3 = %zu "
                        "bytes for raw (got %zu)",
                        ctx, raw_bytes, f->data_len);
  if (f->encoding == ST_FRAME_JPEG &&
      (f->data_len < 1 || f->data_len > raw_bytes))
    return st_error_set(bad,
                        "%s: key 'data' must be 1..width*height*3 = %zu bytes "
                        "for jpeg (got %zu)",
                        ctx, raw_bytes, f->data_len);
  if (!f->data)
    return st_error_set(bad, "%s: key 'data' is NULL", ctx);
  return ST_OK;
}

static int check_welcome(int bad, const st_msg_welcome *w) {
  static const char ctx[] = "welcome";
  if (w->proto != ST_PROTO_VERSION)
    return st_error_set(ST_EPROTOVER,
                        "welcome: proto %d is not supported (%d)", w->proto,
                        ST_PROTO_VERSION);
  int rc = check_cstr(bad, ctx, "session", w->session, sizeof w->session, 1,
                      ST_PROTO_SESSION_BYTES);
  if (!rc)
    rc = check_finite(bad, ctx, "threshold", w->threshold);
  if (rc)
    return rc;
  if (w->min_stride < 1 || w->max_stride < w->min_stride)
    return st_error_set(bad,
                        "welcome: keys 'min_stride', 'max_stride' must "
                        "satisfy 1 <= min_stride <= max_stride");
  if (w->stride < w->min_stride || w->stride > w->max_stride)
    return st_error_set(bad,
                        "welcome: key 'stride' must be min_stride.."
                        "max_stride");
  if (w->trainable_count > ST_PROTO_MAX_TENSORS)
    return st_error_set(bad,
                        "welcome: key 'trainable' holds more than %d names",
                        ST_PROTO_MAX_TENSORS);
  if (w->trainable_count > 0 && !w->trainable)
    return st_error_set(bad, "welcome: key 'trainable' is NULL");
  for (size_t i = 0; i < w->trainable_count; i++) {
    rc = check_cstr(bad, ctx, "trainable", w->trainable[i],
                    sizeof w->trainable[i], 1, ST_PROTO_TENSOR_NAME_BYTES);
    if (rc)
      return rc;
  }
  if ((int)w->update_encoding < 0 ||
      (int)w->update_encoding >= ST_UPDATE_ENCODING_COUNT)
    return st_error_set(bad,
                        "welcome: key 'update_encoding' must be \"f32\", "
                        "\"f16\" or \"f16-delta\"");
  return ST_OK;
}

static int check_update(int bad, const st_msg_update *u) {
  static const char ctx[] = "update";
  if (u->stride < 1)
    return st_error_set(bad, "update: key 'stride' must be at least 1");
  if (u->steps < 0)
    return st_error_set(bad, "update: key 'steps' must not be negative");
  int rc = check_finite(bad, ctx, "metric", u->metric);
  if (rc)
    return rc;
  if ((int)u->encoding < 0 || (int)u->encoding >= ST_UPDATE_ENCODING_COUNT)
    return st_error_set(bad, "update: key 'encoding' must be \"f32\", "
                             "\"f16\" or \"f16-delta\"");
  /* A resync replaces weights the server does not know: a delta against
   * them would mean nothing. */
  if (u->full && u->encoding == ST_UPDATE_F16_DELTA)
    return st_error_set(bad, "update: key 'full' needs encoding \"f32\" or "
                             "\"f16\", not \"f16-delta\"");
  rc = check_tensors(bad, ctx, u->tensor_count, u->tensors, true,
                     st_codec_dtype(u->encoding));
  if (rc)
    return rc;
  const st_msg_timing *t = &u->timing;
  const double ms[] = {t->queue_ms, t->decode_ms, t->teacher_ms,
                       t->distill_ms, t->encode_ms};
  static const char *const keys[] = {"queue", "decode", "teacher", "distill",
                                     "encode"};
  for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
    rc = check_finite(bad, "update: timing", keys[i], ms[i]);
    if (rc)
      return rc;
  }
  return ST_OK;
}

static int check_labels(int bad, const st_msg_labels *l) {
  int rc = check_side(bad, "labels", "width", l->width);
  if (!rc)
    rc = check_side(bad, "labels", "height", l->height);
  if (rc)
    return rc;
  size_t want = (size_t)l->width * l->height;
  if (l->data_len != want)
    return st_error_set(bad,
                        "labels: key 'data' must be width*height = %zu bytes "
                        "(got %zu)",
                        want, l->data_len);
  if (!l->data)
    return st_error_set(bad, "labels: key 'data' is NULL");
  return ST_OK;
}

/* The semantic rules of every message type (see the comment above). */
static int check_msg(int bad, const st_msg *m) {
  const char *name = st_msg_type_name(m->type);
  switch (m->type) {
  case ST_MSG_HELLO:
    return check_hello(bad, &m->u.hello);
  case ST_MSG_KEYFRAME:
  case ST_MSG_OFFLOAD:
    return check_frame(bad, name, &m->u.frame);
  case ST_MSG_PING:
  case ST_MSG_PONG:
  case ST_MSG_BYE:
    return ST_OK;
  case ST_MSG_WELCOME:
    return check_welcome(bad, &m->u.welcome);
  case ST_MSG_MODEL:
    return check_tensors(bad, name, m->u.model.tensor_count,
                         m->u.model.tensors, false, ST_WIRE_F32);
  case ST_MSG_UPDATE:
    return check_update(bad, &m->u.update);
  case ST_MSG_LABELS:
    return check_labels(bad, &m->u.labels);
  case ST_MSG_ERROR:
    /* The message is truncated on encode, so only the code is checked. */
    return check_cstr(bad, name, "code", m->u.error.code,
                      sizeof m->u.error.code, 1, ST_PROTO_ERROR_CODE_BYTES);
  default:
    return st_error_set(bad, "message: type %d is not a protocol message",
                        (int)m->type);
  }
}

/* ---- decoding: msgpack objects to an st_msg -------------------------------- */

static int bad_key(const char *ctx, const char *key, const char *what) {
  return st_error_set(ST_EBADMSG, "%s: key '%s' %s", ctx, key, what);
}

static int missing_key(const char *ctx, const char *key) {
  return bad_key(ctx, key, "is missing");
}

static bool str_equals(const msgpack_object *o, const char *s) {
  size_t n = strlen(s);
  return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
         memcmp(o->via.str.ptr, s, n) == 0;
}

/* Finds the values of a map's known keys in one pass (vals[i] is NULL when
 * names[i] is absent). Unknown keys, string or not, are skipped, for
 * forward compatibility. A known key given twice is refused: two readers of
 * one message must never disagree about which value counts. */
static int map_fields(const msgpack_object *map, const char *ctx,
                      const char *const *names, size_t count,
                      const msgpack_object **vals) {
  for (size_t i = 0; i < count; i++)
    vals[i] = NULL;
  const msgpack_object_map *mp = &map->via.map;
  for (uint32_t e = 0; e < mp->size; e++) {
    const msgpack_object *k = &mp->ptr[e].key;
    if (k->type != MSGPACK_OBJECT_STR)
      continue;
    for (size_t i = 0; i < count; i++) {
      if (!str_equals(k, names[i]))
        continue;
      if (vals[i])
        return bad_key(ctx, names[i], "appears twice");
      vals[i] = &mp->ptr[e].val;
      break;
    }
  }
  return ST_OK;
}

static int get_uint(const char *ctx, const char *key,
                    const msgpack_object *v, uint64_t max, uint64_t *out) {
  if (!v)
    return missing_key(ctx, key);
  /* msgpack-c reports any non-negative integer, whatever its format
   * (uint8..64, int8..64, fixint), as POSITIVE_INTEGER. */
  if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return bad_key(ctx, key, "must be an unsigned integer");
  if (v->via.u64 > max)
    return st_error_set(ST_EBADMSG, "%s: key '%s' must be at most %" PRIu64,
                        ctx, key, max);
  *out = v->via.u64;
  return ST_OK;
}

static int get_u32(const char *ctx, const char *key, const msgpack_object *v,
                   uint32_t *out) {
  uint64_t u = 0;
  int rc = get_uint(ctx, key, v, UINT32_MAX, &u);
  *out = (uint32_t)u;
  return rc;
}

static int get_int32(const char *ctx, const char *key,
                     const msgpack_object *v, int32_t *out) {
  if (!v)
    return missing_key(ctx, key);
  if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT32_MAX)
    *out = (int32_t)v->via.u64;
  else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER &&
           v->via.i64 >= INT32_MIN)
    *out = (int32_t)v->via.i64;
  else
    return bad_key(ctx, key, "must be a 32-bit integer");
  return ST_OK;
}

/* A double field accepts integers and floats of either width. */
static int get_number(const char *ctx, const char *key,
                      const msgpack_object *v, double *out) {
  if (!v)
    return missing_key(ctx, key);
  switch (v->type) {
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
    *out = (double)v->via.u64;
    return ST_OK;
  case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    *out = (double)v->via.i64;
    return ST_OK;
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64:
    *out = v->via.f64;
    return ST_OK;
  default:
    return bad_key(ctx, key, "must be a number");
  }
}

static int get_bool(const char *ctx, const char *key,
                    const msgpack_object *v, int *out) {
  if (!v)
    return missing_key(ctx, key);
  if (v->type != MSGPACK_OBJECT_BOOLEAN)
    return bad_key(ctx, key, "must be a boolean");
  *out = v->via.boolean ? 1 : 0;
  return ST_OK;
}

/* Copies a str of min..max bytes into dst (max + 1 bytes) with its NUL. An
 * embedded NUL is refused: the C string would silently end early. */
static int get_str_copy(const char *ctx, const char *key,
                        const msgpack_object *v, size_t min, size_t max,
                        char *dst) {
  if (!v)
    return missing_key(ctx, key);
  if (v->type != MSGPACK_OBJECT_STR)
    return bad_key(ctx, key, "must be a string");
  size_t n = v->via.str.size;
  if (n < min || n > max)
    return st_error_set(ST_EBADMSG, "%s: key '%s' must be %zu..%zu bytes",
                        ctx, key, min, max);
  if (memchr(v->via.str.ptr, '\0', n))
    return bad_key(ctx, key, "must not contain NUL bytes");
  memcpy(dst, v->via.str.ptr, n);
  dst[n] = '\0';
  return ST_OK;
}

/* A str naming one entry of `names` (index in *out). */
static int get_name(const char *ctx, const char *key, const msgpack_object *v,
                    const char *const *names, int count, const char *expect,
                    int *out) {
  if (!v)
    return missing_key(ctx, key);
  if (v->type != MSGPACK_OBJECT_STR)
    return bad_key(ctx, key, "must be a string");
  int i = name_lookup(names, count, v->via.str.ptr, v->via.str.size);
  if (i < 0)
    return st_error_set(ST_EBADMSG, "%s: key '%s' must be %s", ctx, key,
                        expect);
  *out = i;
  return ST_OK;
}

/* A bin; the pointer borrows the body (msgpack-c points into it). */
static int get_bin(const char *ctx, const char *key, const msgpack_object *v,
                   const uint8_t **data, size_t *len) {
  if (!v)
    return missing_key(ctx, key);
  if (v->type != MSGPACK_OBJECT_BIN)
    return bad_key(ctx, key, "must be binary (msgpack bin)");
  *data = (const uint8_t *)v->via.bin.ptr;
  *len = v->via.bin.size;
  return ST_OK;
}

static int get_array(const char *ctx, const char *key,
                     const msgpack_object *v,
                     const msgpack_object_array **out) {
  if (!v)
    return missing_key(ctx, key);
  if (v->type != MSGPACK_OBJECT_ARRAY)
    return bad_key(ctx, key, "must be an array");
  *out = &v->via.array;
  return ST_OK;
}

static int require_map(const char *ctx, const char *key,
                       const msgpack_object *v) {
  if (!v)
    return missing_key(ctx, key);
  if (v->type != MSGPACK_OBJECT_MAP)
    return bad_key(ctx, key, "must be a map");
  return ST_OK;
}

static void *decoder_calloc(st_msg *m, size_t count, size_t size) {
  /* Each message owns at most one allocation (its tensor or name array). */
  void *p = calloc(count, size);
  m->owned_ = p;
  return p;
}

static int decode_hello(const msgpack_object *root, st_msg *m) {
  static const char ctx[] = "hello";
  enum { PROTO, CLIENT_ID, TOKEN, STUDENT, WIDTH, HEIGHT, ENCODINGS, RESUME,
         KEYS };
  static const char *const names[KEYS] = {
      [PROTO] = "proto",     [CLIENT_ID] = "client_id", [TOKEN] = "token",
      [STUDENT] = "student", [WIDTH] = "width",         [HEIGHT] = "height",
      [ENCODINGS] = "encodings", [RESUME] = "resume"};
  const msgpack_object *v[KEYS];
  st_msg_hello *h = &m->u.hello;
  int rc = map_fields(root, ctx, names, KEYS, v);
  if (rc)
    return rc;
  /* The version comes first so that a newer client learns it is too new
   * rather than which of its keys this side does not know. */
  uint64_t proto = 0;
  rc = get_uint(ctx, "proto", v[PROTO], UINT64_MAX, &proto);
  if (rc)
    return rc;
  if (proto != ST_PROTO_VERSION)
    return st_error_set(ST_EPROTOVER,
                        "hello: proto %" PRIu64 " is not supported (%d)",
                        proto, ST_PROTO_VERSION);
  h->proto = ST_PROTO_VERSION;
  rc = get_str_copy(ctx, "client_id", v[CLIENT_ID], 1,
                    ST_PROTO_CLIENT_ID_BYTES, h->client_id);
  if (!rc && v[TOKEN]) {
    rc = get_str_copy(ctx, "token", v[TOKEN], 0, ST_PROTO_TOKEN_BYTES,
                      h->token);
    h->has_token = 1;
  }
  if (!rc && v[STUDENT]) {
    rc = get_str_copy(ctx, "student", v[STUDENT], ST_PROTO_HASH_HEX_BYTES,
                      ST_PROTO_HASH_HEX_BYTES, h->student);
    h->has_student = 1;
  }
  if (!rc)
    rc = get_u32(ctx, "width", v[WIDTH], &h->width);
  if (!rc)
    rc = get_u32(ctx, "height", v[HEIGHT], &h->height);
  const msgpack_object_array *enc = NULL;
  if (!rc)
    rc = get_array(ctx, "encodings", v[ENCODINGS], &enc);
  if (rc)
    return rc;
  for (uint32_t i = 0; i < enc->size; i++) {
    const msgpack_object *e = &enc->ptr[i];
    if (e->type != MSGPACK_OBJECT_STR)
      return bad_key(ctx, "encodings", "must hold only strings");
    /* Encodings this side does not know are skipped: a newer client may
     * offer more, and the check below still demands one we know. */
    int k = name_lookup(frame_encoding_names, ST_FRAME_ENCODING_COUNT,
                        e->via.str.ptr, e->via.str.size);
    if (k >= 0)
      h->encodings |= 1u << k;
  }
  if (v[RESUME]) {
    static const char rctx[] = "hello: resume";
    enum { SESSION, VERSION, RKEYS };
    static const char *const rnames[RKEYS] = {[SESSION] = "session",
                                              [VERSION] = "version"};
    const msgpack_object *rv[RKEYS];
    rc = require_map(ctx, "resume", v[RESUME]);
    if (!rc)
      rc = map_fields(v[RESUME], rctx, rnames, RKEYS, rv);
    if (!rc)
      rc = get_str_copy(rctx, "session", rv[SESSION], 1,
                        ST_PROTO_SESSION_BYTES, h->resume_session);
    if (!rc)
      rc = get_uint(rctx, "version", rv[VERSION], UINT64_MAX,
                    &h->resume_version);
    h->has_resume = 1;
  }
  return rc;
}

static int decode_frame(const msgpack_object *root, st_msg *m) {
  const char *ctx = st_msg_type_name(m->type);
  enum { SEQ, FRAME_INDEX, ENCODING, WIDTH, HEIGHT, DATA, VERSION, KEYS };
  static const char *const names[KEYS] = {
      [SEQ] = "seq",     [FRAME_INDEX] = "frame_index",
      [ENCODING] = "encoding", [WIDTH] = "width",
      [HEIGHT] = "height", [DATA] = "data",
      [VERSION] = "version"};
  const msgpack_object *v[KEYS];
  st_msg_frame *f = &m->u.frame;
  int enc = 0;
  int rc = map_fields(root, ctx, names, KEYS, v);
  if (!rc)
    rc = get_uint(ctx, "seq", v[SEQ], UINT64_MAX, &f->seq);
  if (!rc)
    rc = get_uint(ctx, "frame_index", v[FRAME_INDEX], UINT64_MAX,
                  &f->frame_index);
  if (!rc)
    rc = get_name(ctx, "encoding", v[ENCODING], frame_encoding_names,
                  ST_FRAME_ENCODING_COUNT, "\"jpeg\" or \"raw\"", &enc);
  f->encoding = (st_frame_encoding)enc;
  if (!rc)
    rc = get_u32(ctx, "width", v[WIDTH], &f->width);
  if (!rc)
    rc = get_u32(ctx, "height", v[HEIGHT], &f->height);
  if (!rc)
    rc = get_bin(ctx, "data", v[DATA], &f->data, &f->data_len);
  if (!rc)
    rc = get_uint(ctx, "version", v[VERSION], UINT64_MAX, &f->version);
  return rc;
}

static int decode_ping(const msgpack_object *root, st_msg *m) {
  const char *ctx = st_msg_type_name(m->type);
  static const char *const names[] = {"t"};
  const msgpack_object *v[1];
  int rc = map_fields(root, ctx, names, 1, v);
  if (!rc)
    rc = get_uint(ctx, "t", v[0], UINT64_MAX, &m->u.ping.t);
  return rc;
}

static int decode_welcome(const msgpack_object *root, st_msg *m) {
  static const char ctx[] = "welcome";
  enum { PROTO, SESSION, VERSION, THRESHOLD, MIN_STRIDE, MAX_STRIDE, STRIDE,
         TRAINABLE, UPDATE_ENCODING, KEYS };
  static const char *const names[KEYS] = {
      [PROTO] = "proto",           [SESSION] = "session",
      [VERSION] = "version",       [THRESHOLD] = "threshold",
      [MIN_STRIDE] = "min_stride", [MAX_STRIDE] = "max_stride",
      [STRIDE] = "stride",         [TRAINABLE] = "trainable",
      [UPDATE_ENCODING] = "update_encoding"};
  const msgpack_object *v[KEYS];
  st_msg_welcome *w = &m->u.welcome;
  int rc = map_fields(root, ctx, names, KEYS, v);
  if (rc)
    return rc;
  uint64_t proto = 0;
  rc = get_uint(ctx, "proto", v[PROTO], UINT64_MAX, &proto);
  if (rc)
    return rc;
  if (proto != ST_PROTO_VERSION)
    return st_error_set(ST_EPROTOVER,
                        "welcome: proto %" PRIu64 " is not supported (%d)",
                        proto, ST_PROTO_VERSION);
  w->proto = ST_PROTO_VERSION;
  int enc = 0;
  const msgpack_object_array *tr = NULL;
  rc = get_str_copy(ctx, "session", v[SESSION], 1, ST_PROTO_SESSION_BYTES,
                    w->session);
  if (!rc)
    rc = get_uint(ctx, "version", v[VERSION], UINT64_MAX, &w->version);
  if (!rc)
    rc = get_number(ctx, "threshold", v[THRESHOLD], &w->threshold);
  if (!rc)
    rc = get_int32(ctx, "min_stride", v[MIN_STRIDE], &w->min_stride);
  if (!rc)
    rc = get_int32(ctx, "max_stride", v[MAX_STRIDE], &w->max_stride);
  if (!rc)
    rc = get_int32(ctx, "stride", v[STRIDE], &w->stride);
  if (!rc)
    rc = get_name(ctx, "update_encoding", v[UPDATE_ENCODING],
                  update_encoding_names, ST_UPDATE_ENCODING_COUNT,
                  "\"f32\", \"f16\" or \"f16-delta\"", &enc);
  w->update_encoding = (st_update_encoding)enc;
  if (!rc)
    rc = get_array(ctx, "trainable", v[TRAINABLE], &tr);
  if (rc)
    return rc;
  if (tr->size > ST_PROTO_MAX_TENSORS)
    return st_error_set(ST_EBADMSG,
                        "welcome: key 'trainable' holds more than %d names",
                        ST_PROTO_MAX_TENSORS);
  if (tr->size == 0)
    return ST_OK;
  w->trainable = decoder_calloc(m, tr->size, sizeof *w->trainable);
  if (!w->trainable)
    return st_error_set(ST_ENOMEM, "welcome: out of memory");
  w->trainable_count = tr->size;
  for (uint32_t i = 0; i < tr->size; i++) {
    rc = get_str_copy(ctx, "trainable", &tr->ptr[i], 1,
                      ST_PROTO_TENSOR_NAME_BYTES, w->trainable[i]);
    if (rc)
      return rc;
  }
  return ST_OK;
}

static int decode_tensor(const char *ctx, const msgpack_object *v,
                         st_wire_tensor *t) {
  enum { NAME, SHAPE, DTYPE, DATA, KEYS };
  static const char *const names[KEYS] = {
      [NAME] = "name", [SHAPE] = "shape", [DTYPE] = "dtype", [DATA] = "data"};
  const msgpack_object *tv[KEYS];
  if (v->type != MSGPACK_OBJECT_MAP)
    return st_error_set(ST_EBADMSG, "%s: must be a map", ctx);
  int rc = map_fields(v, ctx, names, KEYS, tv);
  if (!rc)
    rc = get_str_copy(ctx, "name", tv[NAME], 1, ST_PROTO_TENSOR_NAME_BYTES,
                      t->name);
  const msgpack_object_array *shape = NULL;
  if (!rc)
    rc = get_array(ctx, "shape", tv[SHAPE], &shape);
  if (rc)
    return rc;
  if (shape->size > ST_PROTO_MAX_NDIM)
    return st_error_set(ST_EBADMSG,
                        "%s: key 'shape' must have at most %d dimensions",
                        ctx, ST_PROTO_MAX_NDIM);
  t->ndim = (int)shape->size;
  for (uint32_t d = 0; d < shape->size; d++) {
    uint64_t extent = 0;
    rc = get_uint(ctx, "shape", &shape->ptr[d], INT64_MAX, &extent);
    if (rc)
      return rc;
    t->shape[d] = (int64_t)extent;
  }
  int dtype = 0;
  rc = get_name(ctx, "dtype", tv[DTYPE], wire_dtype_names, WIRE_DTYPE_COUNT,
                "\"f32\" or \"f16\"", &dtype);
  t->dtype = (st_wire_dtype)dtype;
  if (!rc)
    rc = get_bin(ctx, "data", tv[DATA], &t->data, &t->bytes);
  return rc;
}

/* Decodes a `tensors` array into a decoder-owned array. */
static int decode_tensors(const char *type, const msgpack_object *v,
                          st_msg *m, size_t *count, st_wire_tensor **out) {
  const msgpack_object_array *arr = NULL;
  int rc = get_array(type, "tensors", v, &arr);
  if (rc)
    return rc;
  /* Checked before the allocation it sizes. */
  if (arr->size > ST_PROTO_MAX_TENSORS)
    return st_error_set(ST_EBADMSG,
                        "%s: key 'tensors' holds more than %d tensors", type,
                        ST_PROTO_MAX_TENSORS);
  if (arr->size == 0)
    return ST_OK;
  st_wire_tensor *t = decoder_calloc(m, arr->size, sizeof *t);
  if (!t)
    return st_error_set(ST_ENOMEM, "%s: out of memory", type);
  *out = t;
  *count = arr->size;
  for (uint32_t i = 0; i < arr->size; i++) {
    char ctx[TENSOR_CTX_BYTES];
    tensor_ctx(ctx, type, i);
    rc = decode_tensor(ctx, &arr->ptr[i], &t[i]);
    if (rc)
      return rc;
  }
  return ST_OK;
}

static int decode_model(const msgpack_object *root, st_msg *m) {
  static const char ctx[] = "model";
  enum { VERSION, TENSORS, KEYS };
  static const char *const names[KEYS] = {[VERSION] = "version",
                                          [TENSORS] = "tensors"};
  const msgpack_object *v[KEYS];
  st_msg_model *md = &m->u.model;
  int rc = map_fields(root, ctx, names, KEYS, v);
  if (!rc)
    rc = get_uint(ctx, "version", v[VERSION], UINT64_MAX, &md->version);
  if (!rc)
    rc = decode_tensors(ctx, v[TENSORS], m, &md->tensor_count, &md->tensors);
  return rc;
}

static int decode_timing(const msgpack_object *v, st_msg_timing *t) {
  static const char ctx[] = "update: timing";
  enum { QUEUE, DECODE, TEACHER, DISTILL, ENCODE, KEYS };
  static const char *const names[KEYS] = {
      [QUEUE] = "queue",     [DECODE] = "decode", [TEACHER] = "teacher",
      [DISTILL] = "distill", [ENCODE] = "encode"};
  const msgpack_object *tv[KEYS];
  double *out[KEYS] = {[QUEUE] = &t->queue_ms,
                       [DECODE] = &t->decode_ms,
                       [TEACHER] = &t->teacher_ms,
                       [DISTILL] = &t->distill_ms,
                       [ENCODE] = &t->encode_ms};
  int rc = require_map("update", "timing", v);
  if (!rc)
    rc = map_fields(v, ctx, names, KEYS, tv);
  for (int i = 0; i < KEYS && !rc; i++)
    rc = get_number(ctx, names[i], tv[i], out[i]);
  return rc;
}

static int decode_update(const msgpack_object *root, st_msg *m) {
  static const char ctx[] = "update";
  enum { SEQ, VERSION, BASE_VERSION, FULL, STRIDE, METRIC, STEPS, ENCODING,
         TENSORS, TIMING, KEYS };
  static const char *const names[KEYS] = {
      [SEQ] = "seq",       [VERSION] = "version",
      [BASE_VERSION] = "base_version", [FULL] = "full", [STRIDE] = "stride",
      [METRIC] = "metric", [STEPS] = "steps",
      [ENCODING] = "encoding", [TENSORS] = "tensors",
      [TIMING] = "timing"};
  const msgpack_object *v[KEYS];
  st_msg_update *u = &m->u.update;
  int enc = 0;
  int rc = map_fields(root, ctx, names, KEYS, v);
  if (!rc)
    rc = get_uint(ctx, "seq", v[SEQ], UINT64_MAX, &u->seq);
  if (!rc)
    rc = get_uint(ctx, "version", v[VERSION], UINT64_MAX, &u->version);
  if (!rc)
    rc = get_uint(ctx, "base_version", v[BASE_VERSION], UINT64_MAX,
                  &u->base_version);
  if (!rc)
    rc = get_bool(ctx, "full", v[FULL], &u->full);
  if (!rc)
    rc = get_int32(ctx, "stride", v[STRIDE], &u->stride);
  if (!rc)
    rc = get_number(ctx, "metric", v[METRIC], &u->metric);
  if (!rc)
    rc = get_int32(ctx, "steps", v[STEPS], &u->steps);
  if (!rc)
    rc = get_name(ctx, "encoding", v[ENCODING], update_encoding_names,
                  ST_UPDATE_ENCODING_COUNT, "\"f32\", \"f16\" or \"f16-delta\"",
                  &enc);
  u->encoding = (st_update_encoding)enc;
  if (!rc)
    rc = decode_timing(v[TIMING], &u->timing);
  if (!rc)
    rc = decode_tensors(ctx, v[TENSORS], m, &u->tensor_count, &u->tensors);
  return rc;
}

static int decode_labels(const msgpack_object *root, st_msg *m) {
  static const char ctx[] = "labels";
  enum { SEQ, WIDTH, HEIGHT, DATA, KEYS };
  static const char *const names[KEYS] = {
      [SEQ] = "seq", [WIDTH] = "width", [HEIGHT] = "height", [DATA] = "data"};
  const msgpack_object *v[KEYS];
  st_msg_labels *l = &m->u.labels;
  int rc = map_fields(root, ctx, names, KEYS, v);
  if (!rc)
    rc = get_uint(ctx, "seq", v[SEQ], UINT64_MAX, &l->seq);
  if (!rc)
    rc = get_u32(ctx, "width", v[WIDTH], &l->width);
  if (!rc)
    rc = get_u32(ctx, "height", v[HEIGHT], &l->height);
  if (!rc)
    rc = get_bin(ctx, "data", v[DATA], &l->data, &l->data_len);
  return rc;
}

static int decode_error(const msgpack_object *root, st_msg *m) {
  static const char ctx[] = "error";
  enum { CODE, MESSAGE, FATAL, KEYS };
  static const char *const names[KEYS] = {
      [CODE] = "code", [MESSAGE] = "message", [FATAL] = "fatal"};
  const msgpack_object *v[KEYS];
  st_msg_error *e = &m->u.error;
  int rc = map_fields(root, ctx, names, KEYS, v);
  if (!rc)
    rc = get_str_copy(ctx, "code", v[CODE], 1, ST_PROTO_ERROR_CODE_BYTES,
                      e->code);
  if (!rc)
    rc = get_str_copy(ctx, "message", v[MESSAGE], 0,
                      ST_PROTO_ERROR_MESSAGE_BYTES, e->message);
  if (!rc)
    rc = get_bool(ctx, "fatal", v[FATAL], &e->fatal);
  return rc;
}

/* Names the unknown type in the detail line only when it is short and
 * printable: the line goes to logs, and the bytes are the peer's. */
static int unknown_type(const msgpack_object *t) {
  const char *s = t->via.str.ptr;
  size_t n = t->via.str.size;
  bool printable = n <= ST_PROTO_TYPE_BYTES;
  for (size_t i = 0; printable && i < n; i++)
    printable = s[i] >= ' ' && s[i] <= '~';
  if (printable)
    return st_error_set(ST_EBADMSG, "message: unknown type '%.*s'", (int)n,
                        s);
  return st_error_set(ST_EBADMSG, "message: unknown type (%zu bytes)", n);
}

static int decode_root(const msgpack_object *root, st_msg *m) {
  const char *const names[] = {type_key};
  const msgpack_object *tv = NULL;
  int rc = map_fields(root, "message", names, 1, &tv);
  if (rc)
    return rc;
  /* st_msg_validate guaranteed a str value for "type". */
  int t = name_lookup(msg_type_names, ST_MSG_TYPE_COUNT, tv->via.str.ptr,
                      tv->via.str.size);
  if (t < 0)
    return unknown_type(tv);
  m->type = (st_msg_type)t;
  switch (m->type) {
  case ST_MSG_HELLO:
    rc = decode_hello(root, m);
    break;
  case ST_MSG_KEYFRAME:
  case ST_MSG_OFFLOAD:
    rc = decode_frame(root, m);
    break;
  case ST_MSG_PING:
  case ST_MSG_PONG:
    rc = decode_ping(root, m);
    break;
  case ST_MSG_BYE:
    rc = ST_OK;
    break;
  case ST_MSG_WELCOME:
    rc = decode_welcome(root, m);
    break;
  case ST_MSG_MODEL:
    rc = decode_model(root, m);
    break;
  case ST_MSG_UPDATE:
    rc = decode_update(root, m);
    break;
  case ST_MSG_LABELS:
    rc = decode_labels(root, m);
    break;
  case ST_MSG_ERROR:
    rc = decode_error(root, m);
    break;
  default:
    rc = unknown_type(tv);
    break;
  }
  return rc ? rc : check_msg(ST_EBADMSG, m);
}

int st_msg_decode(const uint8_t *body, size_t len,
                  const st_proto_limits *limits, st_msg *out) {
  if (!out)
    return st_error_set(ST_EINVAL, "decode: NULL message");
  memset(out, 0, sizeof *out);
  st_proto_limits defaults;
  if (!limits) {
    st_proto_limits_default(&defaults);
    limits = &defaults;
  }
  if (!limit_valid(limits->max_message_bytes))
    return st_error_set(ST_EINVAL, "decode: max_message_bytes must be 1..%u",
                        ST_PROTO_MAX_MESSAGE_BYTES_CEILING);
  if (!body && len)
    return st_error_set(ST_EINVAL, "decode: NULL body");
  if (len > limits->max_message_bytes)
    return st_error_set(ST_ETOOBIG,
                        "decode: body of %zu bytes exceeds max_message_bytes "
                        "%" PRIu32,
                        len, limits->max_message_bytes);
  int rc = st_msg_validate(body, len);
  if (rc)
    return rc;

  msgpack_unpacked up;
  msgpack_unpacked_init(&up);
  size_t off = 0;
  msgpack_unpack_return ret =
      msgpack_unpack_next(&up, (const char *)body, len, &off);
  if (ret == MSGPACK_UNPACK_NOMEM_ERROR)
    rc = st_error_set(ST_ENOMEM, "decode: msgpack-c is out of memory");
  else if (ret != MSGPACK_UNPACK_SUCCESS || off != len ||
           up.data.type != MSGPACK_OBJECT_MAP)
    /* Cannot happen after the walk; refused rather than trusted. */
    rc = st_error_set(ST_EBADMSG, "decode: msgpack-c disagrees with the "
                                  "structural check");
  else
    rc = decode_root(&up.data, out);
  /* Decoded fields point into the body, never into msgpack-c's zone. */
  msgpack_unpacked_destroy(&up);
  if (rc)
    st_msg_free(out);
  return rc;
}

void st_msg_free(st_msg *m) {
  if (!m)
    return;
  free(m->owned_);
  memset(m, 0, sizeof *m);
}

/* ---- encoding ------------------------------------------------------------ */

/* msgpack-c's pack calls return 0 or -1 (only when the buffer cannot
 * grow); these chain them with ||, so any failure is non-zero. */
static int pack_cstr(msgpack_packer *pk, const char *s) {
  return msgpack_pack_str_with_body(pk, s, strlen(s));
}

static int pack_key_uint(msgpack_packer *pk, const char *key, uint64_t v) {
  return pack_cstr(pk, key) || msgpack_pack_uint64(pk, v);
}

static int pack_key_int(msgpack_packer *pk, const char *key, int64_t v) {
  return pack_cstr(pk, key) || msgpack_pack_int64(pk, v);
}

static int pack_key_double(msgpack_packer *pk, const char *key, double v) {
  return pack_cstr(pk, key) || msgpack_pack_double(pk, v);
}

static int pack_key_str(msgpack_packer *pk, const char *key, const char *s,
                        size_t n) {
  return pack_cstr(pk, key) || msgpack_pack_str_with_body(pk, s, n);
}

static int pack_key_cstr(msgpack_packer *pk, const char *key,
                         const char *s) {
  return pack_key_str(pk, key, s, strlen(s));
}

static int pack_key_bin(msgpack_packer *pk, const char *key,
                        const uint8_t *data, size_t n) {
  return pack_cstr(pk, key) || msgpack_pack_bin_with_body(pk, data, n);
}

/* Length of the longest prefix of s, at most max bytes, that does not end
 * inside a UTF-8 sequence (s may lack a NUL within max bytes; it is read
 * at most to s[max]). A cut error message must stay valid UTF-8 for peers
 * that decode str as text. */
static size_t utf8_prefix(const char *s, size_t max) {
  size_t n = strnlen(s, max);
  if (n < max || s[max] == '\0')
    return n;
  /* Cutting at max: step back over continuation bytes (10xxxxxx) to the
   * start of the sequence the cut would split. */
  while (n > 0 && ((unsigned char)s[n] & 0xc0u) == 0x80u)
    n--;
  return n;
}

static int pack_tensors(msgpack_packer *pk, size_t count,
                        const st_wire_tensor *t) {
  enum { TENSOR_KEYS = 4 };
  if (pack_cstr(pk, "tensors") || msgpack_pack_array(pk, count))
    return -1;
  for (size_t i = 0; i < count; i++) {
    if (msgpack_pack_map(pk, TENSOR_KEYS) ||
        pack_key_cstr(pk, "name", t[i].name) || pack_cstr(pk, "shape") ||
        msgpack_pack_array(pk, (size_t)t[i].ndim))
      return -1;
    for (int d = 0; d < t[i].ndim; d++)
      if (msgpack_pack_uint64(pk, (uint64_t)t[i].shape[d]))
        return -1;
    if (pack_key_cstr(pk, "dtype", wire_dtype_names[t[i].dtype]) ||
        pack_key_bin(pk, "data", t[i].data, t[i].bytes))
      return -1;
  }
  return 0;
}

static int pack_hello(msgpack_packer *pk, const st_msg_hello *h) {
  /* type, proto, client_id, width, height, encodings + the optional keys */
  enum { HELLO_REQUIRED_KEYS = 6, RESUME_KEYS = 2 };
  size_t keys = HELLO_REQUIRED_KEYS + (h->has_token != 0) +
                (h->has_student != 0) + (h->has_resume != 0);
  unsigned n_enc = 0;
  for (int e = 0; e < ST_FRAME_ENCODING_COUNT; e++)
    n_enc += (h->encodings >> e) & 1u;
  if (msgpack_pack_map(pk, keys) || pack_key_cstr(pk, "type", "hello") ||
      pack_key_uint(pk, "proto", (uint64_t)h->proto) ||
      pack_key_cstr(pk, "client_id", h->client_id) ||
      (h->has_token && pack_key_cstr(pk, "token", h->token)) ||
      (h->has_student && pack_key_cstr(pk, "student", h->student)) ||
      pack_key_uint(pk, "width", h->width) ||
      pack_key_uint(pk, "height", h->height) ||
      pack_cstr(pk, "encodings") || msgpack_pack_array(pk, n_enc))
    return -1;
  for (int e = 0; e < ST_FRAME_ENCODING_COUNT; e++)
    if (((h->encodings >> e) & 1u) && pack_cstr(pk, frame_encoding_names[e]))
      return -1;
  if (h->has_resume &&
      (pack_cstr(pk, "resume") || msgpack_pack_map(pk, RESUME_KEYS) ||
       pack_key_cstr(pk, "session", h->resume_session) ||
       pack_key_uint(pk, "version", h->resume_version)))
    return -1;
  return 0;
}

static int pack_frame(msgpack_packer *pk, const char *type,
                      const st_msg_frame *f) {
  enum { FRAME_KEYS = 8 };
  return msgpack_pack_map(pk, FRAME_KEYS) || pack_key_cstr(pk, "type", type) ||
         pack_key_uint(pk, "seq", f->seq) ||
         pack_key_uint(pk, "frame_index", f->frame_index) ||
         pack_key_cstr(pk, "encoding", frame_encoding_names[f->encoding]) ||
         pack_key_uint(pk, "width", f->width) ||
         pack_key_uint(pk, "height", f->height) ||
         pack_key_bin(pk, "data", f->data, f->data_len) ||
         pack_key_uint(pk, "version", f->version);
}

static int pack_welcome(msgpack_packer *pk, const st_msg_welcome *w) {
  enum { WELCOME_KEYS = 10 };
  if (msgpack_pack_map(pk, WELCOME_KEYS) ||
      pack_key_cstr(pk, "type", "welcome") ||
      pack_key_uint(pk, "proto", (uint64_t)w->proto) ||
      pack_key_cstr(pk, "session", w->session) ||
      pack_key_uint(pk, "version", w->version) ||
      pack_key_double(pk, "threshold", w->threshold) ||
      pack_key_int(pk, "min_stride", w->min_stride) ||
      pack_key_int(pk, "max_stride", w->max_stride) ||
      pack_key_int(pk, "stride", w->stride) || pack_cstr(pk, "trainable") ||
      msgpack_pack_array(pk, w->trainable_count))
    return -1;
  for (size_t i = 0; i < w->trainable_count; i++)
    if (pack_cstr(pk, w->trainable[i]))
      return -1;
  return pack_key_cstr(pk, "update_encoding",
                       update_encoding_names[w->update_encoding]);
}

static int pack_update(msgpack_packer *pk, const st_msg_update *u) {
  enum { UPDATE_KEYS = 11, TIMING_KEYS = 5 };
  const st_msg_timing *t = &u->timing;
  return msgpack_pack_map(pk, UPDATE_KEYS) ||
         pack_key_cstr(pk, "type", "update") ||
         pack_key_uint(pk, "seq", u->seq) ||
         pack_key_uint(pk, "version", u->version) ||
         pack_key_uint(pk, "base_version", u->base_version) ||
         pack_cstr(pk, "full") ||
         (u->full ? msgpack_pack_true(pk) : msgpack_pack_false(pk)) ||
         pack_key_int(pk, "stride", u->stride) ||
         pack_key_double(pk, "metric", u->metric) ||
         pack_key_int(pk, "steps", u->steps) ||
         pack_key_cstr(pk, "encoding", update_encoding_names[u->encoding]) ||
         pack_tensors(pk, u->tensor_count, u->tensors) ||
         pack_cstr(pk, "timing") || msgpack_pack_map(pk, TIMING_KEYS) ||
         pack_key_double(pk, "queue", t->queue_ms) ||
         pack_key_double(pk, "decode", t->decode_ms) ||
         pack_key_double(pk, "teacher", t->teacher_ms) ||
         pack_key_double(pk, "distill", t->distill_ms) ||
         pack_key_double(pk, "encode", t->encode_ms);
}

static int pack_msg(msgpack_packer *pk, const st_msg *m) {
  enum { PING_KEYS = 2, BYE_KEYS = 1, MODEL_KEYS = 3, LABELS_KEYS = 5,
         ERROR_KEYS = 4 };
  const char *type = st_msg_type_name(m->type);
  switch (m->type) {
  case ST_MSG_HELLO:
    return pack_hello(pk, &m->u.hello);
  case ST_MSG_KEYFRAME:
  case ST_MSG_OFFLOAD:
    return pack_frame(pk, type, &m->u.frame);
  case ST_MSG_PING:
  case ST_MSG_PONG:
    return msgpack_pack_map(pk, PING_KEYS) || pack_key_cstr(pk, "type", type) ||
           pack_key_uint(pk, "t", m->u.ping.t);
  case ST_MSG_BYE:
    return msgpack_pack_map(pk, BYE_KEYS) || pack_key_cstr(pk, "type", type);
  case ST_MSG_WELCOME:
    return pack_welcome(pk, &m->u.welcome);
  case ST_MSG_MODEL:
    return msgpack_pack_map(pk, MODEL_KEYS) ||
           pack_key_cstr(pk, "type", type) ||
           pack_key_uint(pk, "version", m->u.model.version) ||
           pack_tensors(pk, m->u.model.tensor_count, m->u.model.tensors);
  case ST_MSG_UPDATE:
    return pack_update(pk, &m->u.update);
  case ST_MSG_LABELS:
    return msgpack_pack_map(pk, LABELS_KEYS) ||
           pack_key_cstr(pk, "type", type) ||
           pack_key_uint(pk, "seq", m->u.labels.seq) ||
           pack_key_uint(pk, "width", m->u.labels.width) ||
           pack_key_uint(pk, "height", m->u.labels.height) ||
           pack_key_bin(pk, "data", m->u.labels.data, m->u.labels.data_len);
  case ST_MSG_ERROR: {
    const st_msg_error *e = &m->u.error;
    return msgpack_pack_map(pk, ERROR_KEYS) ||
           pack_key_cstr(pk, "type", type) ||
           pack_key_cstr(pk, "code", e->code) ||
           pack_key_str(pk, "message", e->message,
                        utf8_prefix(e->message, ST_PROTO_ERROR_MESSAGE_BYTES)) ||
           pack_cstr(pk, "fatal") ||
           (e->fatal ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
  }
  default:
    return -1; /* check_msg refused it already */
  }
}

/* Room for everything but the large byte fields: keys, numbers, names. */
enum { ENCODE_FIXED_BYTES = 4096, ENCODE_PER_TENSOR_BYTES = 256 };

/* A generous estimate of the framed size, so a multi-megabyte frame or
 * model is packed into one buffer instead of being copied by doubling. */
static size_t encode_estimate(const st_msg *m) {
  size_t n = ENCODE_FIXED_BYTES;
  const st_wire_tensor *t = NULL;
  size_t count = 0;
  switch (m->type) {
  case ST_MSG_KEYFRAME:
  case ST_MSG_OFFLOAD:
    n += m->u.frame.data_len;
    break;
  case ST_MSG_LABELS:
    n += m->u.labels.data_len;
    break;
  case ST_MSG_WELCOME:
    n += m->u.welcome.trainable_count * ENCODE_PER_TENSOR_BYTES;
    break;
  case ST_MSG_MODEL:
    t = m->u.model.tensors;
    count = m->u.model.tensor_count;
    break;
  case ST_MSG_UPDATE:
    t = m->u.update.tensors;
    count = m->u.update.tensor_count;
    break;
  default:
    break;
  }
  for (size_t i = 0; i < count; i++)
    n += t[i].bytes + ENCODE_PER_TENSOR_BYTES;
  return n;
}

int st_msg_encode(const st_msg *m, uint8_t **out, size_t *out_len) {
  if (!out || !out_len)
    return st_error_set(ST_EINVAL, "encode: NULL output");
  *out = NULL;
  *out_len = 0;
  if (!m)
    return st_error_set(ST_EINVAL, "encode: NULL message");
  int rc = check_msg(ST_EINVAL, m);
  if (rc)
    return rc;

  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  /* Pre-sizing is only an optimisation: on failure the buffer grows. */
  size_t estimate = encode_estimate(m);
  sb.data = malloc(estimate);
  if (sb.data)
    sb.alloc = estimate;
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  /* The length prefix is reserved now and patched once the size is known. */
  const uint8_t reserved[ST_PROTO_HEADER_BYTES] = {0};
  if (msgpack_sbuffer_write(&sb, (const char *)reserved, sizeof reserved) ||
      pack_msg(&pk, m)) {
    msgpack_sbuffer_destroy(&sb);
    return st_error_set(ST_ENOMEM, "encode: out of memory");
  }
  size_t body = sb.size - ST_PROTO_HEADER_BYTES;
  if (body > ST_PROTO_MAX_MESSAGE_BYTES_CEILING) {
    msgpack_sbuffer_destroy(&sb);
    return st_error_set(ST_ETOOBIG,
                        "encode: body of %zu bytes exceeds the %u-byte "
                        "ceiling",
                        body, ST_PROTO_MAX_MESSAGE_BYTES_CEILING);
  }
  st_frame_header_write((uint8_t *)sb.data, (uint32_t)body);
  *out_len = sb.size;
  /* The caller now owns the buffer and frees it with free(). */
  *out = (uint8_t *)msgpack_sbuffer_release(&sb);
  return ST_OK;
}
