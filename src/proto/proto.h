/* Protocol v1: framing, message structs, and msgpack encode/decode with
 * validation before any allocation sized by the peer (docs/protocol.md is
 * the specification; this file and that one must say the same thing).
 *
 * A message on the wire is a 4-byte big-endian length N followed by N bytes
 * holding exactly one msgpack map with a string key "type". The encoder
 * produces the whole framed message in one malloc'd buffer (the caller owns
 * it and releases it with free()). The decoder takes the N body bytes,
 * walks them once without allocating (rejecting truncation, trailing bytes,
 * counts larger than the bytes left, nesting deeper than
 * ST_PROTO_MAX_DEPTH, over-long strings), only then lets msgpack-c build its
 * object tree, and maps that onto an st_msg.
 *
 * Ownership of a decoded st_msg: fixed-size strings are copied into the
 * struct (NUL-terminated); `data` byte fields (frames, label maps, tensor
 * payloads) BORROW the body buffer passed to st_msg_decode, so that buffer
 * must outlive the message; arrays of tensors and names are allocated by the
 * decoder (their counts already checked against the limits) and released by
 * st_msg_free, which accepts a zeroed or already-freed message.
 *
 * Errors: ST_EBADMSG for anything malformed (with a detail line naming the
 * key: "keyframe: key 'seq' must be an unsigned integer"), ST_ETOOBIG for a
 * frame length over the limit, ST_EPROTOVER for hello.proto != 1, ST_ENOMEM.
 * Unknown keys are ignored; unknown message types are ST_EBADMSG.
 */
#ifndef ST_PROTO_PROTO_H
#define ST_PROTO_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define ST_PROTO_VERSION 1
/* Length prefix of every message. */
#define ST_PROTO_HEADER_BYTES 4
/* Default and hard ceiling of a message body. */
#define ST_PROTO_DEFAULT_MAX_MESSAGE_BYTES (16u * 1024u * 1024u)
#define ST_PROTO_MAX_MESSAGE_BYTES_CEILING (1024u * 1024u * 1024u)
/* Nesting of maps/arrays: the top-level map is depth 1. */
#define ST_PROTO_MAX_DEPTH 8
/* String limits, bytes without the terminating NUL. */
#define ST_PROTO_TYPE_BYTES 16
#define ST_PROTO_CLIENT_ID_BYTES 64
#define ST_PROTO_TOKEN_BYTES 256
#define ST_PROTO_SESSION_BYTES 64
#define ST_PROTO_HASH_HEX_BYTES 64 /* SHA-256 in lower-case hex */
#define ST_PROTO_TENSOR_NAME_BYTES 128
#define ST_PROTO_ERROR_CODE_BYTES 32
#define ST_PROTO_ERROR_MESSAGE_BYTES 1024
/* Any other string (a key, an encoding name) is at most this long. */
#define ST_PROTO_MAX_STRING_BYTES 1024
/* Frame sides and tensor lists. */
#define ST_PROTO_MAX_SIDE 8192
#define ST_PROTO_MAX_TENSORS 512
#define ST_PROTO_MAX_NDIM 8
/* Map entries / array items of any one container (after the byte check). */
#define ST_PROTO_MAX_CONTAINER_ITEMS 4096
/* Objects in one body: msgpack-c builds one node per object, so a body of
 * nils would otherwise cost ~25 bytes of memory per body byte and seconds
 * of the loop thread (a real `model` has under 9,000). */
#define ST_PROTO_MAX_OBJECTS 65536

typedef enum st_msg_type {
  ST_MSG_NONE = 0,
  /* client -> server */
  ST_MSG_HELLO,
  ST_MSG_KEYFRAME,
  ST_MSG_OFFLOAD,
  ST_MSG_PING,
  ST_MSG_BYE,
  /* server -> client */
  ST_MSG_WELCOME,
  ST_MSG_MODEL,
  ST_MSG_UPDATE,
  ST_MSG_LABELS,
  ST_MSG_ERROR,
  ST_MSG_PONG,
  ST_MSG_TYPE_COUNT
} st_msg_type;

/* The wire name of a type ("keyframe"), NULL for ST_MSG_NONE/out of range. */
const char *st_msg_type_name(st_msg_type t);

/* Key-frame encodings ("jpeg", "raw": RGB u8 H*W*3 row-major). */
typedef enum st_frame_encoding {
  ST_FRAME_JPEG = 0,
  ST_FRAME_RAW,
  ST_FRAME_ENCODING_COUNT
} st_frame_encoding;
const char *st_frame_encoding_name(st_frame_encoding e);
int st_frame_encoding_from_name(const char *name, st_frame_encoding *out);

/* Update encodings: "f32" and "f16" carry new values, "f16-delta" carries
 * new minus the client's current values, as f16. */
typedef enum st_update_encoding {
  ST_UPDATE_F32 = 0,
  ST_UPDATE_F16,
  ST_UPDATE_F16_DELTA,
  ST_UPDATE_ENCODING_COUNT
} st_update_encoding;
const char *st_update_encoding_name(st_update_encoding e);
int st_update_encoding_from_name(const char *name, st_update_encoding *out);

/* Element types of a wire tensor ("f32", "f16"). */
typedef enum st_wire_dtype { ST_WIRE_F32 = 0, ST_WIRE_F16 } st_wire_dtype;

/* One named tensor of a `model` or `update`. */
typedef struct st_wire_tensor {
  char name[ST_PROTO_TENSOR_NAME_BYTES + 1]; /* state-dict name */
  int ndim;                                  /* 0..ST_PROTO_MAX_NDIM */
  int64_t shape[ST_PROTO_MAX_NDIM];          /* extents, each >= 0 */
  st_wire_dtype dtype;
  const uint8_t *data; /* little-endian elements; borrowed (see above) */
  size_t bytes;        /* == numel * element size (checked on decode) */
} st_wire_tensor;

typedef struct st_msg_hello {
  int proto;                                      /* must be 1 */
  char client_id[ST_PROTO_CLIENT_ID_BYTES + 1];   /* non-empty */
  int has_token;
  char token[ST_PROTO_TOKEN_BYTES + 1];
  int has_student;
  char student[ST_PROTO_HASH_HEX_BYTES + 1];      /* hex SHA-256 */
  uint32_t width, height;                         /* 1..ST_PROTO_MAX_SIDE */
  unsigned encodings;     /* bit (1u << st_frame_encoding) per entry; non-empty */
  int has_resume;
  char resume_session[ST_PROTO_SESSION_BYTES + 1];
  uint64_t resume_version;
} st_msg_hello;

/* `keyframe` and `offload` share their fields. */
typedef struct st_msg_frame {
  uint64_t seq;
  uint64_t frame_index;
  st_frame_encoding encoding;
  uint32_t width, height;  /* 1..ST_PROTO_MAX_SIDE */
  const uint8_t *data;     /* borrowed; raw: exactly w*h*3, jpeg: 1..w*h*3 */
  size_t data_len;
  uint64_t version;        /* model version the client runs */
} st_msg_frame;

typedef struct st_msg_ping {
  uint64_t t; /* echoed by pong */
} st_msg_ping;

typedef struct st_msg_welcome {
  int proto;
  char session[ST_PROTO_SESSION_BYTES + 1];
  uint64_t version;
  double threshold;
  int32_t min_stride, max_stride, stride;
  size_t trainable_count;  /* <= ST_PROTO_MAX_TENSORS */
  /* Encode: the caller's array. Decode: allocated, freed by st_msg_free. */
  char (*trainable)[ST_PROTO_TENSOR_NAME_BYTES + 1];
  st_update_encoding update_encoding;
} st_msg_welcome;

typedef struct st_msg_model {
  uint64_t version;
  size_t tensor_count;     /* <= ST_PROTO_MAX_TENSORS */
  st_wire_tensor *tensors; /* encode: caller's; decode: allocated */
} st_msg_model;

/* Server-side stage times of one update, milliseconds. */
typedef struct st_msg_timing {
  double queue_ms, decode_ms, teacher_ms, distill_ms, encode_ms;
} st_msg_timing;

typedef struct st_msg_update {
  uint64_t seq;           /* the key frame's seq */
  uint64_t version;       /* the client's version after applying this */
  uint64_t base_version;  /* the version the tensors apply to */
  int full;               /* 1: every tensor, absolute values (a resync):
                             applies whatever version the client holds */
  int32_t stride;         /* next stride */
  double metric;          /* student mIoU vs teacher after distillation */
  int32_t steps;          /* Adam steps taken */
  st_update_encoding encoding;
  size_t tensor_count;
  st_wire_tensor *tensors; /* encode: caller's; decode: allocated */
  st_msg_timing timing;
} st_msg_update;

typedef struct st_msg_labels {
  uint64_t seq;
  uint32_t width, height;
  const uint8_t *data;  /* borrowed, exactly width*height bytes */
  size_t data_len;
} st_msg_labels;

typedef struct st_msg_error {
  char code[ST_PROTO_ERROR_CODE_BYTES + 1];       /* st_err_name() */
  char message[ST_PROTO_ERROR_MESSAGE_BYTES + 1]; /* truncated on encode */
  int fatal;
} st_msg_error;

typedef struct st_msg {
  st_msg_type type;
  union {
    st_msg_hello hello;
    st_msg_frame frame;   /* ST_MSG_KEYFRAME and ST_MSG_OFFLOAD */
    st_msg_ping ping;     /* ST_MSG_PING and ST_MSG_PONG */
    st_msg_welcome welcome;
    st_msg_model model;
    st_msg_update update;
    st_msg_labels labels;
    st_msg_error error;
  } u;                    /* ST_MSG_BYE has no fields */
  void *owned_;           /* decoder allocations, for st_msg_free */
} st_msg;

/* Decoder limits (peer-controlled sizes are checked against these). */
typedef struct st_proto_limits {
  uint32_t max_message_bytes; /* body bytes, 1..ST_PROTO_MAX_MESSAGE_BYTES_CEILING */
} st_proto_limits;
void st_proto_limits_default(st_proto_limits *l);

/* ---- framing ------------------------------------------------------------- */

/* Writes the 4-byte big-endian prefix of a body of `len` bytes. */
void st_frame_header_write(uint8_t hdr[ST_PROTO_HEADER_BYTES], uint32_t len);
/* Parses a prefix: ST_EBADMSG for length 0, ST_ETOOBIG above
 * max_message_bytes; otherwise *len. */
int st_frame_header_parse(const uint8_t hdr[ST_PROTO_HEADER_BYTES],
                          uint32_t max_message_bytes, uint32_t *len);

/* Reassembles messages from a received byte stream, for the client side
 * (client/net.c, the load generator). Once a prefix is in and valid, the
 * body gets one malloc'd buffer of exactly its length, handed over whole.
 * (The server reads into whole-message buffers of its own: src/loop.) */
typedef struct st_framer {
  uint32_t max_message_bytes;
  uint8_t hdr[ST_PROTO_HEADER_BYTES];
  size_t hdr_have;
  uint8_t *body; /* the message being read, NULL between messages */
  uint32_t body_len, body_have;
} st_framer;

void st_framer_init(st_framer *f, uint32_t max_message_bytes);
/* Frees a partly read message and starts over. */
void st_framer_reset(st_framer *f);
/* Consumes p[0..len) up to the end of the next complete message: *used
 * bytes. When one completed, *body (malloc'd, the caller frees it) and
 * *body_len are set, else *body is NULL; call again with the rest. A bad
 * prefix is ST_EBADMSG or ST_ETOOBIG (st_frame_header_parse), a body that
 * cannot be allocated ST_ENOMEM; the framer is reset then. */
int st_framer_feed(st_framer *f, const uint8_t *p, size_t len, size_t *used,
                   uint8_t **body, uint32_t *body_len);
/* The rest of the body being read, so a reader can receive into it
 * directly (libuv's alloc_cb); NULL and 0 between messages. */
uint8_t *st_framer_body_space(st_framer *f, size_t *n);
/* n bytes were received into st_framer_body_space's buffer: completes the
 * message like st_framer_feed when they were its last. */
void st_framer_body_commit(st_framer *f, size_t n, uint8_t **body,
                           uint32_t *body_len);

/* ---- messages ------------------------------------------------------------ */

/* Validates the structure of a msgpack body without allocating: exactly one
 * object filling `len` bytes, a map at the top with a string "type", every
 * container count no larger than the bytes left and
 * ST_PROTO_MAX_CONTAINER_ITEMS, at most ST_PROTO_MAX_OBJECTS objects in
 * all, nesting at most ST_PROTO_MAX_DEPTH, every
 * str at most ST_PROTO_MAX_STRING_BYTES; no ext types, no float keys. */
int st_msg_validate(const uint8_t *body, size_t len);

/* Decodes one body (st_msg_validate first, then the per-type schema). On
 * failure *out is zeroed and nothing stays allocated. */
int st_msg_decode(const uint8_t *body, size_t len,
                  const st_proto_limits *limits, st_msg *out);
/* Releases what the decoder allocated; accepts a zeroed message. */
void st_msg_free(st_msg *m);

/* Encodes a message with its length prefix into one malloc'd buffer that
 * the caller frees with free(). Checks what the decoder checks (a message
 * this function produces always decodes to the same fields). */
int st_msg_encode(const st_msg *m, uint8_t **out, size_t *out_len);

#endif
