/* Protocol v1 and the update codecs: round trips of every message with
 * every field, golden bodies written by another implementation
 * (tests/fixtures/proto/gen_proto.py, Python msgpack), every malformed input
 * we refuse with its exact status code, and the codecs' values (f16
 * rounding, clamping, the mirror rule over many rounds).
 *
 * Host-only (no backend is involved), so this is a plain cmocka group. Run
 * under ASan it also shows that every refusal frees what it allocated. */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "gpu/tensor.h"
#include "proto/codec.h"
#include "proto/proto.h"

enum { HDR = ST_PROTO_HEADER_BYTES };
/* proto.c's cap on objects per body (see docs/protocol.md, section 2). */
#ifndef ST_PROTO_MAX_OBJECTS
#define ST_PROTO_MAX_OBJECTS 65536
#endif

/* ---- helpers ------------------------------------------------------------- */

static bool msg_is_zero(const st_msg *m) {
  static const st_msg zero;
  return memcmp(m, &zero, sizeof zero) == 0;
}

/* Encodes m; checks the 4-byte big-endian prefix equals the body length.
 * Returns the framed buffer (free()); *body_len is the body's length. */
static uint8_t *encode_ok(const st_msg *m, size_t *body_len) {
  uint8_t *buf = NULL;
  size_t len = 0;
  ST_ASSERT_OK(st_msg_encode(m, &buf, &len));
  assert_non_null(buf);
  assert_true(len > HDR);
  uint32_t declared = 0;
  ST_ASSERT_OK(st_frame_header_parse(buf, ST_PROTO_MAX_MESSAGE_BYTES_CEILING,
                                     &declared));
  assert_int_equal(declared, len - HDR);
  *body_len = len - HDR;
  return buf;
}

static void decode_ok(const uint8_t *body, size_t len, st_msg *out) {
  int rc = st_msg_decode(body, len, NULL, out);
  if (rc)
    fail_msg("decode: %s: %s", st_err_name(rc), st_error_detail());
}

/* Decoding must fail with `code`, leave *out zeroed (it starts as garbage)
 * and, when needle is given, name it in the detail line. */
static void expect_fail(const uint8_t *body, size_t len, int code,
                        const char *needle, const char *what) {
  st_msg out;
  memset(&out, 0xa5, sizeof out);
  st_error_clear();
  int rc = st_msg_decode(body, len, NULL, &out);
  const char *detail = st_error_detail();
  if (rc != code)
    fail_msg("%s: got %s (%s), want %s", what, st_err_name(rc), detail,
             st_err_name(code));
  if (!msg_is_zero(&out))
    fail_msg("%s: the message is not zeroed after a failure", what);
  if (needle && !strstr(detail, needle))
    fail_msg("%s: detail '%s' does not name '%s'", what, detail, needle);
}

static uint8_t *read_fixture(const char *name, size_t *len) {
  const char *path = st_test_fixture_path(name);
  FILE *f = fopen(path, "rb");
  if (!f)
    fail_msg("cannot open %s", path);
  assert_int_equal(fseek(f, 0, SEEK_END), 0);
  long size = ftell(f);
  assert_true(size > 0);
  rewind(f);
  uint8_t *buf = malloc((size_t)size);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
  fclose(f);
  *len = (size_t)size;
  return buf;
}

static bool points_into(const void *p, const uint8_t *body, size_t len) {
  const uint8_t *q = p;
  return q >= body && q < body + len;
}

/* ---- sample messages: every field set, values chosen to be distinct ------ */

enum {
  FRAME_W = 4,
  FRAME_H = 2,
  RAW_BYTES = FRAME_W * FRAME_H * 3,
  LABELS_W = 5,
  LABELS_H = 3,
  SAMPLE_TENSORS = 3,
  W_ELEMS = 6, /* tensor 0: f32 [2, 3] */
  TRAINABLE = 3,
};

typedef struct sample {
  st_msg m;
  uint8_t frame[RAW_BYTES];
  uint8_t labels[LABELS_W * LABELS_H];
  uint8_t f32_payload[W_ELEMS * 4];
  uint8_t f16_payload[W_ELEMS * 2];
  uint8_t f16_scalar[2];
  st_wire_tensor tensors[SAMPLE_TENSORS];
  char trainable[TRAINABLE][ST_PROTO_TENSOR_NAME_BYTES + 1];
} sample;

static void sample_init(sample *s, st_msg_type type) {
  memset(s, 0, sizeof *s);
  for (size_t i = 0; i < sizeof s->frame; i++)
    s->frame[i] = (uint8_t)(3 * i + 1);
  for (size_t i = 0; i < sizeof s->labels; i++)
    s->labels[i] = (uint8_t)(i % 21);
  for (size_t i = 0; i < sizeof s->f32_payload; i++)
    s->f32_payload[i] = (uint8_t)(i * 7 + 2);
  for (size_t i = 0; i < sizeof s->f16_payload; i++)
    s->f16_payload[i] = (uint8_t)(i * 5 + 1);
  s->f16_scalar[0] = 0x00;
  s->f16_scalar[1] = 0x3c; /* 1.0 */
  st_msg *m = &s->m;
  m->type = type;
  switch (type) {
  case ST_MSG_HELLO: {
    st_msg_hello *h = &m->u.hello;
    h->proto = ST_PROTO_VERSION;
    strcpy(h->client_id, "jetson-nano-07");
    h->has_token = 1;
    strcpy(h->token, "tok-\xc3\xa9-secret");
    h->has_student = 1;
    for (int i = 0; i < ST_PROTO_HASH_HEX_BYTES; i++)
      h->student[i] = "0123456789abcdef"[(i * 7) % 16];
    h->width = 1280;
    h->height = 720;
    h->encodings = (1u << ST_FRAME_JPEG) | (1u << ST_FRAME_RAW);
    h->has_resume = 1;
    strcpy(h->resume_session, "s-42");
    h->resume_version = 123456789012ull;
    break;
  }
  case ST_MSG_KEYFRAME:
  case ST_MSG_OFFLOAD: {
    st_msg_frame *f = &m->u.frame;
    f->seq = 4294967296ull + 17; /* needs uint64 */
    f->frame_index = 65536 + 3;
    f->encoding = type == ST_MSG_KEYFRAME ? ST_FRAME_RAW : ST_FRAME_JPEG;
    f->width = FRAME_W;
    f->height = FRAME_H;
    f->data = s->frame;
    f->data_len = type == ST_MSG_KEYFRAME ? RAW_BYTES : RAW_BYTES - 5;
    f->version = 9;
    break;
  }
  case ST_MSG_PING:
  case ST_MSG_PONG:
    m->u.ping.t = (1ull << 40) + 5;
    break;
  case ST_MSG_BYE:
    break;
  case ST_MSG_WELCOME: {
    st_msg_welcome *w = &m->u.welcome;
    w->proto = ST_PROTO_VERSION;
    strcpy(w->session, "session-0001");
    w->version = 77;
    w->threshold = 0.8;
    w->min_stride = 8;
    w->max_stride = 64;
    w->stride = 16;
    strcpy(s->trainable[0], "decoder.conv1.weight");
    strcpy(s->trainable[1], "decoder.conv1.bias");
    strcpy(s->trainable[2], "classifier.weight");
    w->trainable = s->trainable;
    w->trainable_count = TRAINABLE;
    w->update_encoding = ST_UPDATE_F16_DELTA;
    break;
  }
  case ST_MSG_MODEL:
  case ST_MSG_UPDATE: {
    st_wire_tensor *t = s->tensors;
    bool update = type == ST_MSG_UPDATE;
    strcpy(t[0].name, "head.weight");
    t[0].ndim = 2;
    t[0].shape[0] = 2;
    t[0].shape[1] = 3;
    t[0].dtype = update ? ST_WIRE_F16 : ST_WIRE_F32;
    t[0].data = update ? s->f16_payload : s->f32_payload;
    t[0].bytes = update ? sizeof s->f16_payload : sizeof s->f32_payload;
    strcpy(t[1].name, "head.scale");
    t[1].ndim = 0; /* a scalar: one element */
    t[1].dtype = ST_WIRE_F16;
    t[1].data = s->f16_scalar;
    t[1].bytes = sizeof s->f16_scalar;
    strcpy(t[2].name, "head.empty");
    t[2].ndim = 3;
    t[2].shape[0] = 4;
    t[2].shape[1] = 0;
    t[2].shape[2] = 9;
    t[2].dtype = update ? ST_WIRE_F16 : ST_WIRE_F32;
    if (update) {
      st_msg_update *u = &m->u.update;
      u->seq = 31;
      u->version = 12;
      u->base_version = 11;
      u->stride = 24;
      u->metric = 0.734375;
      u->steps = 5;
      u->encoding = ST_UPDATE_F16;
      u->tensor_count = SAMPLE_TENSORS;
      u->tensors = t;
      u->timing = (st_msg_timing){.queue_ms = 0.25, .decode_ms = 1.5,
                                  .teacher_ms = 44.125, .distill_ms = 13.0,
                                  .encode_ms = 0.0625};
    } else {
      m->u.model.version = 3;
      m->u.model.tensor_count = SAMPLE_TENSORS;
      m->u.model.tensors = t;
    }
    break;
  }
  case ST_MSG_LABELS: {
    st_msg_labels *l = &m->u.labels;
    l->seq = 99;
    l->width = LABELS_W;
    l->height = LABELS_H;
    l->data = s->labels;
    l->data_len = sizeof s->labels;
    break;
  }
  case ST_MSG_ERROR:
    strcpy(m->u.error.code, st_err_name(ST_EFULL));
    strcpy(m->u.error.message, "server at its client limit (64)");
    m->u.error.fatal = 1;
    break;
  default:
    fail_msg("no sample for type %d", (int)type);
  }
}

static void assert_tensors_equal(const st_wire_tensor *a,
                                 const st_wire_tensor *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    assert_string_equal(a[i].name, b[i].name);
    assert_int_equal(a[i].ndim, b[i].ndim);
    for (int d = 0; d < a[i].ndim; d++)
      assert_int_equal(a[i].shape[d], b[i].shape[d]);
    assert_int_equal(a[i].dtype, b[i].dtype);
    assert_int_equal(a[i].bytes, b[i].bytes);
    if (a[i].bytes)
      assert_memory_equal(a[i].data, b[i].data, a[i].bytes);
  }
}

/* Every field of two messages of the same type (doubles bit for bit). */
static void assert_msg_equal(const st_msg *a, const st_msg *b) {
  assert_int_equal(a->type, b->type);
  switch (a->type) {
  case ST_MSG_HELLO: {
    const st_msg_hello *x = &a->u.hello, *y = &b->u.hello;
    assert_int_equal(x->proto, y->proto);
    assert_string_equal(x->client_id, y->client_id);
    assert_int_equal(x->has_token, y->has_token);
    if (x->has_token)
      assert_string_equal(x->token, y->token);
    assert_int_equal(x->has_student, y->has_student);
    if (x->has_student)
      assert_string_equal(x->student, y->student);
    assert_int_equal(x->width, y->width);
    assert_int_equal(x->height, y->height);
    assert_int_equal(x->encodings, y->encodings);
    assert_int_equal(x->has_resume, y->has_resume);
    if (x->has_resume) {
      assert_string_equal(x->resume_session, y->resume_session);
      assert_int_equal(x->resume_version, y->resume_version);
    }
    break;
  }
  case ST_MSG_KEYFRAME:
  case ST_MSG_OFFLOAD: {
    const st_msg_frame *x = &a->u.frame, *y = &b->u.frame;
    assert_int_equal(x->seq, y->seq);
    assert_int_equal(x->frame_index, y->frame_index);
    assert_int_equal(x->encoding, y->encoding);
    assert_int_equal(x->width, y->width);
    assert_int_equal(x->height, y->height);
    assert_int_equal(x->data_len, y->data_len);
    assert_memory_equal(x->data, y->data, x->data_len);
    assert_int_equal(x->version, y->version);
    break;
  }
  case ST_MSG_PING:
  case ST_MSG_PONG:
    assert_int_equal(a->u.ping.t, b->u.ping.t);
    break;
  case ST_MSG_BYE:
    break;
  case ST_MSG_WELCOME: {
    const st_msg_welcome *x = &a->u.welcome, *y = &b->u.welcome;
    assert_int_equal(x->proto, y->proto);
    assert_string_equal(x->session, y->session);
    assert_int_equal(x->version, y->version);
    assert_memory_equal(&x->threshold, &y->threshold, sizeof(double));
    assert_int_equal(x->min_stride, y->min_stride);
    assert_int_equal(x->max_stride, y->max_stride);
    assert_int_equal(x->stride, y->stride);
    assert_int_equal(x->trainable_count, y->trainable_count);
    for (size_t i = 0; i < x->trainable_count; i++)
      assert_string_equal(x->trainable[i], y->trainable[i]);
    assert_int_equal(x->update_encoding, y->update_encoding);
    break;
  }
  case ST_MSG_MODEL:
    assert_int_equal(a->u.model.version, b->u.model.version);
    assert_int_equal(a->u.model.tensor_count, b->u.model.tensor_count);
    assert_tensors_equal(a->u.model.tensors, b->u.model.tensors,
                         a->u.model.tensor_count);
    break;
  case ST_MSG_UPDATE: {
    const st_msg_update *x = &a->u.update, *y = &b->u.update;
    assert_int_equal(x->seq, y->seq);
    assert_int_equal(x->version, y->version);
    assert_int_equal(x->base_version, y->base_version);
    assert_int_equal(x->full, y->full);
    assert_int_equal(x->stride, y->stride);
    assert_memory_equal(&x->metric, &y->metric, sizeof(double));
    assert_int_equal(x->steps, y->steps);
    assert_int_equal(x->encoding, y->encoding);
    assert_int_equal(x->tensor_count, y->tensor_count);
    assert_tensors_equal(x->tensors, y->tensors, x->tensor_count);
    assert_memory_equal(&x->timing, &y->timing, sizeof x->timing);
    break;
  }
  case ST_MSG_LABELS: {
    const st_msg_labels *x = &a->u.labels, *y = &b->u.labels;
    assert_int_equal(x->seq, y->seq);
    assert_int_equal(x->width, y->width);
    assert_int_equal(x->height, y->height);
    assert_int_equal(x->data_len, y->data_len);
    assert_memory_equal(x->data, y->data, x->data_len);
    break;
  }
  case ST_MSG_ERROR:
    assert_string_equal(a->u.error.code, b->u.error.code);
    assert_string_equal(a->u.error.message, b->u.error.message);
    assert_int_equal(a->u.error.fatal, b->u.error.fatal);
    break;
  default:
    fail_msg("unexpected type %d", (int)a->type);
  }
}

/* ---- mutating a valid body: omit, replace, duplicate or add one key ------ */

typedef void (*value_writer)(msgpack_packer *pk, const void *arg);

typedef enum mut_kind {
  MUT_OMIT,      /* drop the entry (or array item) at path */
  MUT_REPLACE,   /* write put(arg) as its value */
  MUT_DUPLICATE, /* write the entry twice */
  MUT_ADD,       /* add "zz-unknown": put(arg) to the map AT path */
} mut_kind;

typedef struct mutation {
  const char *path; /* "seq", "tensors.1.dtype"; MUT_ADD: "" is the top */
  mut_kind kind;
  value_writer put;
  const void *arg;
} mutation;

static bool object_is_str(const msgpack_object *o, const char *s, size_t n) {
  return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
         memcmp(o->via.str.ptr, s, n) == 0;
}

static void repack(msgpack_packer *pk, const msgpack_object *o,
                   const char *path, const mutation *mu) {
  if (*path == '\0') { /* MUT_ADD reached its map */
    assert_int_equal(o->type, MSGPACK_OBJECT_MAP);
    msgpack_pack_map(pk, o->via.map.size + 1);
    for (uint32_t e = 0; e < o->via.map.size; e++) {
      msgpack_pack_object(pk, o->via.map.ptr[e].key);
      msgpack_pack_object(pk, o->via.map.ptr[e].val);
    }
    msgpack_pack_str_with_body(pk, "zz-unknown", strlen("zz-unknown"));
    mu->put(pk, mu->arg);
    return;
  }
  const char *dot = strchr(path, '.');
  size_t seg = dot ? (size_t)(dot - path) : strlen(path);
  const char *rest = dot ? dot + 1 : "";
  bool here = !dot && mu->kind != MUT_ADD;
  bool is_map = o->type == MSGPACK_OBJECT_MAP;
  assert_true(is_map || o->type == MSGPACK_OBJECT_ARRAY);
  uint32_t n = is_map ? o->via.map.size : o->via.array.size;
  uint32_t hit = n;
  for (uint32_t e = 0; e < n && hit == n; e++)
    if (is_map ? object_is_str(&o->via.map.ptr[e].key, path, seg)
               : (uint32_t)atoi(path) == e)
      hit = e;
  if (hit == n)
    fail_msg("mutation path '%s' not found", mu->path);
  uint32_t count = n + (here && mu->kind == MUT_DUPLICATE) -
                   (here && mu->kind == MUT_OMIT);
  if (is_map)
    msgpack_pack_map(pk, count);
  else
    msgpack_pack_array(pk, count);
  for (uint32_t e = 0; e < n; e++) {
    const msgpack_object *key = is_map ? &o->via.map.ptr[e].key : NULL;
    const msgpack_object *val =
        is_map ? &o->via.map.ptr[e].val : &o->via.array.ptr[e];
    int copies = 1;
    if (e == hit && here && mu->kind == MUT_OMIT)
      continue;
    if (e == hit && here && mu->kind == MUT_DUPLICATE)
      copies = 2;
    for (int c = 0; c < copies; c++) {
      if (key)
        msgpack_pack_object(pk, *key);
      if (e != hit)
        msgpack_pack_object(pk, *val);
      else if (!here)
        repack(pk, val, rest, mu);
      else if (mu->kind == MUT_REPLACE)
        mu->put(pk, mu->arg);
      else
        msgpack_pack_object(pk, *val);
    }
  }
}

/* The body of m (as our encoder writes it) with one mutation applied. */
static uint8_t *mutated(const st_msg *m, const mutation *mu, size_t *len) {
  size_t blen;
  uint8_t *framed = encode_ok(m, &blen);
  msgpack_unpacked up;
  msgpack_unpacked_init(&up);
  size_t off = 0;
  assert_int_equal(
      msgpack_unpack_next(&up, (const char *)framed + HDR, blen, &off),
      MSGPACK_UNPACK_SUCCESS);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  repack(&pk, &up.data, mu->path, mu);
  msgpack_unpacked_destroy(&up);
  free(framed);
  *len = sb.size;
  return (uint8_t *)msgpack_sbuffer_release(&sb);
}

static void expect_mutation_fails(st_msg_type type, const mutation *mu,
                                  int code, const char *needle) {
  sample s;
  sample_init(&s, type);
  size_t len;
  uint8_t *body = mutated(&s.m, mu, &len);
  char what[160];
  snprintf(what, sizeof what, "%s with '%s' mutated (%d)",
           st_msg_type_name(type), mu->path, (int)mu->kind);
  expect_fail(body, len, code, needle, what);
  free(body);
}

/* Decodes the mutated sample, which must succeed, into *out (the caller
 * frees out and *body). */
static uint8_t *expect_mutation_decodes(st_msg_type type, const mutation *mu,
                                        sample *s, st_msg *out) {
  sample_init(s, type);
  size_t len;
  uint8_t *body = mutated(&s->m, mu, &len);
  int rc = st_msg_decode(body, len, NULL, out);
  if (rc)
    fail_msg("%s with '%s' mutated: %s: %s", st_msg_type_name(type),
             mu->path, st_err_name(rc), st_error_detail());
  return body;
}

/* Value writers. */
static void put_nil(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_nil(pk);
}
static void put_true(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_true(pk);
}
static void put_neg(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_int64(pk, -1);
}
static void put_uint(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_uint64(pk, 7);
}
static void put_float(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_double(pk, 1.5);
}
static void put_str(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_str_with_body(pk, "x", 1);
}
static void put_bin(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_bin_with_body(pk, "abc", 3);
}
static void put_array(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_array(pk, 0);
}
static void put_map(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_map(pk, 0);
}
/* arg: const uint64_t * */
static void put_u64(msgpack_packer *pk, const void *a) {
  msgpack_pack_uint64(pk, *(const uint64_t *)a);
}
/* arg: const int64_t * */
static void put_i64(msgpack_packer *pk, const void *a) {
  msgpack_pack_int64(pk, *(const int64_t *)a);
}
/* arg: const double * */
static void put_f64(msgpack_packer *pk, const void *a) {
  msgpack_pack_double(pk, *(const double *)a);
}
/* arg: const char * (NUL-terminated) */
static void put_cstr(msgpack_packer *pk, const void *a) {
  msgpack_pack_str_with_body(pk, a, strlen(a));
}
/* "a\0b": a str with a NUL inside */
static void put_str_nul(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_str_with_body(pk, "a\0b", 3);
}
/* A str of n copies of 'a'; arg: const size_t * */
static void put_str_len(msgpack_packer *pk, const void *a) {
  size_t n = *(const size_t *)a;
  char *s = malloc(n + 1);
  assert_non_null(s);
  memset(s, 'a', n);
  msgpack_pack_str_with_body(pk, s, n);
  free(s);
}
/* A bin of n bytes; arg: const size_t * */
static void put_bin_len(msgpack_packer *pk, const void *a) {
  size_t n = *(const size_t *)a;
  uint8_t *b = calloc(n + 1, 1);
  assert_non_null(b);
  msgpack_pack_bin_with_body(pk, b, n);
  free(b);
}
/* An array of strings; arg: NULL-terminated const char *const * */
static void put_strs(msgpack_packer *pk, const void *a) {
  const char *const *s = a;
  size_t n = 0;
  while (s[n])
    n++;
  msgpack_pack_array(pk, n);
  for (size_t i = 0; i < n; i++)
    msgpack_pack_str_with_body(pk, s[i], strlen(s[i]));
}
/* An array of uints (a shape); arg: const struct u64s * */
struct u64s {
  size_t n;
  uint64_t v[ST_PROTO_MAX_NDIM + 2];
};
static void put_u64s(msgpack_packer *pk, const void *a) {
  const struct u64s *u = a;
  msgpack_pack_array(pk, u->n);
  for (size_t i = 0; i < u->n; i++)
    msgpack_pack_uint64(pk, u->v[i]);
}
/* ["raw", 5]: a non-string in a string array. */
static void put_mixed_array(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_array(pk, 2);
  msgpack_pack_str_with_body(pk, "raw", 3);
  msgpack_pack_int(pk, 5);
}
/* {"nested": [1, {"deep": nil}]}, for unknown keys */
static void put_nested(msgpack_packer *pk, const void *a) {
  (void)a;
  msgpack_pack_map(pk, 1);
  msgpack_pack_str_with_body(pk, "nested", 6);
  msgpack_pack_array(pk, 2);
  msgpack_pack_int(pk, 1);
  msgpack_pack_map(pk, 1);
  msgpack_pack_str_with_body(pk, "deep", 4);
  msgpack_pack_nil(pk);
}

/* ---- framing -------------------------------------------------------------- */

static void test_frame_header(void **state) {
  (void)state;
  uint8_t hdr[HDR];
  st_frame_header_write(hdr, 0x01020304u);
  const uint8_t want[HDR] = {0x01, 0x02, 0x03, 0x04}; /* big-endian */
  assert_memory_equal(hdr, want, HDR);
  uint32_t len = 0;
  ST_ASSERT_OK(st_frame_header_parse(hdr, 0x01020304u, &len));
  assert_int_equal(len, 0x01020304u);

  st_frame_header_write(hdr, 0);
  assert_int_equal(st_frame_header_parse(hdr, 100, &len), ST_EBADMSG);
  st_frame_header_write(hdr, 101);
  assert_int_equal(st_frame_header_parse(hdr, 100, &len), ST_ETOOBIG);
  st_frame_header_write(hdr, 100);
  ST_ASSERT_OK(st_frame_header_parse(hdr, 100, &len));
  assert_int_equal(len, 100);
  const uint8_t huge[HDR] = {0xff, 0xff, 0xff, 0xff};
  assert_int_equal(
      st_frame_header_parse(huge, ST_PROTO_MAX_MESSAGE_BYTES_CEILING, &len),
      ST_ETOOBIG);
  st_proto_limits l;
  st_proto_limits_default(&l);
  assert_int_equal(l.max_message_bytes, 16u * 1024u * 1024u);
  st_frame_header_write(hdr, l.max_message_bytes + 1);
  assert_int_equal(st_frame_header_parse(hdr, l.max_message_bytes, &len),
                   ST_ETOOBIG);
  /* A limit outside 1..ceiling is the caller's error. */
  assert_int_equal(st_frame_header_parse(want, 0, &len), ST_EINVAL);
}

/* Three framed bodies of 1, 300 and 5 bytes, back to back. */
static size_t framer_stream(uint8_t *out, const uint32_t *lens, int count) {
  size_t off = 0;
  for (int m = 0; m < count; m++) {
    st_frame_header_write(out + off, lens[m]);
    off += HDR;
    for (uint32_t i = 0; i < lens[m]; i++)
      out[off++] = (uint8_t)(m * 31 + i);
  }
  return off;
}

static void check_body(const uint8_t *body, uint32_t len, int m,
                       const uint32_t *lens) {
  assert_non_null(body);
  assert_int_equal(len, lens[m]);
  for (uint32_t i = 0; i < len; i++)
    assert_int_equal(body[i], (uint8_t)(m * 31 + i));
}

static void test_framer(void **state) {
  (void)state;
  const uint32_t lens[3] = {1, 300, 5};
  uint8_t stream[3 * HDR + 306];
  size_t total = framer_stream(stream, lens, 3);
  /* Any split of the stream gives the same messages: one byte at a time,
   * then all at once, then chunks of 7. */
  const size_t chunks[3] = {1, total, 7};
  for (int c = 0; c < 3; c++) {
    st_framer f;
    st_framer_init(&f, 1000);
    int got = 0;
    for (size_t off = 0; off < total;) {
      size_t n = total - off < chunks[c] ? total - off : chunks[c];
      const uint8_t *p = stream + off;
      off += n;
      while (n) {
        size_t used = 0;
        uint8_t *body = NULL;
        uint32_t len = 0;
        ST_ASSERT_OK(st_framer_feed(&f, p, n, &used, &body, &len));
        assert_true(used > 0 && used <= n);
        p += used;
        n -= used;
        if (body) {
          check_body(body, len, got++, lens);
          free(body);
        }
      }
    }
    assert_int_equal(got, 3);
    assert_null(f.body);
    st_framer_reset(&f);
  }
  /* Receiving into the body's own space (the load generator's path). */
  st_framer f;
  st_framer_init(&f, 1000);
  size_t used = 0, room = 0;
  uint8_t *body = NULL;
  uint32_t len = 0;
  assert_null(st_framer_body_space(&f, &room));
  assert_int_equal(room, 0);
  ST_ASSERT_OK(st_framer_feed(&f, stream + HDR + 1, HDR + 10, &used, &body,
                              &len));
  assert_null(body);
  uint8_t *space = st_framer_body_space(&f, &room);
  assert_non_null(space);
  assert_int_equal(room, 290);
  memcpy(space, stream + 2 * HDR + 11, 100);
  st_framer_body_commit(&f, 100, &body, &len);
  assert_null(body);
  space = st_framer_body_space(&f, &room);
  assert_int_equal(room, 190);
  memcpy(space, stream + 2 * HDR + 111, 190);
  st_framer_body_commit(&f, 190, &body, &len);
  check_body(body, len, 1, lens);
  free(body);
  /* A bad prefix fails and leaves the framer empty; a reset in the middle
   * of a body frees it (ASan's leak check). */
  const uint8_t zero[HDR] = {0};
  assert_int_equal(st_framer_feed(&f, zero, HDR, &used, &body, &len),
                   ST_EBADMSG);
  assert_int_equal(f.hdr_have, 0);
  uint8_t big[HDR];
  st_frame_header_write(big, 1001);
  assert_int_equal(st_framer_feed(&f, big, HDR, &used, &body, &len),
                   ST_ETOOBIG);
  assert_null(body);
  ST_ASSERT_OK(st_framer_feed(&f, stream + HDR + 1, HDR + 50, &used, &body,
                              &len));
  assert_non_null(f.body);
  st_framer_reset(&f);
  assert_null(f.body);
  assert_int_equal(f.max_message_bytes, 1000);
}

static void test_body_over_limit(void **state) {
  (void)state;
  sample s;
  sample_init(&s, ST_MSG_KEYFRAME);
  size_t len;
  uint8_t *buf = encode_ok(&s.m, &len);
  st_proto_limits l = {.max_message_bytes = (uint32_t)len - 1};
  st_msg out;
  memset(&out, 0x5a, sizeof out);
  assert_int_equal(st_msg_decode(buf + HDR, len, &l, &out), ST_ETOOBIG);
  assert_true(msg_is_zero(&out));
  l.max_message_bytes = (uint32_t)len;
  ST_ASSERT_OK(st_msg_decode(buf + HDR, len, &l, &out));
  assert_int_equal(out.type, ST_MSG_KEYFRAME);
  st_msg_free(&out);
  l.max_message_bytes = ST_PROTO_MAX_MESSAGE_BYTES_CEILING + 1;
  assert_int_equal(st_msg_decode(buf + HDR, len, &l, &out), ST_EINVAL);
  /* An empty body is malformed, not too big. */
  expect_fail(buf + HDR, 0, ST_EBADMSG, "empty", "empty body");
  free(buf);
}

/* ---- round trips ------------------------------------------------------------ */

static void test_names(void **state) {
  (void)state;
  static const char *const want[ST_MSG_TYPE_COUNT] = {
      NULL,     "hello",   "keyframe", "offload", "ping",  "bye",
      "welcome", "model",  "update",   "labels",  "error", "pong"};
  for (int t = 0; t < ST_MSG_TYPE_COUNT; t++) {
    const char *got = st_msg_type_name((st_msg_type)t);
    if (want[t])
      assert_string_equal(got, want[t]);
    else
      assert_null(got);
  }
  assert_null(st_msg_type_name(ST_MSG_TYPE_COUNT));
  st_frame_encoding fe;
  ST_ASSERT_OK(st_frame_encoding_from_name("raw", &fe));
  assert_int_equal(fe, ST_FRAME_RAW);
  assert_string_equal(st_frame_encoding_name(ST_FRAME_JPEG), "jpeg");
  assert_int_equal(st_frame_encoding_from_name("png", &fe), ST_EINVAL);
  st_update_encoding ue;
  ST_ASSERT_OK(st_update_encoding_from_name("f16-delta", &ue));
  assert_int_equal(ue, ST_UPDATE_F16_DELTA);
  assert_string_equal(st_update_encoding_name(ST_UPDATE_F16), "f16");
  assert_int_equal(st_update_encoding_from_name("F32", &ue), ST_EINVAL);
}

static void round_trip_sample(const sample *s) {
  size_t len;
  uint8_t *buf = encode_ok(&s->m, &len);
  const uint8_t *body = buf + HDR;
  ST_ASSERT_OK(st_msg_validate(body, len));
  st_msg out;
  decode_ok(body, len, &out);
  assert_msg_equal(&s->m, &out);
  /* Byte fields borrow the body (msgpack-c points into it), never copies. */
  switch (out.type) {
  case ST_MSG_KEYFRAME:
  case ST_MSG_OFFLOAD:
    assert_true(points_into(out.u.frame.data, body, len));
    break;
  case ST_MSG_LABELS:
    assert_true(points_into(out.u.labels.data, body, len));
    break;
  case ST_MSG_MODEL:
  case ST_MSG_UPDATE: {
    const st_wire_tensor *t = out.type == ST_MSG_MODEL ? out.u.model.tensors
                                                       : out.u.update.tensors;
    size_t n = out.type == ST_MSG_MODEL ? out.u.model.tensor_count
                                        : out.u.update.tensor_count;
    for (size_t i = 0; i < n; i++)
      if (t[i].bytes)
        assert_true(points_into(t[i].data, body, len) &&
                    points_into(t[i].data + t[i].bytes - 1, body, len));
    break;
  }
  default:
    break;
  }
  /* The same fields encode to the same bytes. */
  size_t len2;
  uint8_t *buf2 = encode_ok(&out, &len2);
  assert_int_equal(len2, len);
  assert_memory_equal(buf2, buf, len + HDR);
  free(buf2);
  st_msg_free(&out);
  assert_true(msg_is_zero(&out));
  st_msg_free(&out); /* an already-freed message is fine */
  st_msg_free(NULL);
  free(buf);
}

static void test_round_trip_every_type(void **state) {
  (void)state;
  for (int t = ST_MSG_HELLO; t < ST_MSG_TYPE_COUNT; t++) {
    sample s;
    sample_init(&s, (st_msg_type)t);
    round_trip_sample(&s);
  }
}

static void test_round_trip_variants(void **state) {
  (void)state;
  sample s;
  /* hello without any optional key, one encoding, the largest sides */
  sample_init(&s, ST_MSG_HELLO);
  s.m.u.hello.has_token = s.m.u.hello.has_student = s.m.u.hello.has_resume = 0;
  s.m.u.hello.encodings = 1u << ST_FRAME_RAW;
  s.m.u.hello.width = s.m.u.hello.height = ST_PROTO_MAX_SIDE;
  round_trip_sample(&s);
  /* an empty token is a token */
  sample_init(&s, ST_MSG_HELLO);
  s.m.u.hello.token[0] = '\0';
  round_trip_sample(&s);
  /* jpeg of exactly w*h*3 bytes, and of one byte */
  sample_init(&s, ST_MSG_KEYFRAME);
  s.m.u.frame.encoding = ST_FRAME_JPEG;
  round_trip_sample(&s);
  s.m.u.frame.data_len = 1;
  round_trip_sample(&s);
  /* extremes of the integer fields */
  sample_init(&s, ST_MSG_PING);
  s.m.u.ping.t = UINT64_MAX;
  round_trip_sample(&s);
  s.m.u.ping.t = 0;
  round_trip_sample(&s);
  /* welcome with no trainable tensor, negative-free extremes */
  sample_init(&s, ST_MSG_WELCOME);
  s.m.u.welcome.trainable_count = 0;
  s.m.u.welcome.trainable = NULL;
  s.m.u.welcome.min_stride = 1;
  s.m.u.welcome.stride = s.m.u.welcome.max_stride = INT32_MAX;
  s.m.u.welcome.threshold = -0.0;
  round_trip_sample(&s);
  /* an update with no tensors (nothing changed), f32 encoding */
  sample_init(&s, ST_MSG_UPDATE);
  s.m.u.update.tensor_count = 0;
  s.m.u.update.tensors = NULL;
  s.m.u.update.encoding = ST_UPDATE_F32;
  s.m.u.update.timing.teacher_ms = 1e300;
  round_trip_sample(&s);
  /* a full (resync) update, f16 */
  sample_init(&s, ST_MSG_UPDATE);
  s.m.u.update.full = 1;
  s.m.u.update.base_version = 400;
  round_trip_sample(&s);
  /* error with an empty message, not fatal */
  sample_init(&s, ST_MSG_ERROR);
  s.m.u.error.message[0] = '\0';
  s.m.u.error.fatal = 0;
  round_trip_sample(&s);
}

/* The exact bytes of a small message (docs/protocol.md shows them). */
static void test_ping_bytes(void **state) {
  (void)state;
  st_msg m = {.type = ST_MSG_PING};
  m.u.ping.t = 1700000000000ull;
  static const uint8_t want[] = {
      0x00, 0x00, 0x00, 0x16,                   /* body: 22 bytes */
      0x82,                                     /* map of 2 */
      0xa4, 't',  'y',  'p',  'e',              /* "type" */
      0xa4, 'p',  'i',  'n',  'g',              /* "ping" */
      0xa1, 't',                                /* "t" */
      0xcf, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00}; /* uint64 */
  uint8_t *buf = NULL;
  size_t len = 0;
  ST_ASSERT_OK(st_msg_encode(&m, &buf, &len));
  assert_int_equal(len, sizeof want);
  assert_memory_equal(buf, want, sizeof want);
  free(buf);
}

/* ---- golden bodies from Python msgpack ------------------------------------ */

/* Our encoder reproduces another implementation's bytes exactly. */
static void test_golden_canonical_bytes(void **state) {
  (void)state;
  static const char *const files[] = {"proto/canon_ping.bin",
                                      "proto/canon_keyframe.bin",
                                      "proto/canon_hello.bin",
                                      "proto/canon_update.bin"};
  for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
    size_t len;
    uint8_t *golden = read_fixture(files[f], &len);
    st_msg m;
    decode_ok(golden, len, &m);
    size_t blen;
    uint8_t *buf = encode_ok(&m, &blen);
    if (blen != len || memcmp(buf + HDR, golden, len) != 0)
      fail_msg("%s: re-encoding differs from the Python bytes", files[f]);
    free(buf);
    /* And the decoded values are the ones gen_proto.py wrote. */
    switch (m.type) {
    case ST_MSG_PING:
      assert_int_equal(m.u.ping.t, 1700000000000ull);
      break;
    case ST_MSG_KEYFRAME:
      assert_int_equal(m.u.frame.seq, 7);
      assert_int_equal(m.u.frame.frame_index, 210);
      assert_int_equal(m.u.frame.encoding, ST_FRAME_RAW);
      assert_int_equal(m.u.frame.width, 4);
      assert_int_equal(m.u.frame.height, 2);
      assert_int_equal(m.u.frame.data_len, 24);
      for (int i = 0; i < 24; i++)
        assert_int_equal(m.u.frame.data[i], i);
      assert_int_equal(m.u.frame.version, 3);
      break;
    case ST_MSG_HELLO:
      assert_string_equal(m.u.hello.client_id, "cam-01");
      assert_true(m.u.hello.has_token);
      assert_string_equal(m.u.hello.token, "s3cret");
      assert_true(m.u.hello.has_student);
      assert_string_equal(m.u.hello.student,
                          "0123456789abcdef0123456789abcdef"
                          "0123456789abcdef0123456789abcdef");
      assert_int_equal(m.u.hello.width, 1280);
      assert_int_equal(m.u.hello.height, 720);
      assert_int_equal(m.u.hello.encodings, 3u);
      assert_true(m.u.hello.has_resume);
      assert_string_equal(m.u.hello.resume_session, "sess-9");
      assert_int_equal(m.u.hello.resume_version, 300);
      break;
    case ST_MSG_UPDATE: {
      const st_msg_update *u = &m.u.update;
      assert_int_equal(u->seq, 7);
      assert_int_equal(u->version, 4);
      assert_int_equal(u->base_version, 3);
      assert_int_equal(u->full, 0);
      assert_int_equal(u->stride, 16);
      assert_true(u->metric == 0.8125);
      assert_int_equal(u->steps, 3);
      assert_int_equal(u->encoding, ST_UPDATE_F16_DELTA);
      assert_int_equal(u->tensor_count, 2);
      assert_string_equal(u->tensors[0].name, "head.weight");
      assert_int_equal(u->tensors[0].ndim, 2);
      assert_int_equal(u->tensors[0].dtype, ST_WIRE_F16);
      float w[4] = {9, 9, 9, 9};
      ST_ASSERT_OK(st_codec_apply(u->encoding, u->tensors[0].dtype,
                                  u->tensors[0].data, u->tensors[0].bytes, 4,
                                  w));
      const float want[4] = {9.5f, 8.75f, 10.0f, 9.0f};
      assert_memory_equal(w, want, sizeof want);
      assert_string_equal(u->tensors[1].name, "head.bias");
      assert_int_equal(u->tensors[1].shape[0], 2);
      assert_true(u->timing.queue_ms == 0.5 && u->timing.decode_ms == 1.25 &&
                  u->timing.teacher_ms == 44.0 &&
                  u->timing.distill_ms == 39.5 &&
                  u->timing.encode_ms == 0.75);
      break;
    }
    default:
      fail_msg("%s: unexpected type", files[f]);
    }
    st_msg_free(&m);
    free(golden);
  }
}

/* Another client's forms: other key orders, unknown keys, int8/int16/uint64
 * for small values, str8, float32 and integers in float fields. */
static void test_golden_python_forms(void **state) {
  (void)state;
  size_t len;
  uint8_t *b;
  st_msg m;

  b = read_fixture("proto/py_hello.bin", &len);
  decode_ok(b, len, &m);
  assert_int_equal(m.type, ST_MSG_HELLO);
  assert_int_equal(m.u.hello.proto, 1);
  assert_string_equal(m.u.hello.client_id, "py-client");
  assert_false(m.u.hello.has_token);
  assert_true(m.u.hello.has_student);
  assert_string_equal(m.u.hello.student, "fedcba9876543210fedcba9876543210"
                                         "fedcba9876543210fedcba9876543210");
  assert_int_equal(m.u.hello.width, 640);
  assert_int_equal(m.u.hello.height, 480);
  /* ["h264", "jpeg"]: the unknown one is skipped */
  assert_int_equal(m.u.hello.encodings, 1u << ST_FRAME_JPEG);
  assert_false(m.u.hello.has_resume);
  st_msg_free(&m);
  free(b);

  b = read_fixture("proto/py_keyframe_forms.bin", &len);
  decode_ok(b, len, &m);
  assert_int_equal(m.type, ST_MSG_KEYFRAME);
  assert_int_equal(m.u.frame.seq, 1ull << 40);
  assert_int_equal(m.u.frame.frame_index, 300);
  assert_int_equal(m.u.frame.encoding, ST_FRAME_RAW);
  assert_int_equal(m.u.frame.width, 3);
  assert_int_equal(m.u.frame.height, 2);
  assert_int_equal(m.u.frame.version, 9);
  assert_int_equal(m.u.frame.data_len, 18);
  for (int i = 0; i < 18; i += 3)
    assert_true(m.u.frame.data[i] == 200 && m.u.frame.data[i + 1] == 100 &&
                m.u.frame.data[i + 2] == 50);
  assert_true(points_into(m.u.frame.data, b, len));
  st_msg_free(&m);
  free(b);

  b = read_fixture("proto/py_offload_jpeg.bin", &len);
  decode_ok(b, len, &m);
  assert_int_equal(m.type, ST_MSG_OFFLOAD);
  assert_int_equal(m.u.frame.seq, 11);
  assert_int_equal(m.u.frame.frame_index, 12);
  assert_int_equal(m.u.frame.encoding, ST_FRAME_JPEG);
  assert_int_equal(m.u.frame.width, 16);
  assert_int_equal(m.u.frame.height, 8);
  assert_int_equal(m.u.frame.data_len, 64);
  assert_int_equal(m.u.frame.data[0], 0xff);
  assert_int_equal(m.u.frame.data[1], 0xd8);
  assert_int_equal(m.u.frame.version, 0);
  st_msg_free(&m);
  free(b);

  b = read_fixture("proto/py_update_f32.bin", &len);
  decode_ok(b, len, &m);
  assert_int_equal(m.type, ST_MSG_UPDATE);
  {
    const st_msg_update *u = &m.u.update;
    assert_int_equal(u->seq, 5);
    assert_int_equal(u->version, 2);
    assert_int_equal(u->base_version, 1);
    assert_int_equal(u->full, 1);
    assert_int_equal(u->stride, 32);
    assert_true(u->metric == 0.75); /* packed as float32 */
    assert_int_equal(u->steps, 8);
    assert_int_equal(u->encoding, ST_UPDATE_F32);
    /* integers and float32 in timing */
    assert_true(u->timing.queue_ms == 3.0 && u->timing.decode_ms == 1.5 &&
                u->timing.teacher_ms == 20.0 &&
                u->timing.distill_ms == 7.25 && u->timing.encode_ms == 0.0);
    assert_int_equal(u->tensor_count, 1);
    const st_wire_tensor *t = &u->tensors[0];
    assert_string_equal(t->name, "classifier.weight");
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->dtype, ST_WIRE_F32);
    assert_int_equal(t->bytes, 24);
    float w[6] = {0};
    ST_ASSERT_OK(st_codec_apply(ST_UPDATE_F32, t->dtype, t->data, t->bytes, 6,
                                w));
    const float want[6] = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, -1e6f};
    assert_memory_equal(w, want, sizeof want);
  }
  st_msg_free(&m);
  free(b);

  b = read_fixture("proto/py_welcome.bin", &len);
  decode_ok(b, len, &m);
  assert_int_equal(m.type, ST_MSG_WELCOME);
  assert_int_equal(m.u.welcome.proto, 1);
  assert_string_equal(m.u.welcome.session, "abc123");
  assert_int_equal(m.u.welcome.version, 0);
  assert_true(m.u.welcome.threshold == 0.8);
  assert_int_equal(m.u.welcome.min_stride, 8);
  assert_int_equal(m.u.welcome.max_stride, 64);
  assert_int_equal(m.u.welcome.stride, 8);
  assert_int_equal(m.u.welcome.trainable_count, 3);
  assert_string_equal(m.u.welcome.trainable[0], "head.0.weight");
  assert_string_equal(m.u.welcome.trainable[1], "head.0.bias");
  assert_string_equal(m.u.welcome.trainable[2], "classifier.weight");
  assert_int_equal(m.u.welcome.update_encoding, ST_UPDATE_F16);
  st_msg_free(&m);
  free(b);

  b = read_fixture("proto/py_model.bin", &len);
  decode_ok(b, len, &m);
  assert_int_equal(m.type, ST_MSG_MODEL);
  assert_int_equal(m.u.model.version, 12);
  assert_int_equal(m.u.model.tensor_count, 3);
  {
    const st_wire_tensor *t = m.u.model.tensors;
    assert_string_equal(t[0].name, "a");
    assert_int_equal(t[0].ndim, 1);
    assert_int_equal(t[0].shape[0], 3);
    assert_int_equal(t[0].dtype, ST_WIRE_F32);
    float a[3];
    memcpy(a, t[0].data, sizeof a); /* the test host is little-endian */
    assert_true(a[0] == 0.5f && a[1] == 1.5f && a[2] == -4.0f);
    assert_string_equal(t[1].name, "b");
    assert_int_equal(t[1].ndim, 0);
    assert_int_equal(t[1].dtype, ST_WIRE_F16);
    assert_int_equal(t[1].bytes, 2);
    assert_true(st_f16_to_f32((uint16_t)(t[1].data[0] | t[1].data[1] << 8)) ==
                2.0f);
    assert_string_equal(t[2].name, "empty");
    assert_int_equal(t[2].ndim, 2);
    assert_int_equal(t[2].shape[0], 0);
    assert_int_equal(t[2].shape[1], 5);
    assert_int_equal(t[2].bytes, 0);
  }
  st_msg_free(&m);
  free(b);

  b = read_fixture("proto/py_labels.bin", &len);
  decode_ok(b, len, &m);
  assert_int_equal(m.type, ST_MSG_LABELS);
  assert_int_equal(m.u.labels.seq, 11);
  assert_int_equal(m.u.labels.width, 3);
  assert_int_equal(m.u.labels.height, 2);
  {
    const uint8_t want[6] = {0, 1, 2, 20, 255, 7};
    assert_int_equal(m.u.labels.data_len, 6);
    assert_memory_equal(m.u.labels.data, want, 6);
  }
  st_msg_free(&m);
  free(b);

  b = read_fixture("proto/py_error.bin", &len);
  decode_ok(b, len, &m);
  assert_int_equal(m.type, ST_MSG_ERROR);
  assert_string_equal(m.u.error.code, "bad_message");
  assert_string_equal(m.u.error.message,
                      "keyframe: key \xe2\x80\x98seq\xe2\x80\x99 must be an "
                      "unsigned integer \xe2\x9c\x93");
  assert_int_equal(m.u.error.fatal, 1);
  st_msg_free(&m);
  free(b);

  b = read_fixture("proto/py_bye.bin", &len);
  decode_ok(b, len, &m);
  assert_int_equal(m.type, ST_MSG_BYE);
  st_msg_free(&m);
  free(b);

  b = read_fixture("proto/py_pong.bin", &len);
  decode_ok(b, len, &m);
  assert_int_equal(m.type, ST_MSG_PONG);
  assert_int_equal(m.u.ping.t, 0);
  st_msg_free(&m);
  free(b);
}

/* ---- structure: what the walker refuses before msgpack-c runs ------------ */

/* {"type": "ping", "t": 1, "x": <value>} */
static uint8_t *ping_with(const uint8_t *value, size_t n, size_t *len) {
  static const uint8_t prefix[] = {0x83, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'p',
                                   'i',  'n',  'g', 0xa1, 't', 0x01, 0xa1, 'x'};
  *len = sizeof prefix + n;
  uint8_t *b = malloc(*len);
  assert_non_null(b);
  memcpy(b, prefix, sizeof prefix);
  memcpy(b + sizeof prefix, value, n);
  return b;
}

/* Both the walker alone and the decoder refuse with ST_EBADMSG. */
static void expect_structure_refused(const uint8_t *body, size_t len,
                                     const char *needle, const char *what) {
  st_error_clear();
  int rc = st_msg_validate(body, len);
  if (rc != ST_EBADMSG)
    fail_msg("%s: validate gave %s (%s)", what, st_err_name(rc),
             st_error_detail());
  expect_fail(body, len, ST_EBADMSG, needle, what);
}

static void expect_value_refused(const uint8_t *value, size_t n,
                                 const char *needle, const char *what) {
  size_t len;
  uint8_t *b = ping_with(value, n, &len);
  expect_structure_refused(b, len, needle, what);
  free(b);
}

static void expect_value_accepted(const uint8_t *value, size_t n,
                                  const char *what) {
  size_t len;
  uint8_t *b = ping_with(value, n, &len);
  st_msg m;
  int rc = st_msg_decode(b, len, NULL, &m);
  if (rc)
    fail_msg("%s: %s (%s)", what, st_err_name(rc), st_error_detail());
  assert_int_equal(m.type, ST_MSG_PING);
  assert_int_equal(m.u.ping.t, 1);
  st_msg_free(&m);
  free(b);
}

static void test_truncated_every_prefix(void **state) {
  (void)state;
  for (int t = ST_MSG_HELLO; t < ST_MSG_TYPE_COUNT; t++) {
    sample s;
    sample_init(&s, (st_msg_type)t);
    size_t len;
    uint8_t *buf = encode_ok(&s.m, &len);
    for (size_t k = 0; k < len; k++) {
      /* A copy of exactly k bytes, so ASan sees any read past the end. */
      uint8_t *prefix = malloc(k ? k : 1);
      assert_non_null(prefix);
      memcpy(prefix, buf + HDR, k);
      char what[64];
      snprintf(what, sizeof what, "%s cut to %zu of %zu bytes",
               st_msg_type_name((st_msg_type)t), k, len);
      expect_structure_refused(prefix, k, NULL, what);
      free(prefix);
    }
    free(buf);
  }
}

/* msgpack-c issue #1013: `dd ff ff ff ff` makes msgpack-c allocate ~96 GB
 * for the array it announces. The walker refuses it first (were msgpack-c
 * reached, it would fail with ST_ENOMEM, or abort under ASan). */
static void test_huge_counts(void **state) {
  (void)state;
  static const uint8_t issue_1013[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
  expect_structure_refused(issue_1013, sizeof issue_1013, "not a map",
                           "dd ff ff ff ff as the body");
  expect_value_refused(issue_1013, sizeof issue_1013, "exceeds 4096",
                       "dd ff ff ff ff inside the map");
  static const uint8_t map32[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
  expect_value_refused(map32, sizeof map32, "exceeds 4096", "map32 of 2^32-1");
  static const uint8_t map32_top[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0};
  expect_structure_refused(map32_top, sizeof map32_top, "exceeds 4096",
                           "top-level map32 of 2^32-1");
  static const uint8_t str32[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'};
  expect_value_refused(str32, sizeof str32, "exceeds 1024", "str32 of 2^32-1");
  static const uint8_t bin32[] = {0xc6, 0xff, 0xff, 0xff, 0xff, 0x00};
  expect_value_refused(bin32, sizeof bin32, "truncated", "bin32 of 2^32-1");
  static const uint8_t array16[] = {0xdc, 0x0f, 0xff, 0xc0, 0xc0};
  expect_value_refused(array16, sizeof array16, "only 2 bytes follow",
                       "array16 of 4095 with 2 bytes");
  static const uint8_t map16[] = {0xde, 0x00, 0x02, 0xc0, 0xc0, 0xc0};
  expect_value_refused(map16, sizeof map16, "only 3 bytes follow",
                       "map16 of 2 entries with 3 bytes");
  /* Items still owed by the outer array count against the bytes too:
   * [[nil, nil, nil], <missing>] */
  static const uint8_t owed[] = {0x92, 0x93, 0xc0, 0xc0, 0xc0};
  expect_value_refused(owed, sizeof owed, "only 3 bytes follow",
                       "inner array eating the outer's last item");
}

static void test_container_item_limit(void **state) {
  (void)state;
  enum { HEAD = 3 };
  size_t n = ST_PROTO_MAX_CONTAINER_ITEMS;
  uint8_t *v = malloc(HEAD + 2 * (n + 1));
  assert_non_null(v);
  /* array16 of 4096 nils: accepted (and ignored as an unknown key) */
  v[0] = 0xdc;
  v[1] = (uint8_t)(n >> 8);
  v[2] = (uint8_t)n;
  memset(v + HEAD, 0xc0, n);
  expect_value_accepted(v, HEAD + n, "array of 4096 items");
  /* 4097: refused although the bytes are all there */
  v[1] = (uint8_t)((n + 1) >> 8);
  v[2] = (uint8_t)(n + 1);
  memset(v + HEAD, 0xc0, n + 1);
  expect_value_refused(v, HEAD + n + 1, "exceeds 4096", "array of 4097");
  /* map16 of 4097 nil: nil entries */
  v[0] = 0xde;
  memset(v + HEAD, 0xc0, 2 * (n + 1));
  expect_value_refused(v, HEAD + 2 * (n + 1), "exceeds 4096",
                       "map of 4097 entries");
  free(v);
}

/* {"type": "ping", "t": 1, "x": [[nil...], ...]} holding `objects`
 * objects in all (6 for the top level, then the arrays and nils). */
static uint8_t *objects_body(size_t objects, size_t *len) {
  enum { TOP_OBJECTS = 6, PER = ST_PROTO_MAX_CONTAINER_ITEMS };
  size_t left = objects - TOP_OBJECTS - 1; /* - the outer array */
  size_t arrays = (left + PER) / (PER + 1);
  size_t nils = left - arrays;
  uint8_t *v = malloc(3 + arrays * 3 + nils);
  assert_non_null(v);
  size_t n = 0;
  v[n++] = 0xdc; /* array16 of the inner arrays */
  v[n++] = (uint8_t)(arrays >> 8);
  v[n++] = (uint8_t)arrays;
  for (size_t a = 0; a < arrays; a++) {
    size_t k = nils / (arrays - a);
    nils -= k;
    v[n++] = 0xdc;
    v[n++] = (uint8_t)(k >> 8);
    v[n++] = (uint8_t)k;
    memset(v + n, 0xc0, k);
    n += k;
  }
  uint8_t *body = ping_with(v, n, len);
  free(v);
  return body;
}

static void test_object_limit(void **state) {
  (void)state;
  size_t len;
  uint8_t *b = objects_body(ST_PROTO_MAX_OBJECTS, &len);
  st_msg m;
  ST_ASSERT_OK(st_msg_decode(b, len, NULL, &m));
  assert_int_equal(m.u.ping.t, 1);
  st_msg_free(&m);
  free(b);
  b = objects_body(ST_PROTO_MAX_OBJECTS + 1, &len);
  expect_structure_refused(b, len, "more than 65536 objects",
                           "one object too many");
  free(b);
}

static void test_nesting_depth(void **state) {
  (void)state;
  /* The top map is depth 1, so x's value starts at depth 2: k nested
   * arrays reach depth k + 1. */
  uint8_t v[ST_PROTO_MAX_DEPTH + 1];
  size_t k = ST_PROTO_MAX_DEPTH - 1; /* depth 8: the limit */
  memset(v, 0x91, k - 1);
  v[k - 1] = 0x90;
  expect_value_accepted(v, k, "nesting depth 8");
  k++; /* depth 9 */
  memset(v, 0x91, k - 1);
  v[k - 1] = 0x90;
  expect_value_refused(v, k, "nesting deeper than 8", "nesting depth 9");
  /* maps count the same: {"k": {"k": ... {}}} */
  uint8_t m[3 * ST_PROTO_MAX_DEPTH];
  size_t n = 0;
  for (int d = 2; d < ST_PROTO_MAX_DEPTH + 1; d++) {
    m[n++] = 0x81;
    m[n++] = 0xa1;
    m[n++] = 'k';
  }
  m[n++] = 0x80; /* the empty map at depth 9 */
  expect_value_refused(m, n, "nesting deeper than 8", "maps nested to 9");
}

static void test_top_level_and_trailing(void **state) {
  (void)state;
  sample s;
  sample_init(&s, ST_MSG_PING);
  size_t len;
  uint8_t *buf = encode_ok(&s.m, &len);
  /* one extra byte, and a whole second message, after the first */
  uint8_t *two = malloc(2 * len);
  assert_non_null(two);
  memcpy(two, buf + HDR, len);
  two[len] = 0xc0;
  expect_structure_refused(two, len + 1, "1 trailing bytes", "trailing nil");
  memcpy(two + len, buf + HDR, len);
  expect_structure_refused(two, 2 * len, "trailing", "two messages");
  free(two);
  free(buf);

  static const uint8_t array[] = {0x91, 0xa4, 't', 'y', 'p', 'e'};
  expect_structure_refused(array, sizeof array, "not a map", "array top");
  static const uint8_t str[] = {0xa4, 'p', 'i', 'n', 'g'};
  expect_structure_refused(str, sizeof str, "not a map", "string top");
  static const uint8_t nil[] = {0xc0};
  expect_structure_refused(nil, sizeof nil, "not a map", "nil top");
  static const uint8_t empty_map[] = {0x80};
  expect_structure_refused(empty_map, sizeof empty_map, "'type' is missing",
                           "empty map");
  static const uint8_t no_type[] = {0x81, 0xa1, 't', 0x01};
  expect_structure_refused(no_type, sizeof no_type, "'type' is missing",
                           "map without type");
  static const uint8_t int_type[] = {0x81, 0xa4, 't', 'y', 'p', 'e', 0x01};
  expect_structure_refused(int_type, sizeof int_type,
                           "'type' must be a string", "integer type");
  /* A "type" key nested deeper does not count. */
  static const uint8_t nested_type[] = {0x81, 0xa1, 'x',  0x81, 0xa4, 't',
                                        'y',  'p',  'e',  0xa3, 'b',  'y',
                                        'e'};
  expect_structure_refused(nested_type, sizeof nested_type,
                           "'type' is missing", "type only nested");
  static const uint8_t unknown[] = {0x81, 0xa4, 't', 'y', 'p', 'e',
                                    0xa5, 'd',  'a', 'n', 'c', 'e'};
  expect_fail(unknown, sizeof unknown, ST_EBADMSG, "unknown type 'dance'",
              "unknown type");
  static const uint8_t binary_type[] = {0x81, 0xa4, 't', 'y', 'p', 'e',
                                        0xa2, 0x01, 0x02};
  expect_fail(binary_type, sizeof binary_type, ST_EBADMSG,
              "unknown type (2 bytes)", "unprintable type");
}

static void test_ext_and_reserved(void **state) {
  (void)state;
  static const uint8_t fixext1[] = {0xd4, 0x01, 0x00};
  expect_value_refused(fixext1, sizeof fixext1, "ext type", "fixext1");
  uint8_t fixext16[2 + 16] = {0xd8, 0x01};
  expect_value_refused(fixext16, sizeof fixext16, "ext type", "fixext16");
  static const uint8_t ext8[] = {0xc7, 0x01, 0x05, 0x00};
  expect_value_refused(ext8, sizeof ext8, "ext type", "ext8");
  static const uint8_t ext16[] = {0xc8, 0x00, 0x01, 0x05, 0x00};
  expect_value_refused(ext16, sizeof ext16, "ext type", "ext16");
  static const uint8_t ext32[] = {0xc9, 0x00, 0x00, 0x00, 0x01, 0x05, 0x00};
  expect_value_refused(ext32, sizeof ext32, "ext type", "ext32");
  /* msgpack's timestamp is an ext too */
  static const uint8_t timestamp[] = {0xd6, 0xff, 0, 0, 0, 0};
  expect_value_refused(timestamp, sizeof timestamp, "ext type", "timestamp");
  static const uint8_t never_used[] = {0xc1};
  expect_value_refused(never_used, sizeof never_used, "never used", "0xc1");
}

static void test_every_scalar_format_accepted(void **state) {
  (void)state;
  /* [nil, false, true, 5, -3, uint8..64, int8..64, float32, float64,
   *  fixstr, str8, str16, str32, bin8, bin16, bin32, [], {}, array16, map16,
   *  array32, map32]: 28 items, as the value of an unknown key */
  static const uint8_t v[] = {
      0xdc, 0x00, 0x1c, /* array16 of 28 */
      0xc0, 0xc2, 0xc3, 0x05, 0xfd,
      0xcc, 0xff, 0xcd, 0xff, 0xff, 0xce, 0, 0, 0, 1, 0xcf, 0, 0, 0, 0, 0, 0,
      0, 2,
      0xd0, 0x80, 0xd1, 0x80, 0x00, 0xd2, 0x80, 0, 0, 0, 0xd3, 0x80, 0, 0, 0,
      0, 0, 0, 0,
      0xca, 0x3f, 0x80, 0, 0, 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0,
      0xa1, 'a', 0xd9, 0x01, 'b', 0xda, 0x00, 0x01, 'c', 0xdb, 0, 0, 0, 1, 'd',
      0xc4, 0x01, 0x00, 0xc5, 0x00, 0x01, 0x00, 0xc6, 0, 0, 0, 1, 0x00,
      0x90, 0x80, 0xdc, 0x00, 0x01, 0xc0, 0xde, 0x00, 0x01, 0xc0, 0xc0,
      0xdd, 0, 0, 0, 1, 0xc0, 0xdf, 0, 0, 0, 1, 0x01, 0xc0};
  expect_value_accepted(v, sizeof v, "every format");
  /* integer keys are ignored like unknown string keys */
  static const uint8_t int_key[] = {0x81, 0x05, 0x06};
  expect_value_accepted(int_key, sizeof int_key, "integer key");
}

static void test_float_keys_and_long_strings(void **state) {
  (void)state;
  static const uint8_t f64_key[] = {0x81, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,
                                    0x01};
  expect_value_refused(f64_key, sizeof f64_key, "float map key",
                       "float64 key");
  static const uint8_t f32_key[] = {0x81, 0xca, 0x3f, 0xc0, 0, 0, 0x01};
  expect_value_refused(f32_key, sizeof f32_key, "float map key",
                       "float32 key");
  /* a float VALUE is fine */
  static const uint8_t f32_val[] = {0xca, 0x3f, 0xc0, 0, 0};
  expect_value_accepted(f32_val, sizeof f32_val, "float value");

  enum { HEAD = 3 };
  size_t n = ST_PROTO_MAX_STRING_BYTES;
  uint8_t *v = malloc(HEAD + n + 1);
  assert_non_null(v);
  v[0] = 0xda; /* str16 */
  v[1] = (uint8_t)(n >> 8);
  v[2] = (uint8_t)n;
  memset(v + HEAD, 'a', n + 1);
  expect_value_accepted(v, HEAD + n, "string of 1024 bytes");
  v[1] = (uint8_t)((n + 1) >> 8);
  v[2] = (uint8_t)(n + 1);
  expect_value_refused(v, HEAD + n + 1, "exceeds 1024", "string of 1025");
  /* bin has no such limit: 1025 bytes of bin16 are fine */
  v[0] = 0xc5;
  expect_value_accepted(v, HEAD + n + 1, "bin of 1025 bytes");
  free(v);
}

/* ---- schema: wrong types and missing keys --------------------------------- */

typedef enum key_kind { K_UINT, K_INT, K_NUM, K_STR, K_BIN, K_BOOL, K_ARRAY,
                        K_MAP } key_kind;

typedef struct key_case {
  st_msg_type type;
  const char *path;
  key_kind kind;
  bool required;
  const char *needle; /* what the detail must name */
} key_case;

static const key_case key_cases[] = {
    {ST_MSG_HELLO, "proto", K_UINT, true, "'proto'"},
    {ST_MSG_HELLO, "client_id", K_STR, true, "'client_id'"},
    {ST_MSG_HELLO, "token", K_STR, false, "'token'"},
    {ST_MSG_HELLO, "student", K_STR, false, "'student'"},
    {ST_MSG_HELLO, "width", K_UINT, true, "'width'"},
    {ST_MSG_HELLO, "height", K_UINT, true, "'height'"},
    {ST_MSG_HELLO, "encodings", K_ARRAY, true, "'encodings'"},
    {ST_MSG_HELLO, "resume", K_MAP, false, "'resume'"},
    {ST_MSG_HELLO, "resume.session", K_STR, true, "'session'"},
    {ST_MSG_HELLO, "resume.version", K_UINT, true, "'version'"},
    {ST_MSG_KEYFRAME, "seq", K_UINT, true, "'seq'"},
    {ST_MSG_KEYFRAME, "frame_index", K_UINT, true, "'frame_index'"},
    {ST_MSG_KEYFRAME, "encoding", K_STR, true, "'encoding'"},
    {ST_MSG_KEYFRAME, "width", K_UINT, true, "'width'"},
    {ST_MSG_KEYFRAME, "height", K_UINT, true, "'height'"},
    {ST_MSG_KEYFRAME, "data", K_BIN, true, "'data'"},
    {ST_MSG_KEYFRAME, "version", K_UINT, true, "'version'"},
    {ST_MSG_OFFLOAD, "seq", K_UINT, true, "'seq'"},
    {ST_MSG_OFFLOAD, "data", K_BIN, true, "'data'"},
    {ST_MSG_OFFLOAD, "version", K_UINT, true, "'version'"},
    {ST_MSG_PING, "t", K_UINT, true, "'t'"},
    {ST_MSG_PONG, "t", K_UINT, true, "'t'"},
    {ST_MSG_WELCOME, "proto", K_UINT, true, "'proto'"},
    {ST_MSG_WELCOME, "session", K_STR, true, "'session'"},
    {ST_MSG_WELCOME, "version", K_UINT, true, "'version'"},
    {ST_MSG_WELCOME, "threshold", K_NUM, true, "'threshold'"},
    {ST_MSG_WELCOME, "min_stride", K_INT, true, "'min_stride'"},
    {ST_MSG_WELCOME, "max_stride", K_INT, true, "'max_stride'"},
    {ST_MSG_WELCOME, "stride", K_INT, true, "'stride'"},
    {ST_MSG_WELCOME, "trainable", K_ARRAY, true, "'trainable'"},
    {ST_MSG_WELCOME, "update_encoding", K_STR, true, "'update_encoding'"},
    {ST_MSG_MODEL, "version", K_UINT, true, "'version'"},
    {ST_MSG_MODEL, "tensors", K_ARRAY, true, "'tensors'"},
    {ST_MSG_MODEL, "tensors.0", K_MAP, false, "tensors[0]"},
    {ST_MSG_MODEL, "tensors.0.name", K_STR, true, "'name'"},
    {ST_MSG_MODEL, "tensors.0.shape", K_ARRAY, true, "'shape'"},
    {ST_MSG_MODEL, "tensors.0.dtype", K_STR, true, "'dtype'"},
    {ST_MSG_MODEL, "tensors.0.data", K_BIN, true, "'data'"},
    {ST_MSG_UPDATE, "seq", K_UINT, true, "'seq'"},
    {ST_MSG_UPDATE, "version", K_UINT, true, "'version'"},
    {ST_MSG_UPDATE, "base_version", K_UINT, true, "'base_version'"},
    {ST_MSG_UPDATE, "full", K_BOOL, true, "'full'"},
    {ST_MSG_UPDATE, "stride", K_INT, true, "'stride'"},
    {ST_MSG_UPDATE, "metric", K_NUM, true, "'metric'"},
    {ST_MSG_UPDATE, "steps", K_INT, true, "'steps'"},
    {ST_MSG_UPDATE, "encoding", K_STR, true, "'encoding'"},
    {ST_MSG_UPDATE, "tensors", K_ARRAY, true, "'tensors'"},
    {ST_MSG_UPDATE, "tensors.1", K_MAP, false, "tensors[1]"},
    {ST_MSG_UPDATE, "tensors.1.name", K_STR, true, "'name'"},
    {ST_MSG_UPDATE, "tensors.1.shape", K_ARRAY, true, "'shape'"},
    {ST_MSG_UPDATE, "tensors.1.dtype", K_STR, true, "'dtype'"},
    {ST_MSG_UPDATE, "tensors.1.data", K_BIN, true, "'data'"},
    {ST_MSG_UPDATE, "timing", K_MAP, true, "'timing'"},
    {ST_MSG_UPDATE, "timing.queue", K_NUM, true, "'queue'"},
    {ST_MSG_UPDATE, "timing.decode", K_NUM, true, "'decode'"},
    {ST_MSG_UPDATE, "timing.teacher", K_NUM, true, "'teacher'"},
    {ST_MSG_UPDATE, "timing.distill", K_NUM, true, "'distill'"},
    {ST_MSG_UPDATE, "timing.encode", K_NUM, true, "'encode'"},
    {ST_MSG_LABELS, "seq", K_UINT, true, "'seq'"},
    {ST_MSG_LABELS, "width", K_UINT, true, "'width'"},
    {ST_MSG_LABELS, "height", K_UINT, true, "'height'"},
    {ST_MSG_LABELS, "data", K_BIN, true, "'data'"},
    {ST_MSG_ERROR, "code", K_STR, true, "'code'"},
    {ST_MSG_ERROR, "message", K_STR, true, "'message'"},
    {ST_MSG_ERROR, "fatal", K_BOOL, true, "'fatal'"},
};

typedef enum wrong { W_NIL, W_TRUE, W_NEG, W_UINT, W_FLOAT, W_STR, W_BIN,
                     W_ARRAY, W_MAP, W_COUNT } wrong;
static const value_writer wrong_writers[W_COUNT] = {
    put_nil, put_true, put_neg,   put_uint, put_float,
    put_str, put_bin,  put_array, put_map};

/* Whether a value of kind w has the right msgpack type for key kind k. */
static bool type_fits(key_kind k, wrong w) {
  switch (k) {
  case K_UINT:
    return w == W_UINT;
  case K_INT:
    return w == W_UINT || w == W_NEG;
  case K_NUM:
    return w == W_UINT || w == W_NEG || w == W_FLOAT;
  case K_STR:
    return w == W_STR;
  case K_BIN:
    return w == W_BIN;
  case K_BOOL:
    return w == W_TRUE;
  case K_ARRAY:
    return w == W_ARRAY;
  case K_MAP:
    return w == W_MAP;
  }
  return false;
}

static void test_wrong_types(void **state) {
  (void)state;
  size_t checked = 0;
  for (size_t c = 0; c < sizeof key_cases / sizeof key_cases[0]; c++) {
    const key_case *kc = &key_cases[c];
    for (int w = 0; w < W_COUNT; w++) {
      if (type_fits(kc->kind, (wrong)w))
        continue;
      mutation mu = {kc->path, MUT_REPLACE, wrong_writers[w], NULL};
      expect_mutation_fails(kc->type, &mu, ST_EBADMSG, kc->needle);
      checked++;
    }
  }
  assert_true(checked > 400);
}

static void test_missing_keys(void **state) {
  (void)state;
  for (size_t c = 0; c < sizeof key_cases / sizeof key_cases[0]; c++) {
    const key_case *kc = &key_cases[c];
    mutation mu = {kc->path, MUT_OMIT, NULL, NULL};
    if (kc->required) {
      expect_mutation_fails(kc->type, &mu, ST_EBADMSG, kc->needle);
      const char *detail = st_error_detail();
      /* The detail names the message type too. */
      if (strncmp(detail, st_msg_type_name(kc->type),
                  strlen(st_msg_type_name(kc->type))) != 0)
        fail_msg("detail '%s' does not start with the type", detail);
    } else {
      sample s;
      st_msg out;
      uint8_t *body = expect_mutation_decodes(kc->type, &mu, &s, &out);
      st_msg_free(&out);
      free(body);
    }
  }
  /* Optional keys absent: the has_ flags are clear. */
  sample s;
  st_msg out;
  mutation no_resume = {"resume", MUT_OMIT, NULL, NULL};
  uint8_t *body = expect_mutation_decodes(ST_MSG_HELLO, &no_resume, &s, &out);
  assert_false(out.u.hello.has_resume);
  assert_true(out.u.hello.has_token && out.u.hello.has_student);
  st_msg_free(&out);
  free(body);
  mutation no_token = {"token", MUT_OMIT, NULL, NULL};
  body = expect_mutation_decodes(ST_MSG_HELLO, &no_token, &s, &out);
  assert_false(out.u.hello.has_token);
  assert_int_equal(out.u.hello.token[0], '\0');
  st_msg_free(&out);
  free(body);
}

static void test_duplicate_keys(void **state) {
  (void)state;
  const struct {
    st_msg_type type;
    const char *path;
    const char *needle;
  } dups[] = {
      {ST_MSG_KEYFRAME, "seq", "'seq' appears twice"},
      {ST_MSG_PING, "type", "'type' appears twice"},
      {ST_MSG_HELLO, "resume.version", "'version' appears twice"},
      {ST_MSG_UPDATE, "tensors.0.name", "'name' appears twice"},
      {ST_MSG_UPDATE, "timing.queue", "'queue' appears twice"},
      {ST_MSG_ERROR, "fatal", "'fatal' appears twice"},
  };
  for (size_t i = 0; i < sizeof dups / sizeof dups[0]; i++) {
    mutation mu = {dups[i].path, MUT_DUPLICATE, NULL, NULL};
    expect_mutation_fails(dups[i].type, &mu, ST_EBADMSG, dups[i].needle);
  }
}

static void test_unknown_keys_ignored(void **state) {
  (void)state;
  const struct {
    st_msg_type type;
    const char *map;
  } where[] = {
      {ST_MSG_HELLO, ""},        {ST_MSG_HELLO, "resume"},
      {ST_MSG_KEYFRAME, ""},     {ST_MSG_BYE, ""},
      {ST_MSG_UPDATE, ""},       {ST_MSG_UPDATE, "timing"},
      {ST_MSG_UPDATE, "tensors.2"}, {ST_MSG_MODEL, "tensors.0"},
      {ST_MSG_WELCOME, ""},      {ST_MSG_ERROR, ""},
  };
  for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
    mutation mu = {where[i].map, MUT_ADD, put_nested, NULL};
    sample s;
    st_msg out;
    uint8_t *body = expect_mutation_decodes(where[i].type, &mu, &s, &out);
    assert_msg_equal(&s.m, &out);
    st_msg_free(&out);
    free(body);
  }
}

/* ---- schema: values and limits --------------------------------------------- */

static void expect_replace_fails(st_msg_type type, const char *path,
                                 value_writer put, const void *arg, int code,
                                 const char *needle) {
  mutation mu = {path, MUT_REPLACE, put, arg};
  expect_mutation_fails(type, &mu, code, needle);
}

static void expect_replace_ok(st_msg_type type, const char *path,
                              value_writer put, const void *arg) {
  mutation mu = {path, MUT_REPLACE, put, arg};
  sample s;
  st_msg out;
  uint8_t *body = expect_mutation_decodes(type, &mu, &s, &out);
  st_msg_free(&out);
  free(body);
}

static void test_hello_values(void **state) {
  (void)state;
  const uint64_t two = 2, zero = 0;
  expect_replace_fails(ST_MSG_HELLO, "proto", put_u64, &two, ST_EPROTOVER,
                       "proto 2");
  expect_replace_fails(ST_MSG_HELLO, "proto", put_u64, &zero, ST_EPROTOVER,
                       "proto 0");
  const size_t id_max = ST_PROTO_CLIENT_ID_BYTES, id_over = id_max + 1,
               none = 0;
  expect_replace_ok(ST_MSG_HELLO, "client_id", put_str_len, &id_max);
  expect_replace_fails(ST_MSG_HELLO, "client_id", put_str_len, &id_over,
                       ST_EBADMSG, "'client_id' must be 1..64");
  expect_replace_fails(ST_MSG_HELLO, "client_id", put_str_len, &none,
                       ST_EBADMSG, "'client_id' must be 1..64");
  const size_t tok_max = ST_PROTO_TOKEN_BYTES, tok_over = tok_max + 1;
  expect_replace_ok(ST_MSG_HELLO, "token", put_str_len, &tok_max);
  expect_replace_fails(ST_MSG_HELLO, "token", put_str_len, &tok_over,
                       ST_EBADMSG, "'token' must be 0..256");
  /* an embedded NUL would silently shorten the C string */
  expect_replace_fails(ST_MSG_HELLO, "client_id", put_str_nul, NULL,
                       ST_EBADMSG, "'client_id' must not contain NUL");
  /* student: exactly 64 lower-case hex */
  char hex[ST_PROTO_HASH_HEX_BYTES + 2];
  memset(hex, 'a', ST_PROTO_HASH_HEX_BYTES);
  hex[ST_PROTO_HASH_HEX_BYTES] = '\0';
  expect_replace_ok(ST_MSG_HELLO, "student", put_cstr, hex);
  hex[5] = 'A';
  expect_replace_fails(ST_MSG_HELLO, "student", put_cstr, hex, ST_EBADMSG,
                       "'student' must be 64 lower-case hex");
  hex[5] = 'g';
  expect_replace_fails(ST_MSG_HELLO, "student", put_cstr, hex, ST_EBADMSG,
                       "'student'");
  hex[5] = 'a';
  hex[ST_PROTO_HASH_HEX_BYTES - 1] = '\0';
  expect_replace_fails(ST_MSG_HELLO, "student", put_cstr, hex, ST_EBADMSG,
                       "'student'");
  /* sides */
  const uint64_t side_max = ST_PROTO_MAX_SIDE, side_over = side_max + 1,
                 u32_over = (uint64_t)UINT32_MAX + 1;
  expect_replace_ok(ST_MSG_HELLO, "width", put_u64, &side_max);
  expect_replace_fails(ST_MSG_HELLO, "width", put_u64, &side_over, ST_EBADMSG,
                       "'width' must be 1..8192");
  expect_replace_fails(ST_MSG_HELLO, "height", put_u64, &zero, ST_EBADMSG,
                       "'height' must be 1..8192");
  expect_replace_fails(ST_MSG_HELLO, "height", put_u64, &u32_over, ST_EBADMSG,
                       "'height'");
  /* encodings: unknown names skipped, but one known one must remain */
  static const char *const h264_raw[] = {"h264", "raw", NULL};
  static const char *const h264[] = {"h264", NULL};
  static const char *const nothing[] = {NULL};
  mutation mu = {"encodings", MUT_REPLACE, put_strs, h264_raw};
  sample s;
  st_msg out;
  uint8_t *body = expect_mutation_decodes(ST_MSG_HELLO, &mu, &s, &out);
  assert_int_equal(out.u.hello.encodings, 1u << ST_FRAME_RAW);
  st_msg_free(&out);
  free(body);
  expect_replace_fails(ST_MSG_HELLO, "encodings", put_strs, h264, ST_EBADMSG,
                       "'encodings' must name at least one");
  expect_replace_fails(ST_MSG_HELLO, "encodings", put_strs, nothing,
                       ST_EBADMSG, "'encodings' must name at least one");
  expect_replace_fails(ST_MSG_HELLO, "encodings", put_mixed_array, NULL,
                       ST_EBADMSG, "'encodings' must hold only strings");
  /* resume.session limits */
  const size_t sess_over = ST_PROTO_SESSION_BYTES + 1;
  expect_replace_fails(ST_MSG_HELLO, "resume.session", put_str_len,
                       &sess_over, ST_EBADMSG, "'session' must be 1..64");
  /* a negative integer is never an unsigned one */
  const int64_t minus = -5;
  expect_replace_fails(ST_MSG_HELLO, "resume.version", put_i64, &minus,
                       ST_EBADMSG, "'version' must be an unsigned integer");
}

static void test_frame_values(void **state) {
  (void)state;
  /* the sample keyframe is raw 4x2: 24 bytes */
  const size_t raw = RAW_BYTES, over = RAW_BYTES + 1, under = RAW_BYTES - 1,
               none = 0;
  expect_replace_ok(ST_MSG_KEYFRAME, "data", put_bin_len, &raw);
  expect_replace_fails(ST_MSG_KEYFRAME, "data", put_bin_len, &over,
                       ST_EBADMSG, "exactly width*height*3 = 24 bytes");
  expect_replace_fails(ST_MSG_KEYFRAME, "data", put_bin_len, &under,
                       ST_EBADMSG, "(got 23)");
  /* the sample offload is jpeg: 1..24 bytes */
  expect_replace_ok(ST_MSG_OFFLOAD, "data", put_bin_len, &raw);
  expect_replace_fails(ST_MSG_OFFLOAD, "data", put_bin_len, &over,
                       ST_EBADMSG, "1..width*height*3 = 24 bytes");
  expect_replace_fails(ST_MSG_OFFLOAD, "data", put_bin_len, &none,
                       ST_EBADMSG, "(got 0)");
  /* shrinking a side makes the same data too large */
  const uint64_t one = 1, zero = 0, side_over = ST_PROTO_MAX_SIDE + 1;
  expect_replace_fails(ST_MSG_KEYFRAME, "height", put_u64, &one, ST_EBADMSG,
                       "= 12 bytes");
  expect_replace_fails(ST_MSG_KEYFRAME, "width", put_u64, &zero, ST_EBADMSG,
                       "'width' must be 1..8192");
  expect_replace_fails(ST_MSG_OFFLOAD, "width", put_u64, &side_over,
                       ST_EBADMSG, "'width' must be 1..8192");
  expect_replace_fails(ST_MSG_KEYFRAME, "encoding", put_cstr, "png",
                       ST_EBADMSG, "'encoding' must be \"jpeg\" or \"raw\"");
  /* a str is not a bin */
  expect_replace_fails(ST_MSG_KEYFRAME, "data", put_cstr, "abc", ST_EBADMSG,
                       "'data' must be binary");
  /* labels: exactly w*h = 15 */
  const size_t lab = LABELS_W * LABELS_H, lab_over = lab + 1;
  expect_replace_ok(ST_MSG_LABELS, "data", put_bin_len, &lab);
  expect_replace_fails(ST_MSG_LABELS, "data", put_bin_len, &lab_over,
                       ST_EBADMSG, "width*height = 15 bytes");
}

static void test_welcome_error_values(void **state) {
  (void)state;
  const uint64_t two = 2;
  expect_replace_fails(ST_MSG_WELCOME, "proto", put_u64, &two, ST_EPROTOVER,
                       "proto 2");
  const int64_t seven = 7, sixty_five = 65, zero = 0;
  expect_replace_fails(ST_MSG_WELCOME, "stride", put_i64, &seven, ST_EBADMSG,
                       "'stride' must be min_stride..max_stride");
  expect_replace_fails(ST_MSG_WELCOME, "stride", put_i64, &sixty_five,
                       ST_EBADMSG, "'stride'");
  expect_replace_fails(ST_MSG_WELCOME, "min_stride", put_i64, &zero,
                       ST_EBADMSG, "min_stride");
  const uint64_t too_big = (uint64_t)INT32_MAX + 1;
  expect_replace_fails(ST_MSG_WELCOME, "max_stride", put_u64, &too_big,
                       ST_EBADMSG, "'max_stride' must be a 32-bit integer");
  /* an integer threshold is a number */
  const uint64_t one = 1;
  mutation mu = {"threshold", MUT_REPLACE, put_u64, &one};
  sample s;
  st_msg out;
  uint8_t *body = expect_mutation_decodes(ST_MSG_WELCOME, &mu, &s, &out);
  assert_true(out.u.welcome.threshold == 1.0);
  st_msg_free(&out);
  free(body);
  const double nan = NAN;
  expect_replace_fails(ST_MSG_WELCOME, "threshold", put_f64, &nan, ST_EBADMSG,
                       "'threshold' must be a finite number");
  static const char *const bad_names[] = {"ok", "", NULL};
  expect_replace_fails(ST_MSG_WELCOME, "trainable", put_strs, bad_names,
                       ST_EBADMSG, "'trainable' must be 1..128");
  expect_replace_fails(ST_MSG_WELCOME, "update_encoding", put_cstr, "f8",
                       ST_EBADMSG, "'update_encoding' must be");
  /* error */
  const size_t code_over = ST_PROTO_ERROR_CODE_BYTES + 1,
               msg_max = ST_PROTO_ERROR_MESSAGE_BYTES;
  expect_replace_fails(ST_MSG_ERROR, "code", put_str_len, &code_over,
                       ST_EBADMSG, "'code' must be 1..32");
  expect_replace_ok(ST_MSG_ERROR, "message", put_str_len, &msg_max);
  expect_replace_fails(ST_MSG_ERROR, "fatal", put_u64, &one, ST_EBADMSG,
                       "'fatal' must be a boolean");
}

/* 513 minimal tensors ({"name": "t", "shape": [0], ...}) as `tensors`. */
static void put_many_tensors(msgpack_packer *pk, const void *a) {
  size_t n = *(const size_t *)a;
  msgpack_pack_array(pk, n);
  for (size_t i = 0; i < n; i++) {
    msgpack_pack_map(pk, 4);
    msgpack_pack_str_with_body(pk, "name", 4);
    msgpack_pack_str_with_body(pk, "t", 1);
    msgpack_pack_str_with_body(pk, "shape", 5);
    msgpack_pack_array(pk, 1);
    msgpack_pack_uint64(pk, 0);
    msgpack_pack_str_with_body(pk, "dtype", 5);
    msgpack_pack_str_with_body(pk, "f16", 3);
    msgpack_pack_str_with_body(pk, "data", 4);
    msgpack_pack_bin(pk, 0);
  }
}

static void put_many_names(msgpack_packer *pk, const void *a) {
  size_t n = *(const size_t *)a;
  msgpack_pack_array(pk, n);
  for (size_t i = 0; i < n; i++)
    msgpack_pack_str_with_body(pk, "w", 1);
}

static void test_tensor_values(void **state) {
  (void)state;
  /* update sample tensor 0: f16 [2, 3] = 12 bytes */
  const size_t twelve = 12, fourteen = 14;
  expect_replace_ok(ST_MSG_UPDATE, "tensors.0.data", put_bin_len, &twelve);
  expect_replace_fails(ST_MSG_UPDATE, "tensors.0.data", put_bin_len,
                       &fourteen, ST_EBADMSG,
                       "tensors[0]: key 'data' holds 14 bytes, shape and "
                       "dtype need 12");
  /* an f32 tensor in an f16 update */
  expect_replace_fails(ST_MSG_UPDATE, "tensors.0.dtype", put_cstr, "f32",
                       ST_EBADMSG, "must be \"f16\" for this update");
  expect_replace_fails(ST_MSG_UPDATE, "tensors.0.dtype", put_cstr, "bf16",
                       ST_EBADMSG, "'dtype' must be \"f32\" or \"f16\"");
  /* model sample tensor 0: f32 [2, 3] = 24 bytes; other shapes */
  struct u64s six = {1, {6}}, nine_dims = {9, {1, 1, 1, 1, 1, 1, 1, 1, 6}},
              eight_dims = {8, {1, 1, 1, 1, 1, 1, 1, 6}},
              overflow_numel = {3, {1ull << 32, 1ull << 32, 1ull << 32}},
              overflow_bytes = {2, {1ull << 61, 2}},
              too_wide = {1, {(uint64_t)INT64_MAX + 1}},
              empty_huge = {3, {(uint64_t)INT64_MAX, 0, 5}};
  expect_replace_ok(ST_MSG_MODEL, "tensors.0.shape", put_u64s, &six);
  expect_replace_ok(ST_MSG_MODEL, "tensors.0.shape", put_u64s, &eight_dims);
  expect_replace_fails(ST_MSG_MODEL, "tensors.0.shape", put_u64s, &nine_dims,
                       ST_EBADMSG, "at most 8 dimensions");
  expect_replace_fails(ST_MSG_MODEL, "tensors.0.shape", put_u64s,
                       &overflow_numel, ST_EBADMSG,
                       "'shape' overflows the element count");
  expect_replace_fails(ST_MSG_MODEL, "tensors.0.shape", put_u64s,
                       &overflow_bytes, ST_EBADMSG,
                       "'shape' overflows the element count");
  expect_replace_fails(ST_MSG_MODEL, "tensors.0.shape", put_u64s, &too_wide,
                       ST_EBADMSG, "'shape' must be at most");
  /* an empty extent makes the tensor empty whatever the others are */
  const size_t none = 0;
  mutation shape = {"tensors.2.shape", MUT_REPLACE, put_u64s, &empty_huge};
  sample s;
  st_msg out;
  uint8_t *body = expect_mutation_decodes(ST_MSG_MODEL, &shape, &s, &out);
  assert_int_equal(out.u.model.tensors[2].shape[0], INT64_MAX);
  assert_int_equal(out.u.model.tensors[2].bytes, 0);
  st_msg_free(&out);
  free(body);
  expect_replace_fails(ST_MSG_MODEL, "tensors.2.data", put_bin_len, &twelve,
                       ST_EBADMSG, "holds 12 bytes, shape and dtype need 0");
  expect_replace_ok(ST_MSG_MODEL, "tensors.2.data", put_bin_len, &none);
  /* name limits */
  const size_t name_max = ST_PROTO_TENSOR_NAME_BYTES, name_over = name_max + 1;
  expect_replace_ok(ST_MSG_MODEL, "tensors.1.name", put_str_len, &name_max);
  expect_replace_fails(ST_MSG_MODEL, "tensors.1.name", put_str_len,
                       &name_over, ST_EBADMSG, "'name' must be 1..128");
  /* tensor and name counts */
  const size_t max_tensors = ST_PROTO_MAX_TENSORS,
               over_tensors = max_tensors + 1;
  expect_replace_ok(ST_MSG_UPDATE, "tensors", put_many_tensors, &max_tensors);
  expect_replace_fails(ST_MSG_UPDATE, "tensors", put_many_tensors,
                       &over_tensors, ST_EBADMSG, "more than 512 tensors");
  expect_replace_fails(ST_MSG_WELCOME, "trainable", put_many_names,
                       &over_tensors, ST_EBADMSG, "more than 512 names");
  /* update metric/timing accept any number, refuse non-finite */
  const double inf = INFINITY;
  expect_replace_fails(ST_MSG_UPDATE, "metric", put_f64, &inf, ST_EBADMSG,
                       "'metric' must be a finite number");
  expect_replace_fails(ST_MSG_UPDATE, "timing.encode", put_f64, &inf,
                       ST_EBADMSG, "'encode' must be a finite number");
  const int64_t minus_two = -2;
  expect_replace_ok(ST_MSG_UPDATE, "timing.queue", put_i64, &minus_two);
  expect_replace_fails(ST_MSG_UPDATE, "stride", put_i64, &minus_two,
                       ST_EBADMSG, "'stride' must be at least 1");
  expect_replace_fails(ST_MSG_UPDATE, "steps", put_i64, &minus_two,
                       ST_EBADMSG, "'steps' must not be negative");
  expect_replace_fails(ST_MSG_UPDATE, "encoding", put_cstr, "f16-Delta",
                       ST_EBADMSG, "'encoding' must be");
  /* a full update never carries a delta */
  sample fs;
  sample_init(&fs, ST_MSG_UPDATE);
  fs.m.u.update.encoding = ST_UPDATE_F16_DELTA;
  mutation full = {"full", MUT_REPLACE, put_true, NULL};
  size_t flen;
  uint8_t *fb = mutated(&fs.m, &full, &flen);
  expect_fail(fb, flen, ST_EBADMSG, "'full' needs encoding", "full delta");
  free(fb);
}

/* ---- encoder: the same rules on the caller's struct -------------------- */

static void expect_encode_fails(const st_msg *m, int code, const char *needle,
                                const char *what) {
  uint8_t *buf = (uint8_t *)&buf; /* must be reset to NULL */
  size_t len = 99;
  int rc = st_msg_encode(m, &buf, &len);
  if (rc != code)
    fail_msg("%s: got %s (%s), want %s", what, st_err_name(rc),
             st_error_detail(), st_err_name(code));
  assert_null(buf);
  assert_int_equal(len, 0);
  if (needle && !strstr(st_error_detail(), needle))
    fail_msg("%s: detail '%s' does not name '%s'", what, st_error_detail(),
             needle);
}

static void test_encode_refuses(void **state) {
  (void)state;
  sample s;
  sample_init(&s, ST_MSG_PING);
  s.m.type = ST_MSG_NONE;
  expect_encode_fails(&s.m, ST_EINVAL, "not a protocol message", "NONE");
  s.m.type = ST_MSG_TYPE_COUNT;
  expect_encode_fails(&s.m, ST_EINVAL, NULL, "COUNT");

  sample_init(&s, ST_MSG_HELLO);
  s.m.u.hello.proto = 2;
  expect_encode_fails(&s.m, ST_EPROTOVER, "proto 2", "hello proto 2");
  sample_init(&s, ST_MSG_HELLO);
  s.m.u.hello.client_id[0] = '\0';
  expect_encode_fails(&s.m, ST_EINVAL, "'client_id'", "empty client_id");
  sample_init(&s, ST_MSG_HELLO);
  memset(s.m.u.hello.client_id, 'x', sizeof s.m.u.hello.client_id);
  expect_encode_fails(&s.m, ST_EINVAL, "'client_id'", "unterminated id");
  sample_init(&s, ST_MSG_HELLO);
  s.m.u.hello.encodings = 0;
  expect_encode_fails(&s.m, ST_EINVAL, "'encodings'", "no encodings");
  s.m.u.hello.encodings = 1u << 5;
  expect_encode_fails(&s.m, ST_EINVAL, "unknown bits", "unknown bit");
  sample_init(&s, ST_MSG_HELLO);
  s.m.u.hello.student[0] = 'Z';
  expect_encode_fails(&s.m, ST_EINVAL, "'student'", "bad student");
  sample_init(&s, ST_MSG_HELLO);
  s.m.u.hello.width = ST_PROTO_MAX_SIDE + 1;
  expect_encode_fails(&s.m, ST_EINVAL, "'width'", "wide hello");

  sample_init(&s, ST_MSG_KEYFRAME);
  s.m.u.frame.data_len--;
  expect_encode_fails(&s.m, ST_EINVAL, "'data'", "short raw");
  sample_init(&s, ST_MSG_KEYFRAME);
  s.m.u.frame.data = NULL;
  expect_encode_fails(&s.m, ST_EINVAL, "NULL", "NULL frame");
  sample_init(&s, ST_MSG_OFFLOAD);
  s.m.u.frame.encoding = ST_FRAME_ENCODING_COUNT;
  expect_encode_fails(&s.m, ST_EINVAL, "'encoding'", "bad frame encoding");

  sample_init(&s, ST_MSG_MODEL);
  s.tensors[0].bytes += 4;
  expect_encode_fails(&s.m, ST_EINVAL, "tensors[0]", "tensor bytes");
  sample_init(&s, ST_MSG_MODEL);
  memset(s.tensors[1].name, 'n', sizeof s.tensors[1].name);
  expect_encode_fails(&s.m, ST_EINVAL, "'name'", "unterminated name");
  sample_init(&s, ST_MSG_MODEL);
  s.tensors[0].shape[1] = -3;
  expect_encode_fails(&s.m, ST_EINVAL, "negative extent", "negative extent");
  sample_init(&s, ST_MSG_MODEL);
  s.tensors[0].ndim = ST_PROTO_MAX_NDIM + 1;
  expect_encode_fails(&s.m, ST_EINVAL, "dimensions", "ndim 9");

  sample_init(&s, ST_MSG_UPDATE);
  s.m.u.update.encoding = ST_UPDATE_F32;
  expect_encode_fails(&s.m, ST_EINVAL, "must be \"f32\"", "dtype mismatch");
  sample_init(&s, ST_MSG_UPDATE);
  s.m.u.update.full = 1;
  s.m.u.update.encoding = ST_UPDATE_F16_DELTA;
  expect_encode_fails(&s.m, ST_EINVAL, "'full'", "full delta");
  sample_init(&s, ST_MSG_UPDATE);
  s.m.u.update.timing.distill_ms = NAN;
  expect_encode_fails(&s.m, ST_EINVAL, "'distill'", "NaN timing");

  sample_init(&s, ST_MSG_WELCOME);
  s.m.u.welcome.stride = 100;
  expect_encode_fails(&s.m, ST_EINVAL, "'stride'", "stride out of range");
  sample_init(&s, ST_MSG_WELCOME);
  s.m.u.welcome.trainable_count = ST_PROTO_MAX_TENSORS + 1;
  expect_encode_fails(&s.m, ST_EINVAL, "more than 512", "many trainable");

  sample_init(&s, ST_MSG_LABELS);
  s.m.u.labels.height = 2;
  expect_encode_fails(&s.m, ST_EINVAL, "= 10 bytes", "labels size");
  sample_init(&s, ST_MSG_ERROR);
  s.m.u.error.code[0] = '\0';
  expect_encode_fails(&s.m, ST_EINVAL, "'code'", "empty code");

  assert_int_equal(st_msg_encode(NULL, (uint8_t **)&s, (size_t *)&s),
                   ST_EINVAL);
}

/* error.message is cut to 1024 bytes without splitting a UTF-8 sequence. */
static void test_error_message_truncation(void **state) {
  (void)state;
  enum { MAX = ST_PROTO_ERROR_MESSAGE_BYTES };
  sample s;
  sample_init(&s, ST_MSG_ERROR);
  char *msg = s.m.u.error.message;
  /* no NUL at all: 1025 bytes of 'a'..., cut at 1024 */
  memset(msg, 'a', MAX + 1);
  size_t len;
  uint8_t *buf = encode_ok(&s.m, &len);
  st_msg out;
  decode_ok(buf + HDR, len, &out);
  assert_int_equal(strlen(out.u.error.message), MAX);
  st_msg_free(&out);
  free(buf);
  /* "é" (c3 a9) straddles the cut: the whole character goes */
  memset(msg, 'a', MAX - 1);
  msg[MAX - 1] = (char)0xc3;
  msg[MAX] = (char)0xa9;
  buf = encode_ok(&s.m, &len);
  decode_ok(buf + HDR, len, &out);
  assert_int_equal(strlen(out.u.error.message), MAX - 1);
  assert_int_equal(out.u.error.message[MAX - 2], 'a');
  st_msg_free(&out);
  free(buf);
  /* "✓" (e2 9c 93) ending exactly at the cut stays whole */
  memset(msg, 'a', MAX - 3);
  memcpy(msg + MAX - 3, "\xe2\x9c\x93", 3);
  msg[MAX] = 'z';
  buf = encode_ok(&s.m, &len);
  decode_ok(buf + HDR, len, &out);
  assert_int_equal(strlen(out.u.error.message), MAX);
  assert_memory_equal(out.u.error.message + MAX - 3, "\xe2\x9c\x93", 3);
  st_msg_free(&out);
  free(buf);
}

/* ---- codecs --------------------------------------------------------------- */

static uint16_t le16(const uint8_t *p) {
  return (uint16_t)(p[0] | p[1] << 8);
}

static void test_codec_sizes(void **state) {
  (void)state;
  assert_int_equal(st_codec_dtype(ST_UPDATE_F32), ST_WIRE_F32);
  assert_int_equal(st_codec_dtype(ST_UPDATE_F16), ST_WIRE_F16);
  assert_int_equal(st_codec_dtype(ST_UPDATE_F16_DELTA), ST_WIRE_F16);
  assert_int_equal(st_codec_bytes(ST_UPDATE_F32, 10), 40);
  assert_int_equal(st_codec_bytes(ST_UPDATE_F16, 10), 20);
  assert_int_equal(st_codec_bytes(ST_UPDATE_F16_DELTA, 10), 20);
  assert_int_equal(st_codec_bytes(ST_UPDATE_F32, 0), 0);
  assert_int_equal(st_codec_bytes(ST_UPDATE_F32, SIZE_MAX / 2), 0);
  assert_int_equal(st_codec_bytes(ST_UPDATE_ENCODING_COUNT, 10), 0);
}

static void test_codec_f32_exact(void **state) {
  (void)state;
  enum { N = 6 };
  const float value[N] = {1.0f, -0.0f, 3.4028235e38f, 1e-45f, -2.5f,
                          0.1f};
  float mirror[N] = {0}, client[N] = {7, 7, 7, 7, 7, 7};
  uint8_t out[N * 4];
  ST_ASSERT_OK(st_codec_encode(ST_UPDATE_F32, N, value, mirror, out));
  /* 1.0f = 0x3f800000, little-endian */
  const uint8_t one[4] = {0x00, 0x00, 0x80, 0x3f};
  assert_memory_equal(out, one, 4);
  const uint8_t neg_zero[4] = {0x00, 0x00, 0x00, 0x80};
  assert_memory_equal(out + 4, neg_zero, 4);
  assert_memory_equal(mirror, value, sizeof value); /* bit for bit */
  ST_ASSERT_OK(st_codec_apply(ST_UPDATE_F32, ST_WIRE_F32, out, sizeof out, N,
                              client));
  assert_memory_equal(client, value, sizeof value);
}

static void test_codec_f16_rounding(void **state) {
  (void)state;
  enum { N = 10 };
  const float value[N] = {
      1.0f,
      0.1f,
      1.0f + 0x1p-11f,     /* halfway 1 and 1+2^-10: to even, 1 */
      1.0f + 3 * 0x1p-11f, /* halfway 1+2^-10, 1+2^-9: to even */
      65504.0f,
      65519.0f,            /* below the rounding point: 65504 */
      70000.0f,            /* clamped */
      -1e30f,              /* clamped */
      0x1p-24f,            /* the smallest subnormal */
      -0.0f,
  };
  const uint16_t want[N] = {0x3c00, 0x2e66, 0x3c00, 0x3c02, 0x7bff,
                            0x7bff, 0x7bff, 0xfbff, 0x0001, 0x8000};
  float mirror[N] = {0};
  uint8_t out[N * 2];
  ST_ASSERT_OK(st_codec_encode(ST_UPDATE_F16, N, value, mirror, out));
  for (int i = 0; i < N; i++) {
    if (le16(out + 2 * i) != want[i])
      fail_msg("f16 of %g: got 0x%04x, want 0x%04x", (double)value[i],
               le16(out + 2 * i), want[i]);
    /* the mirror holds exactly what the client will */
    float back = st_f16_to_f32(want[i]);
    assert_memory_equal(&mirror[i], &back, sizeof back);
  }
  assert_true(mirror[1] == 0.0999755859375f);
  assert_true(mirror[6] == 65504.0f && mirror[7] == -65504.0f);
}

static void test_codec_f16_delta_mirror(void **state) {
  (void)state;
  enum { N = 64, ROUNDS = 20, BIG = 3, JUMP_ROUND = 5 };
  const float jump = 100000.0f;
  float value[N], mirror[N], client[N], step[N];
  st_test_fill_uniform(value, N, 11, -1.0f, 1.0f);
  memcpy(mirror, value, sizeof value);
  memcpy(client, value, sizeof value);
  uint8_t payload[N * 2];
  float err_after_jump = 0, err_after_next = 0;
  for (int r = 0; r < ROUNDS; r++) {
    /* what training changed this round */
    st_test_fill_uniform(step, N, 100 + (uint64_t)r, -0.05f, 0.05f);
    for (int i = 0; i < N; i++)
      value[i] += step[i];
    if (r == JUMP_ROUND)
      value[BIG] += jump;
    ST_ASSERT_OK(
        st_codec_encode(ST_UPDATE_F16_DELTA, N, value, mirror, payload));
    /* the client applies the same payload on its own copy */
    ST_ASSERT_OK(st_codec_apply(ST_UPDATE_F16_DELTA, ST_WIRE_F16, payload,
                                sizeof payload, N, client));
    if (memcmp(mirror, client, sizeof mirror) != 0)
      fail_msg("round %d: the mirror and the client differ", r);
    if (r == JUMP_ROUND) {
      /* the delta of 1e5 was clamped to the f16 maximum */
      assert_int_equal(le16(payload + 2 * BIG), 0x7bff);
      err_after_jump = fabsf(value[BIG] - mirror[BIG]);
    }
    if (r == JUMP_ROUND + 1)
      err_after_next = fabsf(value[BIG] - mirror[BIG]);
  }
  /* the clamped remainder (~34496) arrived one round later, to within f16
   * precision there (spacing 32) */
  assert_true(err_after_jump > 30000.0f);
  assert_true(err_after_next <= 16.0f);
  /* rounding left by one round is carried into the next: after 20 rounds
   * the client is within a small fraction of the last step's f16 spacing */
  for (int i = 0; i < N; i++) {
    float tol = i == BIG ? 0.01f : 2e-4f;
    if (!(fabsf(value[i] - client[i]) <= tol))
      fail_msg("element %d: value %g, client %g", i, (double)value[i],
               (double)client[i]);
  }
}

/* The carried residual: the second delta of an unchanged value shrinks the
 * error by about three orders of magnitude. */
static void test_codec_delta_carries_residual(void **state) {
  (void)state;
  const float value = 1000.3f;
  float mirror = 0.0f;
  uint8_t p[2];
  ST_ASSERT_OK(st_codec_encode(ST_UPDATE_F16_DELTA, 1, &value, &mirror, p));
  assert_true(mirror == 1000.5f); /* f16 spacing at 1000 is 0.5 */
  ST_ASSERT_OK(st_codec_encode(ST_UPDATE_F16_DELTA, 1, &value, &mirror, p));
  assert_true(fabsf(mirror - value) < 1e-4f);
}

static void test_codec_refuses(void **state) {
  (void)state;
  enum { N = 3 };
  float value[N] = {1, 2, NAN}, mirror[N] = {5, 6, 7};
  const float mirror0[N] = {5, 6, 7};
  uint8_t out[N * 4];
  assert_int_equal(st_codec_encode(ST_UPDATE_F16, N, value, mirror, out),
                   ST_ERANGE);
  assert_memory_equal(mirror, mirror0, sizeof mirror);
  value[2] = INFINITY;
  assert_int_equal(st_codec_encode(ST_UPDATE_F32, N, value, mirror, out),
                   ST_ERANGE);
  value[2] = 3;
  mirror[1] = NAN;
  assert_int_equal(
      st_codec_encode(ST_UPDATE_F16_DELTA, N, value, mirror, out), ST_ERANGE);
  mirror[1] = 6;

  /* a payload that would make the LAST weight non-finite changes none */
  float w[N] = {1, 2, 3};
  const float w0[N] = {1, 2, 3};
  uint8_t f32[N * 4] = {0};
  const uint8_t inf32[4] = {0x00, 0x00, 0x80, 0x7f};
  memcpy(f32 + 8, inf32, 4);
  assert_int_equal(
      st_codec_apply(ST_UPDATE_F32, ST_WIRE_F32, f32, sizeof f32, N, w),
      ST_EBADMSG);
  assert_memory_equal(w, w0, sizeof w);
  uint8_t f16[N * 2] = {0x00, 0x3c, 0x00, 0x3c, 0x00, 0x7c}; /* 1, 1, inf */
  assert_int_equal(
      st_codec_apply(ST_UPDATE_F16, ST_WIRE_F16, f16, sizeof f16, N, w),
      ST_EBADMSG);
  assert_int_equal(st_codec_apply(ST_UPDATE_F16_DELTA, ST_WIRE_F16, f16,
                                  sizeof f16, N, w),
                   ST_EBADMSG);
  f16[5] = 0x7e; /* NaN */
  assert_int_equal(st_codec_apply(ST_UPDATE_F16_DELTA, ST_WIRE_F16, f16,
                                  sizeof f16, N, w),
                   ST_EBADMSG);
  assert_memory_equal(w, w0, sizeof w);
  /* a finite delta on a huge weight: FLT_MAX + 65504 rounds back to
   * FLT_MAX (no infinity appears), so it is applied */
  float big = FLT_MAX;
  const uint8_t max16[2] = {0xff, 0x7b};
  ST_ASSERT_OK(st_codec_apply(ST_UPDATE_F16_DELTA, ST_WIRE_F16, max16, 2, 1,
                              &big));
  assert_true(big == FLT_MAX);
  /* dtype and byte count must agree with the encoding */
  assert_int_equal(st_codec_apply(ST_UPDATE_F16, ST_WIRE_F32, f16, sizeof f16,
                                  N, w),
                   ST_EBADMSG);
  assert_int_equal(st_codec_apply(ST_UPDATE_F32, ST_WIRE_F32, f32,
                                  sizeof f32 - 4, N, w),
                   ST_EBADMSG);
  assert_int_equal(st_codec_apply(ST_UPDATE_F16, ST_WIRE_F16, f16,
                                  sizeof f16 + 2, N, w),
                   ST_EBADMSG);
  assert_memory_equal(w, w0, sizeof w);
}

/* Server to client through the wire: an f16-delta update of two tensors,
 * encoded against the mirror, decoded, applied to the client's copy. */
static void test_update_through_the_wire(void **state) {
  (void)state;
  enum { NA = 12, NB = 5 };
  float trained_a[NA], trained_b[NB], mirror_a[NA], mirror_b[NB], client_a[NA],
      client_b[NB];
  st_test_fill_uniform(mirror_a, NA, 1, -1, 1);
  st_test_fill_uniform(mirror_b, NB, 2, -1, 1);
  memcpy(client_a, mirror_a, sizeof client_a);
  memcpy(client_b, mirror_b, sizeof client_b);
  st_test_fill_uniform(trained_a, NA, 3, -1, 1);
  st_test_fill_uniform(trained_b, NB, 4, -1, 1);
  uint8_t pa[NA * 2], pb[NB * 2];
  ST_ASSERT_OK(
      st_codec_encode(ST_UPDATE_F16_DELTA, NA, trained_a, mirror_a, pa));
  ST_ASSERT_OK(
      st_codec_encode(ST_UPDATE_F16_DELTA, NB, trained_b, mirror_b, pb));
  st_wire_tensor t[2] = {0};
  strcpy(t[0].name, "a");
  t[0].ndim = 2;
  t[0].shape[0] = 3;
  t[0].shape[1] = 4;
  t[0].dtype = st_codec_dtype(ST_UPDATE_F16_DELTA);
  t[0].data = pa;
  t[0].bytes = sizeof pa;
  strcpy(t[1].name, "b");
  t[1].ndim = 1;
  t[1].shape[0] = NB;
  t[1].dtype = ST_WIRE_F16;
  t[1].data = pb;
  t[1].bytes = sizeof pb;
  st_msg m = {.type = ST_MSG_UPDATE};
  m.u.update = (st_msg_update){.seq = 1, .version = 2, .base_version = 1,
                               .stride = 8, .metric = 0.5, .steps = 1,
                               .encoding = ST_UPDATE_F16_DELTA,
                               .tensor_count = 2, .tensors = t};
  size_t len;
  uint8_t *buf = encode_ok(&m, &len);
  st_msg got;
  decode_ok(buf + HDR, len, &got);
  float *client[2] = {client_a, client_b};
  const size_t numel[2] = {NA, NB};
  for (int i = 0; i < 2; i++) {
    const st_wire_tensor *w = &got.u.update.tensors[i];
    ST_ASSERT_OK(st_codec_apply(got.u.update.encoding, w->dtype, w->data,
                                w->bytes, numel[i], client[i]));
  }
  assert_memory_equal(client_a, mirror_a, sizeof mirror_a);
  assert_memory_equal(client_b, mirror_b, sizeof mirror_b);
  st_test_assert_close(client_a, trained_a, NA, 1e-3, 1e-3, "a vs trained");
  st_msg_free(&got);
  free(buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_frame_header),
      cmocka_unit_test(test_body_over_limit),
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_round_trip_every_type),
      cmocka_unit_test(test_round_trip_variants),
      cmocka_unit_test(test_ping_bytes),
      cmocka_unit_test(test_golden_canonical_bytes),
      cmocka_unit_test(test_golden_python_forms),
      cmocka_unit_test(test_truncated_every_prefix),
      cmocka_unit_test(test_huge_counts),
      cmocka_unit_test(test_container_item_limit),
      cmocka_unit_test(test_object_limit),
      cmocka_unit_test(test_nesting_depth),
      cmocka_unit_test(test_top_level_and_trailing),
      cmocka_unit_test(test_ext_and_reserved),
      cmocka_unit_test(test_every_scalar_format_accepted),
      cmocka_unit_test(test_float_keys_and_long_strings),
      cmocka_unit_test(test_wrong_types),
      cmocka_unit_test(test_missing_keys),
      cmocka_unit_test(test_duplicate_keys),
      cmocka_unit_test(test_unknown_keys_ignored),
      cmocka_unit_test(test_hello_values),
      cmocka_unit_test(test_frame_values),
      cmocka_unit_test(test_welcome_error_values),
      cmocka_unit_test(test_tensor_values),
      cmocka_unit_test(test_encode_refuses),
      cmocka_unit_test(test_error_message_truncation),
      cmocka_unit_test(test_codec_sizes),
      cmocka_unit_test(test_codec_f32_exact),
      cmocka_unit_test(test_codec_f16_rounding),
      cmocka_unit_test(test_codec_f16_delta_mirror),
      cmocka_unit_test(test_codec_delta_carries_residual),
      cmocka_unit_test(test_codec_refuses),
      cmocka_unit_test(test_update_through_the_wire),
      cmocka_unit_test(test_framer),
  };
  return cmocka_run_group_tests_name("proto", tests, NULL, NULL);
}
