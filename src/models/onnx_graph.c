/* ONNX loader: protobuf bytes -> checked C graph.
 *
 * Decoding happens in three steps. A pre-scan walks the protobuf wire format
 * with the generated descriptors, bounding message nesting
 * (ST_ONNX_MAX_NESTING) and the memory the decode will take
 * (ST_ONNX_MAX_DECODED_BYTES) and rejecting NUL bytes inside string fields
 * (they would silently shorten names); protobuf-c's recursive decoder has no
 * such limits of its own. protobuf-c then decodes the ModelProto, and the
 * conversion below copies what we keep into the model's arena, checking the
 * ONNX rules as it goes, and frees the protobuf.
 *
 * Everything small (strings, arrays, node and attribute structs, the name
 * index) lives in one arena owned by the model, so freeing is a walk over the
 * tensors plus the arena's chunks. Tensor data is allocated apart through
 * st_tensor_alloc, aligned for the compute code.
 */
#include "models/onnx_graph.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"
#include "base/file.h"
#include "onnx.pb-c.h"

/* raw_data is little-endian by the ONNX spec and is copied as is. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "the ONNX loader assumes a little-endian host");

/* The default ONNX domain has two spellings. */
static const char DOMAIN_AI_ONNX[] = "ai.onnx";

/* Arena chunks: big enough that a typical model needs a handful. */
enum { ARENA_CHUNK_BYTES = 64 * 1024 };
/* Longest "initializer 'x'" / "node 'x' (Op): attribute 'y'" prefix kept in
 * messages; the detail line itself is bounded anyway. */
enum { WHAT_BYTES = 256 };
/* Room for "node<i>" with any size_t index. */
enum { SYNTH_NAME_BYTES = 32 };
/* Largest value of a FLOAT16 bit pattern and of a UINT8 held in int32_data. */
enum { F16_BITS_MAX = 0xffff, U8_MAX_VALUE = 0xff };
/* Protobuf wire types (the low 3 bits of a field tag). */
enum {
  WIRE_VARINT = 0,
  WIRE_FIXED64 = 1,
  WIRE_LEN = 2,
  WIRE_FIXED32 = 5,
  WIRE_TYPE_BITS = 3,
  VARINT_MAX_BYTES = 10,
  FIXED64_BYTES = 8,
  FIXED32_BYTES = 4,
  /* Decoded size of one repeated scalar element, at most. */
  DECODED_SCALAR_BYTES = 8
};

/* ---- arena --------------------------------------------------------------- */

typedef struct arena_chunk {
  struct arena_chunk *next; /* older chunk */
  size_t used;              /* bytes handed out from data */
  size_t cap;               /* bytes in data */
  max_align_t data[];       /* storage */
} arena_chunk;

static void *arena_alloc(arena_chunk **head, size_t bytes) {
  const size_t align = alignof(max_align_t);
  if (bytes > SIZE_MAX - align - sizeof(arena_chunk) - ARENA_CHUNK_BYTES)
    return NULL;
  bytes = bytes ? (bytes + align - 1) / align * align : align;
  arena_chunk *c = *head;
  if (!c || c->cap - c->used < bytes) {
    size_t cap = bytes > ARENA_CHUNK_BYTES ? bytes : ARENA_CHUNK_BYTES;
    c = malloc(sizeof *c + cap);
    if (!c)
      return NULL;
    c->next = *head;
    c->used = 0;
    c->cap = cap;
    *head = c;
  }
  void *p = (char *)c->data + c->used;
  c->used += bytes;
  return p;
}

/* Zeroed array of count elements of size bytes, with the product checked. */
static void *arena_array(arena_chunk **head, size_t count, size_t size) {
  if (size && count > SIZE_MAX / size)
    return NULL;
  void *p = arena_alloc(head, count * size);
  if (p)
    memset(p, 0, count * size);
  return p;
}

static char *arena_memdup0(arena_chunk **head, const void *src, size_t len) {
  if (len == SIZE_MAX)
    return NULL;
  char *p = arena_alloc(head, len + 1);
  if (p) {
    if (len)
      memcpy(p, src, len);
    p[len] = '\0';
  }
  return p;
}

static char *arena_strdup(arena_chunk **head, const char *s) {
  s = s ? s : "";
  return arena_memdup0(head, s, strlen(s));
}

static void arena_free(arena_chunk *c) {
  while (c) {
    arena_chunk *next = c->next;
    free(c);
    c = next;
  }
}

/* ---- the model's private part: storage and name index --------------------- */

typedef struct index_slot {
  const char *name;      /* NULL: empty slot */
  st_onnx_value_ref ref; /* what defines the name */
} index_slot;

struct st_onnx_model_private {
  arena_chunk *arena; /* every small allocation of the model */
  index_slot *slots;  /* open-addressing table of value names */
  size_t cap;         /* number of slots, a power of two */
};

/* FNV-1a: short names, no adversary worth more (the table is sized at twice
 * the names, so even bad luck costs only probes). */
static uint64_t name_hash(const char *s) {
  uint64_t h = 14695981039346656037ull;
  for (; *s; s++)
    h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

/* The slot holding name, or the empty slot where it would go. */
static index_slot *index_slot_for(const struct st_onnx_model_private *priv,
                                  const char *name) {
  size_t mask = priv->cap - 1;
  for (size_t i = (size_t)name_hash(name) & mask;; i = (i + 1) & mask) {
    index_slot *s = &priv->slots[i];
    if (!s->name || strcmp(s->name, name) == 0)
      return s;
  }
}

/* ---- enum names ----------------------------------------------------------- */

static const char *const ELEM_TYPE_NAMES[] = {
    [ST_ONNX_UNDEFINED] = "UNDEFINED", [ST_ONNX_FLOAT] = "FLOAT",
    [ST_ONNX_UINT8] = "UINT8",         [ST_ONNX_INT8] = "INT8",
    [ST_ONNX_UINT16] = "UINT16",       [ST_ONNX_INT16] = "INT16",
    [ST_ONNX_INT32] = "INT32",         [ST_ONNX_INT64] = "INT64",
    [ST_ONNX_STRING] = "STRING",       [ST_ONNX_BOOL] = "BOOL",
    [ST_ONNX_FLOAT16] = "FLOAT16",     [ST_ONNX_DOUBLE] = "DOUBLE",
    [ST_ONNX_UINT32] = "UINT32",       [ST_ONNX_UINT64] = "UINT64",
    [ST_ONNX_COMPLEX64] = "COMPLEX64", [ST_ONNX_COMPLEX128] = "COMPLEX128",
    [ST_ONNX_BFLOAT16] = "BFLOAT16"};

const char *st_onnx_elem_type_name(int elem_type) {
  if (elem_type < 0 ||
      (size_t)elem_type >= sizeof ELEM_TYPE_NAMES / sizeof ELEM_TYPE_NAMES[0])
    return "?";
  return ELEM_TYPE_NAMES[elem_type];
}

int st_onnx_elem_type_to_dtype(int elem_type, st_dtype *out) {
  switch (elem_type) {
  case ST_ONNX_FLOAT:
    *out = ST_F32;
    return ST_OK;
  case ST_ONNX_FLOAT16:
    *out = ST_F16;
    return ST_OK;
  case ST_ONNX_UINT8:
    *out = ST_U8;
    return ST_OK;
  case ST_ONNX_INT32:
    *out = ST_I32;
    return ST_OK;
  case ST_ONNX_INT64:
    *out = ST_I64;
    return ST_OK;
  default:
    return st_error_set(ST_EDTYPE, "ONNX element type %s has no st_dtype",
                        st_onnx_elem_type_name(elem_type));
  }
}

static const char *const ATTR_TYPE_NAMES[] = {
    [ST_ONNX_ATTR_UNDEFINED] = "UNDEFINED",
    [ST_ONNX_ATTR_FLOAT] = "FLOAT",
    [ST_ONNX_ATTR_INT] = "INT",
    [ST_ONNX_ATTR_STRING] = "STRING",
    [ST_ONNX_ATTR_TENSOR] = "TENSOR",
    [ST_ONNX_ATTR_GRAPH] = "GRAPH",
    [ST_ONNX_ATTR_FLOATS] = "FLOATS",
    [ST_ONNX_ATTR_INTS] = "INTS",
    [ST_ONNX_ATTR_STRINGS] = "STRINGS",
    [ST_ONNX_ATTR_TENSORS] = "TENSORS",
    [ST_ONNX_ATTR_GRAPHS] = "GRAPHS",
    [ST_ONNX_ATTR_SPARSE_TENSOR] = "SPARSE_TENSOR",
    [ST_ONNX_ATTR_SPARSE_TENSORS] = "SPARSE_TENSORS",
    [ST_ONNX_ATTR_TYPE_PROTO] = "TYPE_PROTO",
    [ST_ONNX_ATTR_TYPE_PROTOS] = "TYPE_PROTOS"};

const char *st_onnx_attr_type_name(int type) {
  if (type < 0 ||
      (size_t)type >= sizeof ATTR_TYPE_NAMES / sizeof ATTR_TYPE_NAMES[0])
    return "?";
  return ATTR_TYPE_NAMES[type];
}

/* ---- pre-scan of the wire format ----------------------------------------- */

typedef struct prescan {
  const char *label;   /* for messages */
  const uint8_t *base; /* start of the file, for byte offsets */
  uint64_t decoded;    /* estimated bytes the decode will allocate */
} prescan;

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
  uint64_t v = 0;
  for (int i = 0; i < VARINT_MAX_BYTES; i++) {
    if (*p == end)
      return -1;
    uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) {
      *out = v;
      return 0;
    }
  }
  return -1;
}

static int prescan_fail(const prescan *ps, const uint8_t *at,
                        const char *what) {
  return st_error_set(ST_EFORMAT,
                      "%s: not a valid ONNX file: %s at byte %zu (truncated "
                      "or corrupt protobuf)",
                      ps->label, what, (size_t)(at - ps->base));
}

/* Walks one message's fields in [p, end), recursing into known message
 * fields. Unknown fields are skipped as protobuf-c skips them (it keeps a
 * copy, which the estimate counts). */
static int prescan_message(prescan *ps, const uint8_t *p, const uint8_t *end,
                           const ProtobufCMessageDescriptor *desc,
                           int depth) {
  if (depth > ST_ONNX_MAX_NESTING)
    return st_error_set(ST_EFORMAT,
                        "%s: not a valid ONNX file: messages nest deeper "
                        "than %d levels at byte %zu",
                        ps->label, ST_ONNX_MAX_NESTING,
                        (size_t)(p - ps->base));
  ps->decoded += desc->sizeof_message;
  while (p < end) {
    const uint8_t *field_start = p;
    uint64_t tag;
    if (read_varint(&p, end, &tag) || tag > UINT32_MAX ||
        (tag >> WIRE_TYPE_BITS) == 0)
      return prescan_fail(ps, field_start, "bad field tag");
    unsigned wire = (unsigned)(tag & ((1u << WIRE_TYPE_BITS) - 1));
    const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field(
        desc, (unsigned)(tag >> WIRE_TYPE_BITS));
    uint64_t payload = 0;
    switch (wire) {
    case WIRE_VARINT: {
      uint64_t ignored;
      const uint8_t *q = p;
      if (read_varint(&p, end, &ignored))
        return prescan_fail(ps, field_start, "bad varint");
      payload = (uint64_t)(p - q);
      ps->decoded += DECODED_SCALAR_BYTES;
      break;
    }
    case WIRE_FIXED64:
    case WIRE_FIXED32: {
      size_t n = wire == WIRE_FIXED64 ? FIXED64_BYTES : FIXED32_BYTES;
      if ((size_t)(end - p) < n)
        return prescan_fail(ps, field_start, "fixed-width field past end");
      p += n;
      payload = n;
      ps->decoded += DECODED_SCALAR_BYTES;
      break;
    }
    case WIRE_LEN: {
      uint64_t len;
      if (read_varint(&p, end, &len) || len > (uint64_t)(end - p))
        return prescan_fail(ps, field_start, "length-delimited field past end");
      payload = len;
      if (fd && fd->type == PROTOBUF_C_TYPE_MESSAGE) {
        int rc = prescan_message(ps, p, p + len, fd->descriptor, depth + 1);
        if (rc)
          return rc;
        ps->decoded += sizeof(void *);
      } else if (fd && fd->type == PROTOBUF_C_TYPE_STRING) {
        if (memchr(p, 0, (size_t)len))
          return prescan_fail(ps, field_start, "NUL byte inside a string");
        ps->decoded += len + 1;
      } else if (fd && fd->type == PROTOBUF_C_TYPE_BYTES) {
        ps->decoded += len + sizeof(ProtobufCBinaryData);
      } else if (fd) {
        /* A packed run of scalars: each element takes at least one byte
         * and decodes to at most DECODED_SCALAR_BYTES. */
        ps->decoded += len * DECODED_SCALAR_BYTES;
      }
      p += len;
      break;
    }
    default:
      return prescan_fail(ps, field_start, "unsupported wire type");
    }
    if (!fd)
      ps->decoded += sizeof(ProtobufCMessageUnknownField) + payload;
  }
  return ST_OK;
}

/* ---- conversion ----------------------------------------------------------- */

typedef struct parse_ctx {
  const char *label;                  /* for messages */
  st_onnx_model *model;               /* being filled */
  struct st_onnx_model_private *priv; /* its storage */
} parse_ctx;

static int oom(const parse_ctx *ctx) {
  return st_error_set(ST_ENOMEM, "%s: out of memory while loading the model",
                      ctx->label);
}

static const char *nonnull(const char *s) { return s ? s : ""; }

/* Checked element count and byte size of a shape: each prefix product must
 * fit, as st_tensor_alloc requires, so a zero extent late in the shape does
 * not excuse huge ones before it. */
static int checked_size(const int64_t *dims, int ndim, size_t elem_bytes,
                        uint64_t *numel, uint64_t *nbytes) {
  uint64_t n = 1, bytes = elem_bytes;
  for (int i = 0; i < ndim; i++) {
    uint64_t extent = (uint64_t)dims[i];
    if (extent != 0 && bytes > SIZE_MAX / extent)
      return -1;
    n *= extent;
    bytes *= extent;
  }
  *numel = n;
  *nbytes = bytes;
  return 0;
}

/* Names the first non-empty typed data field other than `allowed` (NULL
 * when there is none). */
static const char *foreign_typed_field(const Onnx__TensorProto *tp,
                                       const char *allowed) {
  struct {
    const char *name;
    size_t count;
  } fields[] = {{"float_data", tp->n_float_data},
                {"int32_data", tp->n_int32_data},
                {"int64_data", tp->n_int64_data},
                {"double_data", tp->n_double_data},
                {"uint64_data", tp->n_uint64_data},
                {"string_data", tp->n_string_data}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (fields[i].count &&
        (!allowed || strcmp(fields[i].name, allowed) != 0))
      return fields[i].name;
  return NULL;
}

/* Copies a TensorProto into a new host tensor. `what` names it in messages
 * ("initializer 'w'"). */
static int tensor_convert(const parse_ctx *ctx, const Onnx__TensorProto *tp,
                          const char *what, st_tensor *out) {
  const char *label = ctx->label;
  memset(out, 0, sizeof *out);
  if ((tp->has_data_location &&
       tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) ||
      tp->n_external_data > 0)
    return st_error_set(ST_ENOTSUP,
                        "%s: %s uses external data, which is not supported "
                        "(save the model with its weights inside the file)",
                        label, what);
  if (tp->has_data_location &&
      tp->data_location != ONNX__TENSOR_PROTO__DATA_LOCATION__DEFAULT)
    return st_error_set(ST_EFORMAT, "%s: %s has unknown data_location %d",
                        label, what, (int)tp->data_location);
  if (tp->segment)
    return st_error_set(ST_ENOTSUP,
                        "%s: %s is stored in segments, which is not supported",
                        label, what);
  if (!tp->has_data_type)
    return st_error_set(ST_EFORMAT, "%s: %s has no data_type", label, what);
  st_dtype dtype = ST_F32;
  if (st_onnx_elem_type_to_dtype(tp->data_type, &dtype))
    return st_error_set(ST_EDTYPE,
                        "%s: %s has element type %s (%d), which is not "
                        "supported (FLOAT, FLOAT16, UINT8, INT32 and INT64 "
                        "are)",
                        label, what, st_onnx_elem_type_name(tp->data_type),
                        (int)tp->data_type);
  if (tp->n_dims > ST_MAX_DIMS)
    return st_error_set(ST_ESHAPE, "%s: %s has rank %zu, above the limit of %d",
                        label, what, tp->n_dims, ST_MAX_DIMS);
  int ndim = (int)tp->n_dims;
  for (int i = 0; i < ndim; i++)
    if (tp->dims[i] < 0)
      return st_error_set(ST_EFORMAT, "%s: %s has negative dims[%d] = %" PRId64,
                          label, what, i, tp->dims[i]);
  st_tensor shape_view = st_tensor_view(NULL, dtype, ndim, tp->dims);
  char shape_str[ST_MAX_DIMS * 24];
  st_tensor_shape_str(&shape_view, shape_str, sizeof shape_str);
  uint64_t numel, nbytes;
  if (checked_size(tp->dims, ndim, st_dtype_size(dtype), &numel, &nbytes))
    return st_error_set(ST_ESHAPE, "%s: %s: byte size of %s %s overflows",
                        label, what, st_onnx_elem_type_name(tp->data_type),
                        shape_str);

  /* Where the values are: raw_data, or the one typed field ONNX assigns to
   * the element type, never both. */
  const char *typed_name;
  size_t typed_count;
  switch (dtype) {
  case ST_F32:
    typed_name = "float_data";
    typed_count = tp->n_float_data;
    break;
  case ST_I64:
    typed_name = "int64_data";
    typed_count = tp->n_int64_data;
    break;
  default: /* INT32, UINT8 and FLOAT16 share int32_data */
    typed_name = "int32_data";
    typed_count = tp->n_int32_data;
    break;
  }
  if (tp->has_raw_data) {
    const char *other = foreign_typed_field(tp, NULL);
    if (other)
      return st_error_set(ST_EFORMAT, "%s: %s has both raw_data and %s",
                          label, what, other);
    if ((uint64_t)tp->raw_data.len != nbytes)
      return st_error_set(ST_ESHAPE,
                          "%s: %s: raw_data holds %zu bytes but %s %s needs "
                          "%" PRIu64,
                          label, what, tp->raw_data.len,
                          st_onnx_elem_type_name(tp->data_type), shape_str,
                          nbytes);
  } else {
    const char *other = foreign_typed_field(tp, typed_name);
    if (other)
      return st_error_set(ST_EFORMAT,
                          "%s: %s stores values in %s, which %s tensors "
                          "cannot use",
                          label, what, other,
                          st_onnx_elem_type_name(tp->data_type));
    if (typed_count == 0 && numel > 0)
      return st_error_set(ST_EFORMAT, "%s: %s holds no data for its %s %s",
                          label, what, st_onnx_elem_type_name(tp->data_type),
                          shape_str);
    if ((uint64_t)typed_count != numel)
      return st_error_set(ST_ESHAPE,
                          "%s: %s: %s holds %zu values but %s has %" PRIu64
                          " elements",
                          label, what, typed_name, typed_count, shape_str,
                          numel);
  }

  int rc = st_tensor_alloc(NULL, out, dtype, ndim, tp->dims);
  if (rc)
    return rc == ST_ENOMEM ? oom(ctx) : rc;
  /* Zero bytes: the source arrays may be NULL, which memcpy must not get. */
  if (nbytes == 0)
    return ST_OK;
  if (tp->has_raw_data) {
    memcpy(out->data, tp->raw_data.data, (size_t)nbytes);
    return ST_OK;
  }
  switch (dtype) {
  case ST_F32:
    memcpy(out->data, tp->float_data, (size_t)nbytes);
    break;
  case ST_I64:
    memcpy(out->data, tp->int64_data, (size_t)nbytes);
    break;
  case ST_I32:
    memcpy(out->data, tp->int32_data, (size_t)nbytes);
    break;
  case ST_U8:
  case ST_F16: {
    /* Narrow types are widened to int32 in int32_data; a value outside the
     * type's range means a broken writer, not something to wrap. */
    int32_t max = dtype == ST_U8 ? U8_MAX_VALUE : F16_BITS_MAX;
    for (size_t i = 0; i < typed_count; i++) {
      int32_t v = tp->int32_data[i];
      if (v < 0 || v > max) {
        st_tensor_free(out);
        return st_error_set(ST_EFORMAT,
                            "%s: %s: int32_data[%zu] = %" PRId32
                            " is out of range for %s",
                            label, what, i, v,
                            st_onnx_elem_type_name(tp->data_type));
      }
      if (dtype == ST_U8)
        ((uint8_t *)out->data)[i] = (uint8_t)v;
      else
        ((uint16_t *)out->data)[i] = (uint16_t)v;
    }
    break;
  }
  default:
    break;
  }
  return ST_OK;
}

/* Fills a graph input or output from its ValueInfoProto. `role` is "graph
 * input" or "graph output". */
static int value_info_convert(const parse_ctx *ctx,
                              const Onnx__ValueInfoProto *vi,
                              const char *role, st_onnx_value_info *out) {
  const char *label = ctx->label;
  memset(out, 0, sizeof *out);
  out->ndim = -1;
  out->name = arena_strdup(&ctx->priv->arena, vi->name);
  if (!out->name)
    return oom(ctx);
  const Onnx__TypeProto *type = vi->type;
  if (!type || type->value_case == ONNX__TYPE_PROTO__VALUE__NOT_SET)
    return ST_OK; /* allowed: the executor infers what it needs */
  if (type->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE)
    return st_error_set(ST_ENOTSUP,
                        "%s: %s '%s' is not a dense tensor (sequences, maps, "
                        "optionals and sparse tensors are not supported)",
                        label, role, out->name);
  const Onnx__TypeProto__Tensor *tt = type->tensor_type;
  if (tt->has_elem_type)
    out->elem_type = tt->elem_type;
  if (!tt->shape)
    return ST_OK;
  if (tt->shape->n_dim > ST_MAX_DIMS)
    return st_error_set(ST_ESHAPE, "%s: %s '%s' has rank %zu, above the limit "
                        "of %d", label, role, out->name, tt->shape->n_dim,
                        ST_MAX_DIMS);
  out->ndim = (int)tt->shape->n_dim;
  for (int i = 0; i < out->ndim; i++) {
    const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
    out->dims[i] = -1;
    if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
      if (d->dim_value < 0)
        return st_error_set(ST_EFORMAT,
                            "%s: %s '%s' has negative dimension %d (%" PRId64
                            ")",
                            label, role, out->name, i, d->dim_value);
      out->dims[i] = d->dim_value;
    } else if (d->value_case ==
               ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM) {
      out->dim_params[i] = arena_strdup(&ctx->priv->arena, d->dim_param);
      if (!out->dim_params[i])
        return oom(ctx);
    }
  }
  return ST_OK;
}

/* "node 'name' (Op)" for messages. */
static void node_describe(const st_onnx_node *node, char *buf, size_t len) {
  snprintf(buf, len, "node '%s' (%s)", node->name, node->op_type);
}

static int attr_convert(const parse_ctx *ctx, const char *node_what,
                        const Onnx__AttributeProto *ap, st_onnx_attr *out) {
  const char *label = ctx->label;
  arena_chunk **arena = &ctx->priv->arena;
  memset(out, 0, sizeof *out);
  if (!ap->name || !ap->name[0])
    return st_error_set(ST_EFORMAT, "%s: %s has an attribute without a name",
                        label, node_what);
  out->name = arena_strdup(arena, ap->name);
  if (!out->name)
    return oom(ctx);
  if (ap->ref_attr_name && ap->ref_attr_name[0])
    return st_error_set(ST_EFORMAT,
                        "%s: %s: attribute '%s' refers to a function attribute "
                        "('%s') outside a function",
                        label, node_what, out->name, ap->ref_attr_name);
  /* IR version 1 files had no type field; every exporter since sets it. */
  if (!ap->has_type || ap->type == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED)
    return st_error_set(ST_EFORMAT, "%s: %s: attribute '%s' has no type",
                        label, node_what, out->name);
  out->type = (st_onnx_attr_type)ap->type;
  switch (ap->type) {
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT:
    out->f = ap->f;
    break;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT:
    out->i = ap->i;
    break;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING:
    out->s = arena_memdup0(arena, ap->s.data, ap->s.len);
    if (!out->s)
      return oom(ctx);
    out->s_len = ap->s.len;
    break;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR: {
    if (!ap->t)
      return st_error_set(ST_EFORMAT,
                          "%s: %s: TENSOR attribute '%s' holds no tensor",
                          label, node_what, out->name);
    st_tensor *t = arena_array(arena, 1, sizeof *t);
    if (!t)
      return oom(ctx);
    char what[2 * WHAT_BYTES]; /* node_what plus the attribute's name */
    snprintf(what, sizeof what, "%s: attribute '%s'", node_what, out->name);
    int rc = tensor_convert(ctx, ap->t, what, t);
    if (rc)
      return rc;
    out->tensor = t;
    break;
  }
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS: {
    float *v = arena_array(arena, ap->n_floats, sizeof *v);
    if (!v)
      return oom(ctx);
    if (ap->n_floats)
      memcpy(v, ap->floats, ap->n_floats * sizeof *v);
    out->floats = v;
    out->count = ap->n_floats;
    break;
  }
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS: {
    int64_t *v = arena_array(arena, ap->n_ints, sizeof *v);
    if (!v)
      return oom(ctx);
    if (ap->n_ints)
      memcpy(v, ap->ints, ap->n_ints * sizeof *v);
    out->ints = v;
    out->count = ap->n_ints;
    break;
  }
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS: {
    const char **v = arena_array(arena, ap->n_strings, sizeof *v);
    if (!v)
      return oom(ctx);
    for (size_t i = 0; i < ap->n_strings; i++) {
      v[i] = arena_memdup0(arena, ap->strings[i].data, ap->strings[i].len);
      if (!v[i])
        return oom(ctx);
    }
    out->strings = v;
    out->count = ap->n_strings;
    break;
  }
  /* Kept undecoded: see st_onnx_attr. */
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH:
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__SPARSE_TENSOR:
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TYPE_PROTO:
    break;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSORS:
    out->count = ap->n_tensors;
    break;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPHS:
    out->count = ap->n_graphs;
    break;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__SPARSE_TENSORS:
    out->count = ap->n_sparse_tensors;
    break;
  case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TYPE_PROTOS:
    out->count = ap->n_type_protos;
    break;
  default:
    return st_error_set(ST_EFORMAT, "%s: %s: attribute '%s' has unknown type %d",
                        label, node_what, out->name, (int)ap->type);
  }
  return ST_OK;
}

/* "a graph input", "an initializer" or "node 'n' (Op)", for messages about
 * a value defined twice. */
static void ref_describe(const st_onnx_node *nodes, st_onnx_value_ref ref,
                         char *buf, size_t len) {
  switch (ref.kind) {
  case ST_ONNX_VALUE_INPUT:
    snprintf(buf, len, "a graph input");
    break;
  case ST_ONNX_VALUE_INITIALIZER:
    snprintf(buf, len, "an initializer");
    break;
  default:
    node_describe(&nodes[ref.index], buf, len);
    break;
  }
}

static int is_default_domain(const char *domain) {
  return !domain || !domain[0] || strcmp(domain, DOMAIN_AI_ONNX) == 0;
}

static int opset_convert(const parse_ctx *ctx, const Onnx__ModelProto *mp) {
  const char *label = ctx->label;
  int found = 0;
  for (size_t i = 0; i < mp->n_opset_import; i++) {
    const Onnx__OperatorSetIdProto *os = mp->opset_import[i];
    if (!is_default_domain(os->domain))
      continue; /* harmless unless a node uses it, which nodes are checked */
    if (found)
      return st_error_set(ST_EFORMAT,
                          "%s: the default ONNX domain is imported twice",
                          label);
    if (!os->has_version)
      return st_error_set(ST_EFORMAT,
                          "%s: the default ONNX domain's import has no version",
                          label);
    found = 1;
    ctx->model->opset = os->version;
  }
  if (!found)
    return st_error_set(ST_EFORMAT,
                        "%s: the model imports no opset of the default ONNX "
                        "domain",
                        label);
  if (ctx->model->opset < ST_ONNX_MIN_OPSET ||
      ctx->model->opset > ST_ONNX_MAX_OPSET)
    return st_error_set(ST_ENOTSUP,
                        "%s: opset %" PRId64 " is not supported (opsets %d to "
                        "%d are; re-export with e.g. opset_version=17)",
                        label, ctx->model->opset, ST_ONNX_MIN_OPSET,
                        ST_ONNX_MAX_OPSET);
  return ST_OK;
}

static int index_create(const parse_ctx *ctx, const Onnx__GraphProto *g) {
  /* Every name the graph can define: initializers, inputs, node outputs. */
  size_t names = g->n_initializer + g->n_input;
  for (size_t i = 0; i < g->n_node; i++) {
    if (g->node[i]->n_output > SIZE_MAX / 4 - names)
      return oom(ctx);
    names += g->node[i]->n_output;
  }
  size_t cap = 8;
  while (cap < 2 * names + 1) {
    if (cap > SIZE_MAX / 4)
      return oom(ctx);
    cap *= 2;
  }
  ctx->priv->slots = arena_array(&ctx->priv->arena, cap, sizeof(index_slot));
  if (!ctx->priv->slots)
    return oom(ctx);
  ctx->priv->cap = cap;
  return ST_OK;
}

static int initializers_convert(const parse_ctx *ctx,
                                const Onnx__GraphProto *g) {
  const char *label = ctx->label;
  st_onnx_initializer *inits =
      arena_array(&ctx->priv->arena, g->n_initializer, sizeof *inits);
  if (!inits)
    return oom(ctx);
  ctx->model->initializers = inits;
  for (size_t i = 0; i < g->n_initializer; i++) {
    const Onnx__TensorProto *tp = g->initializer[i];
    if (!tp->name || !tp->name[0])
      return st_error_set(ST_EFORMAT, "%s: initializer %zu has no name",
                          label, i);
    index_slot *slot = index_slot_for(ctx->priv, tp->name);
    if (slot->name)
      return st_error_set(ST_EFORMAT, "%s: initializer '%s' appears twice",
                          label, tp->name);
    char what[WHAT_BYTES];
    snprintf(what, sizeof what, "initializer '%s'", tp->name);
    inits[i].name = arena_strdup(&ctx->priv->arena, tp->name);
    if (!inits[i].name)
      return oom(ctx);
    int rc = tensor_convert(ctx, tp, what, &inits[i].tensor);
    if (rc)
      return rc;
    /* Counted only once converted, so that freeing releases exactly the
     * tensors that exist. */
    ctx->model->n_initializers = i + 1;
    slot->name = inits[i].name;
    slot->ref = (st_onnx_value_ref){ST_ONNX_VALUE_INITIALIZER, i, 0};
  }
  return ST_OK;
}

static int inputs_convert(const parse_ctx *ctx, const Onnx__GraphProto *g) {
  const char *label = ctx->label;
  st_onnx_value_info *inputs =
      arena_array(&ctx->priv->arena, g->n_input, sizeof *inputs);
  if (!inputs)
    return oom(ctx);
  ctx->model->inputs = inputs;
  size_t n = 0;
  for (size_t i = 0; i < g->n_input; i++) {
    const Onnx__ValueInfoProto *vi = g->input[i];
    if (!vi->name || !vi->name[0])
      return st_error_set(ST_EFORMAT, "%s: graph input %zu has no name", label,
                          i);
    index_slot *slot = index_slot_for(ctx->priv, vi->name);
    if (slot->name && slot->ref.kind == ST_ONNX_VALUE_INITIALIZER)
      continue; /* an initializer also listed as input (IR < 4 style) */
    if (slot->name)
      return st_error_set(ST_EFORMAT, "%s: graph input '%s' appears twice",
                          label, vi->name);
    int rc = value_info_convert(ctx, vi, "graph input", &inputs[n]);
    if (rc)
      return rc;
    slot->name = inputs[n].name;
    slot->ref = (st_onnx_value_ref){ST_ONNX_VALUE_INPUT, n, 0};
    n++;
  }
  ctx->model->n_inputs = n;
  return ST_OK;
}

static int nodes_convert(const parse_ctx *ctx, const Onnx__GraphProto *g) {
  const char *label = ctx->label;
  arena_chunk **arena = &ctx->priv->arena;
  st_onnx_node *nodes = arena_array(arena, g->n_node, sizeof *nodes);
  if (!nodes)
    return oom(ctx);
  ctx->model->nodes = nodes;
  for (size_t ni = 0; ni < g->n_node; ni++) {
    const Onnx__NodeProto *np = g->node[ni];
    st_onnx_node *node = &nodes[ni];
    node->label = ctx->model->label;
    node->op_type = arena_strdup(arena, np->op_type);
    if (np->name && np->name[0]) {
      node->name = arena_strdup(arena, np->name);
    } else {
      char synth[SYNTH_NAME_BYTES];
      snprintf(synth, sizeof synth, "node%zu", ni);
      node->name = arena_strdup(arena, synth);
    }
    if (!node->op_type || !node->name)
      return oom(ctx);
    /* Counted before its attributes are read, so that freeing finds the
     * attribute tensors of a node that failed halfway. */
    ctx->model->n_nodes = ni + 1;
    char what[WHAT_BYTES];
    node_describe(node, what, sizeof what);
    if (!node->op_type[0])
      return st_error_set(ST_EFORMAT, "%s: %s has no op_type", label, what);
    if (!is_default_domain(np->domain))
      return st_error_set(ST_ENOTSUP,
                          "%s: %s is in domain '%s'; only the default ONNX "
                          "domain (\"\" or \"ai.onnx\") is supported",
                          label, what, np->domain);

    const char **inputs = arena_array(arena, np->n_input, sizeof *inputs);
    const char **outputs = arena_array(arena, np->n_output, sizeof *outputs);
    st_onnx_attr *attrs = arena_array(arena, np->n_attribute, sizeof *attrs);
    if (!inputs || !outputs || !attrs)
      return oom(ctx);
    node->inputs = inputs;
    node->outputs = outputs;
    node->attrs = attrs;

    for (size_t k = 0; k < np->n_input; k++) {
      const char *in = nonnull(np->input[k]);
      if (in[0]) {
        index_slot *slot = index_slot_for(ctx->priv, in);
        if (!slot->name)
          return st_error_set(ST_EFORMAT,
                              "%s: %s reads '%s', which no graph input, "
                              "initializer or earlier node defines (ONNX "
                              "requires nodes in topological order)",
                              label, what, in);
        inputs[k] = slot->name;
      } else {
        inputs[k] = "";
      }
      node->n_inputs = k + 1;
    }
    for (size_t k = 0; k < np->n_output; k++) {
      const char *o = nonnull(np->output[k]);
      outputs[k] = "";
      node->n_outputs = k + 1;
      if (!o[0])
        continue;
      index_slot *slot = index_slot_for(ctx->priv, o);
      if (slot->name) {
        char other[WHAT_BYTES];
        ref_describe(nodes, slot->ref, other, sizeof other);
        return st_error_set(ST_EFORMAT,
                            "%s: %s writes '%s', which %s already defines",
                            label, what, o, other);
      }
      outputs[k] = arena_strdup(arena, o);
      if (!outputs[k])
        return oom(ctx);
      slot->name = outputs[k];
      slot->ref = (st_onnx_value_ref){ST_ONNX_VALUE_NODE_OUTPUT, ni, k};
    }
    for (size_t k = 0; k < np->n_attribute; k++) {
      int rc = attr_convert(ctx, what, np->attribute[k], &attrs[k]);
      node->n_attrs = k + 1;
      if (rc)
        return rc;
      for (size_t j = 0; j < k; j++)
        if (strcmp(attrs[j].name, attrs[k].name) == 0)
          return st_error_set(ST_EFORMAT,
                              "%s: %s has attribute '%s' twice", label, what,
                              attrs[k].name);
    }
  }
  return ST_OK;
}

static int outputs_convert(const parse_ctx *ctx, const Onnx__GraphProto *g) {
  const char *label = ctx->label;
  if (g->n_output == 0)
    return st_error_set(ST_EFORMAT, "%s: the graph has no outputs", label);
  st_onnx_value_info *outputs =
      arena_array(&ctx->priv->arena, g->n_output, sizeof *outputs);
  if (!outputs)
    return oom(ctx);
  ctx->model->outputs = outputs;
  for (size_t i = 0; i < g->n_output; i++) {
    const Onnx__ValueInfoProto *vi = g->output[i];
    if (!vi->name || !vi->name[0])
      return st_error_set(ST_EFORMAT, "%s: graph output %zu has no name",
                          label, i);
    if (!index_slot_for(ctx->priv, vi->name)->name)
      return st_error_set(ST_EFORMAT,
                          "%s: graph output '%s' is not defined by any graph "
                          "input, initializer or node",
                          label, vi->name);
    int rc = value_info_convert(ctx, vi, "graph output", &outputs[i]);
    if (rc)
      return rc;
    ctx->model->n_outputs = i + 1;
  }
  return ST_OK;
}

static int model_convert(const parse_ctx *ctx, const Onnx__ModelProto *mp) {
  st_onnx_model *m = ctx->model;
  arena_chunk **arena = &ctx->priv->arena;
  const Onnx__GraphProto *g = mp->graph;
  if (!g)
    return st_error_set(ST_EFORMAT,
                        "%s: not an ONNX model: the file holds no graph",
                        ctx->label);
  m->ir_version = mp->has_ir_version ? mp->ir_version : 0;
  m->producer_name = arena_strdup(arena, mp->producer_name);
  m->producer_version = arena_strdup(arena, mp->producer_version);
  m->graph_name = arena_strdup(arena, g->name);
  if (!m->producer_name || !m->producer_version || !m->graph_name)
    return oom(ctx);
  int rc = opset_convert(ctx, mp);
  if (rc)
    return rc;
  if (g->n_sparse_initializer)
    return st_error_set(ST_ENOTSUP,
                        "%s: the graph has sparse initializers, which are not "
                        "supported",
                        ctx->label);
  if ((rc = index_create(ctx, g)) || (rc = initializers_convert(ctx, g)) ||
      (rc = inputs_convert(ctx, g)) || (rc = nodes_convert(ctx, g)) ||
      (rc = outputs_convert(ctx, g)))
    return rc;
  return ST_OK;
}

/* ---- public --------------------------------------------------------------- */

int st_onnx_model_parse(const void *buf, size_t len, const char *label,
                        st_onnx_model **out) {
  *out = NULL;
  label = label ? label : "(buffer)";
  if (!buf && len)
    return st_error_set(ST_EINVAL, "%s: NULL buffer", label);
  if (len > ST_ONNX_MAX_FILE_BYTES)
    return st_error_set(ST_EFORMAT,
                        "%s: %zu bytes is above the %zu-byte limit of a "
                        "self-contained ONNX file",
                        label, len, ST_ONNX_MAX_FILE_BYTES);
  static const uint8_t empty[1];
  const uint8_t *bytes = len ? buf : empty;

  prescan ps = {label, bytes, 0};
  int rc = prescan_message(&ps, bytes, bytes + len,
                           &onnx__model_proto__descriptor, 0);
  if (rc)
    return rc;
  if (ps.decoded > ST_ONNX_MAX_DECODED_BYTES)
    return st_error_set(ST_EFORMAT,
                        "%s: not a valid ONNX file: decoding it would take "
                        "about %" PRIu64 " bytes (limit %" PRIu64 ")",
                        label, ps.decoded, ST_ONNX_MAX_DECODED_BYTES);

  Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, len, bytes);
  if (!mp)
    return st_error_set(ST_EFORMAT,
                        "%s: not a valid ONNX file: protobuf decoding failed "
                        "(truncated or corrupt)",
                        label);

  st_onnx_model *m = calloc(1, sizeof *m);
  struct st_onnx_model_private *priv = calloc(1, sizeof *priv);
  if (!m || !priv) {
    free(m);
    free(priv);
    onnx__model_proto__free_unpacked(mp, NULL);
    return st_error_set(ST_ENOMEM, "%s: out of memory", label);
  }
  m->priv = priv;
  parse_ctx ctx = {label, m, priv};
  m->label = arena_strdup(&priv->arena, label);
  rc = m->label ? model_convert(&ctx, mp) : oom(&ctx);
  onnx__model_proto__free_unpacked(mp, NULL);
  if (rc) {
    st_onnx_model_free(m);
    return rc;
  }
  *out = m;
  return ST_OK;
}

int st_onnx_model_load(const char *path, st_onnx_model **out) {
  uint8_t *file = NULL;
  size_t len = 0;
  *out = NULL;
  /* Protobuf cannot describe more than 2 GiB, so neither can a
   * self-contained ONNX file. */
  int rc = st_read_file(path, ST_ONNX_MAX_FILE_BYTES, ST_EFORMAT, &file, &len);
  if (rc)
    return rc;
  rc = st_onnx_model_parse(file, len, path, out);
  free(file);
  return rc;
}

void st_onnx_model_free(st_onnx_model *m) {
  if (!m)
    return;
  /* Tensor storage lives outside the arena; the structs pointing at it are
   * inside, so release it first. */
  for (size_t i = 0; i < m->n_initializers; i++)
    st_tensor_free((st_tensor *)&m->initializers[i].tensor);
  for (size_t i = 0; i < m->n_nodes; i++)
    for (size_t k = 0; k < m->nodes[i].n_attrs; k++)
      if (m->nodes[i].attrs[k].tensor)
        st_tensor_free((st_tensor *)m->nodes[i].attrs[k].tensor);
  if (m->priv)
    arena_free(m->priv->arena);
  free(m->priv);
  free(m);
}

int st_onnx_model_find(const st_onnx_model *m, const char *name,
                       st_onnx_value_ref *out) {
  if (!name || !m->priv->slots)
    return ST_ENOENT;
  const index_slot *slot = index_slot_for(m->priv, name);
  if (!slot->name)
    return ST_ENOENT;
  *out = slot->ref;
  return ST_OK;
}

const st_onnx_initializer *st_onnx_model_initializer(const st_onnx_model *m,
                                                     const char *name) {
  st_onnx_value_ref ref;
  if (st_onnx_model_find(m, name, &ref) ||
      ref.kind != ST_ONNX_VALUE_INITIALIZER)
    return NULL;
  return &m->initializers[ref.index];
}

/* ---- attributes ----------------------------------------------------------- */

const st_onnx_attr *st_onnx_node_attr(const st_onnx_node *node,
                                      const char *name) {
  for (size_t i = 0; i < node->n_attrs; i++)
    if (strcmp(node->attrs[i].name, name) == 0)
      return &node->attrs[i];
  return NULL;
}

/* The attribute if present with type `want`; NULL and *rc = ST_OK when
 * absent; NULL and *rc = ST_EDTYPE when present with another type. */
static const st_onnx_attr *attr_typed(const st_onnx_node *node,
                                      const char *name, st_onnx_attr_type want,
                                      int *rc) {
  const st_onnx_attr *a = st_onnx_node_attr(node, name);
  *rc = ST_OK;
  if (a && a->type != want) {
    *rc = st_error_set(ST_EDTYPE,
                       "%s: node '%s' (%s): attribute '%s' is %s, expected %s",
                       node->label, node->name, node->op_type, name,
                       st_onnx_attr_type_name(a->type),
                       st_onnx_attr_type_name(want));
    return NULL;
  }
  return a;
}

int st_onnx_attr_int(const st_onnx_node *node, const char *name, int64_t def,
                     int64_t *out) {
  int rc;
  const st_onnx_attr *a = attr_typed(node, name, ST_ONNX_ATTR_INT, &rc);
  *out = a ? a->i : def;
  return rc;
}

int st_onnx_attr_float(const st_onnx_node *node, const char *name, float def,
                       float *out) {
  int rc;
  const st_onnx_attr *a = attr_typed(node, name, ST_ONNX_ATTR_FLOAT, &rc);
  *out = a ? a->f : def;
  return rc;
}

int st_onnx_attr_string(const st_onnx_node *node, const char *name,
                        const char *def, const char **out) {
  int rc;
  const st_onnx_attr *a = attr_typed(node, name, ST_ONNX_ATTR_STRING, &rc);
  *out = a ? a->s : def;
  return rc;
}

int st_onnx_attr_ints(const st_onnx_node *node, const char *name,
                      const int64_t **values, size_t *count) {
  int rc;
  const st_onnx_attr *a = attr_typed(node, name, ST_ONNX_ATTR_INTS, &rc);
  *values = a ? a->ints : NULL;
  *count = a ? a->count : 0;
  return rc;
}

int st_onnx_attr_floats(const st_onnx_node *node, const char *name,
                        const float **values, size_t *count) {
  int rc;
  const st_onnx_attr *a = attr_typed(node, name, ST_ONNX_ATTR_FLOATS, &rc);
  *values = a ? a->floats : NULL;
  *count = a ? a->count : 0;
  return rc;
}

int st_onnx_attr_strings(const st_onnx_node *node, const char *name,
                         const char *const **values, size_t *count) {
  int rc;
  const st_onnx_attr *a = attr_typed(node, name, ST_ONNX_ATTR_STRINGS, &rc);
  *values = a ? a->strings : NULL;
  *count = a ? a->count : 0;
  return rc;
}

int st_onnx_attr_tensor(const st_onnx_node *node, const char *name,
                        const st_tensor **out) {
  int rc;
  const st_onnx_attr *a = attr_typed(node, name, ST_ONNX_ATTR_TENSOR, &rc);
  *out = a ? a->tensor : NULL;
  return rc;
}

/* ---- building a model in memory ------------------------------------------- */

/* The model under construction grows its arrays on the heap; finishing
 * copies them into the arena, so a finished model is laid out exactly as a
 * loaded one and st_onnx_model_free needs no second path. */
struct st_onnx_builder {
  st_onnx_model *m;                  /* label, opset, priv (arena, index) */
  size_t n_names;                    /* names in the index */
  st_onnx_value_info *inputs;        /* heap, cap_inputs entries */
  size_t n_inputs, cap_inputs;
  st_onnx_initializer *inits;        /* heap; tensors owned */
  size_t n_inits, cap_inits;
  st_onnx_node *nodes;               /* heap; strings in the arena */
  size_t n_nodes, cap_nodes;
  st_onnx_value_info *outputs;       /* heap */
  size_t n_outputs, cap_outputs;
};

/* Grows a heap array to hold one more element. */
static int builder_grow(void **arr, size_t *cap, size_t n, size_t elem) {
  if (n < *cap)
    return ST_OK;
  size_t cap2 = *cap ? 2 * *cap : 16;
  if (cap2 > SIZE_MAX / elem)
    return ST_ENOMEM;
  void *p = realloc(*arr, cap2 * elem);
  if (!p)
    return ST_ENOMEM;
  memset((char *)p + *cap * elem, 0, (cap2 - *cap) * elem);
  *arr = p;
  *cap = cap2;
  return ST_OK;
}

static int builder_oom(const st_onnx_builder *b) {
  return st_error_set(ST_ENOMEM, "%s: out of memory", b->m->label);
}

/* Doubles the name index when it is half full (open addressing needs the
 * slack) and re-inserts every name. */
static int builder_index_reserve(st_onnx_builder *b) {
  struct st_onnx_model_private *priv = b->m->priv;
  if (2 * (b->n_names + 1) + 1 <= priv->cap)
    return ST_OK;
  size_t cap = priv->cap ? 2 * priv->cap : 64;
  index_slot *old = priv->slots;
  size_t old_cap = priv->cap;
  index_slot *slots = arena_array(&priv->arena, cap, sizeof *slots);
  if (!slots)
    return builder_oom(b);
  priv->slots = slots;
  priv->cap = cap;
  for (size_t i = 0; i < old_cap; i++)
    if (old[i].name)
      *index_slot_for(priv, old[i].name) = old[i];
  return ST_OK;
}

/* Registers a new value name; ST_EFORMAT when it is defined already. */
static int builder_define(st_onnx_builder *b, const char *name,
                          st_onnx_value_ref ref, const char **interned) {
  if (!name || !name[0])
    return st_error_set(ST_EFORMAT, "%s: a value without a name",
                        b->m->label);
  int rc = builder_index_reserve(b);
  if (rc)
    return rc;
  index_slot *slot = index_slot_for(b->m->priv, name);
  if (slot->name)
    return st_error_set(ST_EFORMAT, "%s: value '%s' is defined twice",
                        b->m->label, name);
  const char *s = arena_strdup(&b->m->priv->arena, name);
  if (!s)
    return builder_oom(b);
  slot->name = s;
  slot->ref = ref;
  b->n_names++;
  *interned = s;
  return ST_OK;
}

int st_onnx_builder_new(const char *label, int64_t opset,
                        st_onnx_builder **out) {
  *out = NULL;
  label = label ? label : "(built model)";
  if (opset < ST_ONNX_MIN_OPSET || opset > ST_ONNX_MAX_OPSET)
    return st_error_set(ST_ENOTSUP, "%s: opset %lld is outside [%d, %d]",
                        label, (long long)opset, ST_ONNX_MIN_OPSET,
                        ST_ONNX_MAX_OPSET);
  st_onnx_builder *b = calloc(1, sizeof *b);
  st_onnx_model *m = calloc(1, sizeof *m);
  struct st_onnx_model_private *priv = calloc(1, sizeof *priv);
  if (!b || !m || !priv) {
    free(b);
    free(m);
    free(priv);
    return st_error_set(ST_ENOMEM, "%s: out of memory", label);
  }
  m->priv = priv;
  b->m = m;
  m->opset = opset;
  m->label = arena_strdup(&priv->arena, label);
  m->producer_name = m->producer_version = m->graph_name = "";
  if (!m->label) {
    st_onnx_builder_free(b);
    return st_error_set(ST_ENOMEM, "%s: out of memory", label);
  }
  *out = b;
  return ST_OK;
}

void st_onnx_builder_free(st_onnx_builder *b) {
  if (!b)
    return;
  for (size_t i = 0; i < b->n_inits; i++)
    st_tensor_free(&b->inits[i].tensor);
  for (size_t i = 0; i < b->n_nodes; i++)
    for (size_t k = 0; k < b->nodes[i].n_attrs; k++)
      if (b->nodes[i].attrs[k].tensor)
        st_tensor_free((st_tensor *)b->nodes[i].attrs[k].tensor);
  free(b->inputs);
  free(b->inits);
  free(b->nodes);
  free(b->outputs);
  st_onnx_model_free(b->m); /* holds no arrays yet: just the arena */
  free(b);
}

const char *st_onnx_builder_label(const st_onnx_builder *b) {
  return b->m->label;
}

int st_onnx_builder_has(const st_onnx_builder *b, const char *name) {
  return name && b->m->priv->slots &&
         index_slot_for(b->m->priv, name)->name != NULL;
}

int st_onnx_builder_add_input(st_onnx_builder *b, const char *name,
                              int elem_type, int ndim, const int64_t *dims) {
  if (ndim > ST_MAX_DIMS)
    return st_error_set(ST_ESHAPE, "%s: input '%s' has rank %d (at most %d)",
                        b->m->label, name ? name : "", ndim, ST_MAX_DIMS);
  if (builder_grow((void **)&b->inputs, &b->cap_inputs, b->n_inputs,
                   sizeof *b->inputs))
    return builder_oom(b);
  st_onnx_value_info *vi = &b->inputs[b->n_inputs];
  memset(vi, 0, sizeof *vi);
  int rc = builder_define(
      b, name, (st_onnx_value_ref){ST_ONNX_VALUE_INPUT, b->n_inputs, 0},
      &vi->name);
  if (rc)
    return rc;
  vi->elem_type = elem_type;
  vi->ndim = ndim;
  for (int i = 0; i < ndim; i++)
    vi->dims[i] = dims ? dims[i] : -1;
  b->n_inputs++;
  return ST_OK;
}

int st_onnx_builder_add_initializer(st_onnx_builder *b, const char *name,
                                    st_tensor *t) {
  if (!t || (t->backend && t->owns) || (!t->data && st_tensor_nbytes(t))) {
    st_tensor_free(t);
    return st_error_set(ST_EINVAL, "%s: initializer '%s' is not a host "
                        "tensor", b->m->label, name ? name : "");
  }
  int rc = ST_OK;
  if (builder_grow((void **)&b->inits, &b->cap_inits, b->n_inits,
                   sizeof *b->inits))
    rc = builder_oom(b);
  st_onnx_initializer *init = rc ? NULL : &b->inits[b->n_inits];
  if (!rc)
    rc = builder_define(
        b, name, (st_onnx_value_ref){ST_ONNX_VALUE_INITIALIZER, b->n_inits, 0},
        &init->name);
  if (rc) {
    st_tensor_free(t);
    return rc;
  }
  init->tensor = *t;
  memset(t, 0, sizeof *t); /* ownership moved */
  b->n_inits++;
  return ST_OK;
}

/* Deep copy of one attribute into the arena (tensors onto the heap). */
static int builder_attr_copy(st_onnx_builder *b, const st_onnx_attr *src,
                             st_onnx_attr *dst) {
  arena_chunk **arena = &b->m->priv->arena;
  memset(dst, 0, sizeof *dst);
  dst->name = arena_strdup(arena, src->name);
  if (!dst->name)
    return builder_oom(b);
  dst->type = src->type;
  dst->i = src->i;
  dst->f = src->f;
  dst->count = src->count;
  switch (src->type) {
  case ST_ONNX_ATTR_STRING:
    dst->s = arena_memdup0(arena, src->s ? src->s : "", src->s_len);
    dst->s_len = src->s_len;
    return dst->s ? ST_OK : builder_oom(b);
  case ST_ONNX_ATTR_INTS: {
    int64_t *v = arena_array(arena, src->count, sizeof *v);
    if (!v)
      return builder_oom(b);
    if (src->count)
      memcpy(v, src->ints, src->count * sizeof *v);
    dst->ints = v;
    return ST_OK;
  }
  case ST_ONNX_ATTR_FLOATS: {
    float *v = arena_array(arena, src->count, sizeof *v);
    if (!v)
      return builder_oom(b);
    if (src->count)
      memcpy(v, src->floats, src->count * sizeof *v);
    dst->floats = v;
    return ST_OK;
  }
  case ST_ONNX_ATTR_STRINGS: {
    const char **v = arena_array(arena, src->count, sizeof *v);
    if (!v)
      return builder_oom(b);
    for (size_t i = 0; i < src->count; i++)
      if (!(v[i] = arena_strdup(arena, src->strings[i])))
        return builder_oom(b);
    dst->strings = v;
    return ST_OK;
  }
  case ST_ONNX_ATTR_TENSOR: {
    st_tensor *t = arena_array(arena, 1, sizeof *t);
    if (!t || !src->tensor)
      return t ? st_error_set(ST_EINVAL, "%s: TENSOR attribute '%s' holds "
                              "no tensor", b->m->label, src->name)
               : builder_oom(b);
    int rc = st_tensor_alloc(NULL, t, src->tensor->dtype, src->tensor->ndim,
                             src->tensor->shape);
    if (rc)
      return rc;
    if (st_tensor_nbytes(t))
      memcpy(t->data, src->tensor->data, st_tensor_nbytes(t));
    dst->tensor = t;
    return ST_OK;
  }
  case ST_ONNX_ATTR_INT:
  case ST_ONNX_ATTR_FLOAT:
    return ST_OK;
  default:
    return st_error_set(ST_EINVAL, "%s: attribute '%s' of type %s cannot be "
                        "built", b->m->label, src->name,
                        st_onnx_attr_type_name(src->type));
  }
}

int st_onnx_builder_add_node(st_onnx_builder *b, const char *op_type,
                             const char *name, const char *const *inputs,
                             size_t n_inputs, const char *const *outputs,
                             size_t n_outputs, const st_onnx_attr *attrs,
                             size_t n_attrs) {
  arena_chunk **arena = &b->m->priv->arena;
  if (!op_type || !op_type[0] || !name || !name[0])
    return st_error_set(ST_EINVAL, "%s: a node needs an op type and a name",
                        b->m->label);
  if (builder_grow((void **)&b->nodes, &b->cap_nodes, b->n_nodes,
                   sizeof *b->nodes))
    return builder_oom(b);
  size_t ni = b->n_nodes;
  st_onnx_node *node = &b->nodes[ni];
  memset(node, 0, sizeof *node);
  node->label = b->m->label;
  node->op_type = arena_strdup(arena, op_type);
  node->name = arena_strdup(arena, name);
  const char **ins = arena_array(arena, n_inputs, sizeof *ins);
  const char **outs = arena_array(arena, n_outputs, sizeof *outs);
  st_onnx_attr *as = arena_array(arena, n_attrs, sizeof *as);
  if (!node->op_type || !node->name || !ins || !outs || !as)
    return builder_oom(b);
  node->inputs = ins;
  node->outputs = outs;
  node->attrs = as;
  /* The node counts once its attributes are copied, so that a failure
   * leaves nothing half-built for st_onnx_builder_free to walk. */
  for (size_t k = 0; k < n_attrs; k++) {
    int rc = builder_attr_copy(b, &attrs[k], &as[k]);
    if (rc) {
      for (size_t j = 0; j <= k; j++)
        if (as[j].tensor)
          st_tensor_free((st_tensor *)as[j].tensor);
      return rc;
    }
  }
  node->n_attrs = n_attrs;
  for (size_t k = 0; k < n_inputs; k++) {
    const char *in = inputs[k] ? inputs[k] : "";
    ins[k] = "";
    if (!in[0])
      continue;
    index_slot *slot = b->m->priv->slots ? index_slot_for(b->m->priv, in)
                                         : NULL;
    if (!slot || !slot->name) {
      b->n_nodes++; /* its attribute tensors are freed with the builder */
      return st_error_set(ST_EFORMAT,
                          "%s: node '%s' (%s) reads '%s', which nothing "
                          "defined before it",
                          b->m->label, name, op_type, in);
    }
    ins[k] = slot->name;
  }
  node->n_inputs = n_inputs;
  node->n_outputs = n_outputs;
  b->n_nodes++;
  for (size_t k = 0; k < n_outputs; k++) {
    outs[k] = "";
    if (!outputs[k] || !outputs[k][0])
      continue;
    int rc = builder_define(
        b, outputs[k], (st_onnx_value_ref){ST_ONNX_VALUE_NODE_OUTPUT, ni, k},
        &outs[k]);
    if (rc)
      return rc;
  }
  return ST_OK;
}

int st_onnx_builder_add_output(st_onnx_builder *b, const char *name) {
  if (!st_onnx_builder_has(b, name))
    return st_error_set(ST_EFORMAT, "%s: output '%s' is not defined",
                        b->m->label, name ? name : "");
  if (builder_grow((void **)&b->outputs, &b->cap_outputs, b->n_outputs,
                   sizeof *b->outputs))
    return builder_oom(b);
  st_onnx_value_info *vi = &b->outputs[b->n_outputs];
  memset(vi, 0, sizeof *vi);
  vi->name = index_slot_for(b->m->priv, name)->name;
  vi->elem_type = ST_ONNX_UNDEFINED;
  vi->ndim = -1;
  b->n_outputs++;
  return ST_OK;
}

/* An arena copy of a heap array (NULL-safe for empty arrays). */
static void *builder_freeze(st_onnx_builder *b, const void *src, size_t count,
                            size_t size) {
  void *p = arena_array(&b->m->priv->arena, count, size);
  if (p && count)
    memcpy(p, src, count * size);
  return p;
}

int st_onnx_builder_finish(st_onnx_builder *b, st_onnx_model **out) {
  *out = NULL;
  if (!b->n_outputs) {
    int rc = st_error_set(ST_EFORMAT, "%s: the graph has no outputs",
                          b->m->label);
    st_onnx_builder_free(b);
    return rc;
  }
  st_onnx_model *m = b->m;
  st_onnx_value_info *inputs =
      builder_freeze(b, b->inputs, b->n_inputs, sizeof *inputs);
  st_onnx_initializer *inits =
      builder_freeze(b, b->inits, b->n_inits, sizeof *inits);
  st_onnx_node *nodes = builder_freeze(b, b->nodes, b->n_nodes, sizeof *nodes);
  st_onnx_value_info *outputs =
      builder_freeze(b, b->outputs, b->n_outputs, sizeof *outputs);
  if (!inputs || !inits || !nodes || !outputs) {
    int rc = builder_oom(b);
    st_onnx_builder_free(b);
    return rc;
  }
  /* From here the model owns the tensors: the heap arrays go without
   * freeing what they point to. */
  m->inputs = inputs;
  m->n_inputs = b->n_inputs;
  m->initializers = inits;
  m->n_initializers = b->n_inits;
  m->nodes = nodes;
  m->n_nodes = b->n_nodes;
  m->outputs = outputs;
  m->n_outputs = b->n_outputs;
  free(b->inputs);
  free(b->inits);
  free(b->nodes);
  free(b->outputs);
  free(b);
  *out = m;
  return ST_OK;
}
