/* ONNX models: a .onnx file read into a plain C graph.
 *
 * The teacher network arrives as an ONNX file. st_onnx_model_load/parse
 * decode its protobuf (with protobuf-c, from the schema subset in
 * src/models/onnx.proto) and copy what the teacher needs into the structs
 * below; no protobuf type leaks out of onnx_graph.c.
 *
 * The loader checks the file's structure, not what its ops mean: the default
 * ONNX domain must be imported at an opset in [ST_ONNX_MIN_OPSET,
 * ST_ONNX_MAX_OPSET]; every node must be in that domain; nodes must come in
 * topological order (each input is a graph input, an initializer or an
 * output of an earlier node, as ONNX requires); every value is defined once;
 * initializer bytes must match their dtype and shape. Whether an op or an
 * attribute value is supported is the executor's question, asked at its own
 * load step. External data, sparse initializers and tensor segments are
 * refused.
 *
 * Errors come back as status codes with a detail line naming the file (or
 * the buffer's label), the node or tensor and the problem: ST_EFORMAT for a
 * truncated or corrupt file and for a graph ONNX itself forbids, ST_ENOTSUP
 * for a valid file using what we do not handle (opset, domain, external
 * data), ST_EDTYPE for an initializer dtype we do not load, ST_ESHAPE for
 * sizes that do not agree, ST_ENOENT/ST_EIO for the file system.
 *
 * Ownership: an st_onnx_model owns everything reachable from it (strings,
 * arrays, initializer and attribute tensors on the host heap) until
 * st_onnx_model_free. Callers read the structs and never modify them.
 */
#ifndef ST_MODELS_ONNX_GRAPH_H
#define ST_MODELS_ONNX_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "gpu/tensor.h"

/* Opsets of the default ONNX domain we accept (PyTorch 1.13 exports 7-17;
 * the executor implements each op as the spec stood at these versions). */
#define ST_ONNX_MIN_OPSET 11
#define ST_ONNX_MAX_OPSET 18
/* Largest file we read: protobuf cannot serialise a message above 2 GiB, so
 * a bigger file is not a self-contained ONNX model. */
#define ST_ONNX_MAX_FILE_BYTES ((size_t)2 << 30)
/* Deepest message nesting we decode. Real models nest a few levels per
 * subgraph (graph > node > attribute > graph); the bound keeps a crafted
 * file from exhausting the stack in the recursive decoder. */
#define ST_ONNX_MAX_NESTING 64
/* Largest memory the decoded protobuf may take, estimated before decoding.
 * A valid model decodes to about its file size; garbage made of empty
 * messages would decode to ~50x its size without this bound. */
#define ST_ONNX_MAX_DECODED_BYTES ((uint64_t)4 << 30)

/* Element types: ONNX's TensorProto.DataType codes, as stored in files. */
typedef enum st_onnx_elem_type {
  ST_ONNX_UNDEFINED = 0,
  ST_ONNX_FLOAT = 1,
  ST_ONNX_UINT8 = 2,
  ST_ONNX_INT8 = 3,
  ST_ONNX_UINT16 = 4,
  ST_ONNX_INT16 = 5,
  ST_ONNX_INT32 = 6,
  ST_ONNX_INT64 = 7,
  ST_ONNX_STRING = 8,
  ST_ONNX_BOOL = 9,
  ST_ONNX_FLOAT16 = 10,
  ST_ONNX_DOUBLE = 11,
  ST_ONNX_UINT32 = 12,
  ST_ONNX_UINT64 = 13,
  ST_ONNX_COMPLEX64 = 14,
  ST_ONNX_COMPLEX128 = 15,
  ST_ONNX_BFLOAT16 = 16
} st_onnx_elem_type;

/* ONNX's name of an element type ("FLOAT", "INT64"; "?" when unknown). */
const char *st_onnx_elem_type_name(int elem_type);
/* The st_dtype holding an ONNX element type: FLOAT->F32, FLOAT16->F16,
 * UINT8->U8, INT32->I32, INT64->I64; ST_EDTYPE for any other. */
int st_onnx_elem_type_to_dtype(int elem_type, st_dtype *out);

/* A graph input or output as the file declares it. */
typedef struct st_onnx_value_info {
  const char *name;                    /* unique value name */
  int elem_type;                       /* st_onnx_elem_type; UNDEFINED when
                                          the file gives no type */
  int ndim;                            /* rank; -1 when no shape is given */
  int64_t dims[ST_MAX_DIMS];           /* extents; -1 when symbolic/unknown */
  const char *dim_params[ST_MAX_DIMS]; /* symbolic name ("height") or NULL */
} st_onnx_value_info;

/* A constant tensor of the graph (weights, shapes, scales). */
typedef struct st_onnx_initializer {
  const char *name;  /* unique value name */
  st_tensor tensor;  /* host tensor owned by the model. FLOAT16 stays F16
                        (converting is the executor's choice); only FLOAT,
                        FLOAT16, UINT8, INT32 and INT64 are loaded */
} st_onnx_initializer;

/* Attribute types: ONNX's AttributeProto.AttributeType codes. */
typedef enum st_onnx_attr_type {
  ST_ONNX_ATTR_UNDEFINED = 0,
  ST_ONNX_ATTR_FLOAT = 1,
  ST_ONNX_ATTR_INT = 2,
  ST_ONNX_ATTR_STRING = 3,
  ST_ONNX_ATTR_TENSOR = 4,
  ST_ONNX_ATTR_GRAPH = 5,
  ST_ONNX_ATTR_FLOATS = 6,
  ST_ONNX_ATTR_INTS = 7,
  ST_ONNX_ATTR_STRINGS = 8,
  ST_ONNX_ATTR_TENSORS = 9,
  ST_ONNX_ATTR_GRAPHS = 10,
  ST_ONNX_ATTR_SPARSE_TENSOR = 11,
  ST_ONNX_ATTR_SPARSE_TENSORS = 12,
  ST_ONNX_ATTR_TYPE_PROTO = 13,
  ST_ONNX_ATTR_TYPE_PROTOS = 14
} st_onnx_attr_type;

/* ONNX's name of an attribute type ("INTS"; "?" when unknown). */
const char *st_onnx_attr_type_name(int type);

/* One node attribute. Only the member of its type is meaningful. Values of
 * GRAPH, GRAPHS, TENSORS, SPARSE_TENSOR(S) and TYPE_PROTO(S) attributes are
 * not decoded (no op we run takes one): the type, and for lists the count,
 * is kept so that the executor can name what it refuses. */
typedef struct st_onnx_attr {
  const char *name;           /* unique within its node */
  st_onnx_attr_type type;     /* which member below holds the value */
  int64_t i;                  /* INT */
  float f;                    /* FLOAT */
  const char *s;              /* STRING: s_len bytes, then a NUL */
  size_t s_len;               /* STRING: length without the NUL */
  const int64_t *ints;        /* INTS: count values */
  const float *floats;        /* FLOATS: count values */
  const char *const *strings; /* STRINGS: count NUL-terminated strings */
  size_t count;               /* number of elements of a list type */
  const st_tensor *tensor;    /* TENSOR: host tensor owned by the model */
} st_onnx_attr;

/* One node, in file order (which ONNX requires to be topological). */
typedef struct st_onnx_node {
  const char *op_type;        /* operator name ("Conv") */
  const char *name;           /* from the file; "node<i>" when it had none */
  const char *label;          /* the model's label, for messages */
  const char *const *inputs;  /* value names; "" is an absent optional one */
  size_t n_inputs;            /* number of inputs, absent ones included */
  const char *const *outputs; /* value names; "" is an unused optional one */
  size_t n_outputs;           /* number of outputs */
  const st_onnx_attr *attrs;  /* attributes in file order */
  size_t n_attrs;             /* number of attributes */
} st_onnx_node;

struct st_onnx_model_private;

/* A loaded model. Every string is non-NULL ("" when the file has none). */
typedef struct st_onnx_model {
  const char *label;              /* file path or buffer label */
  int64_t ir_version;             /* ONNX IR version of the file */
  int64_t opset;                  /* opset of the default ONNX domain */
  const char *producer_name;      /* "pytorch", ... */
  const char *producer_version;   /* "1.13.0", ... */
  const char *graph_name;         /* the main graph's name */
  const st_onnx_value_info *inputs; /* graph inputs that are not
                                       initializers, file order */
  size_t n_inputs;                /* number of such inputs */
  const st_onnx_value_info *outputs; /* graph outputs, file order */
  size_t n_outputs;               /* number of outputs (at least one) */
  const st_onnx_initializer *initializers; /* file order */
  size_t n_initializers;          /* number of initializers */
  const st_onnx_node *nodes;      /* file order = topological order */
  size_t n_nodes;                 /* number of nodes */
  struct st_onnx_model_private *priv; /* storage and the name index */
} st_onnx_model;

/* Reads and checks a whole .onnx file (at most ST_ONNX_MAX_FILE_BYTES). */
int st_onnx_model_load(const char *path, st_onnx_model **out);
/* Same for a file image in memory; `label` names it in errors. The buffer is
 * only read during the call. */
int st_onnx_model_parse(const void *buf, size_t len, const char *label,
                        st_onnx_model **out);
/* Accepts NULL. */
void st_onnx_model_free(st_onnx_model *model);

/* What defines a value name. */
typedef enum st_onnx_value_kind {
  ST_ONNX_VALUE_INPUT = 0,    /* model->inputs[index] */
  ST_ONNX_VALUE_INITIALIZER,  /* model->initializers[index] */
  ST_ONNX_VALUE_NODE_OUTPUT   /* model->nodes[index].outputs[output] */
} st_onnx_value_kind;

typedef struct st_onnx_value_ref {
  st_onnx_value_kind kind; /* which array index refers to */
  size_t index;            /* position in that array */
  size_t output;           /* output slot, for ST_ONNX_VALUE_NODE_OUTPUT */
} st_onnx_value_ref;

/* Finds what defines a value; ST_ENOENT (no detail line) when nothing
 * does. */
int st_onnx_model_find(const st_onnx_model *model, const char *name,
                       st_onnx_value_ref *out);
/* The initializer of that name, or NULL. */
const st_onnx_initializer *st_onnx_model_initializer(
    const st_onnx_model *model, const char *name);

/* The attribute of that name, or NULL. */
const st_onnx_attr *st_onnx_node_attr(const st_onnx_node *node,
                                      const char *name);

/* Typed attribute reads. An absent attribute yields the default (scalars)
 * or NULL and a count of 0 (lists, tensors) and ST_OK; one of another type
 * is ST_EDTYPE with a detail line naming the file, node and attribute. */
int st_onnx_attr_int(const st_onnx_node *node, const char *name,
                     int64_t def, int64_t *out);
int st_onnx_attr_float(const st_onnx_node *node, const char *name, float def,
                       float *out);
int st_onnx_attr_string(const st_onnx_node *node, const char *name,
                        const char *def, const char **out);
int st_onnx_attr_ints(const st_onnx_node *node, const char *name,
                      const int64_t **values, size_t *count);
int st_onnx_attr_floats(const st_onnx_node *node, const char *name,
                        const float **values, size_t *count);
int st_onnx_attr_strings(const st_onnx_node *node, const char *name,
                         const char *const **values, size_t *count);
int st_onnx_attr_tensor(const st_onnx_node *node, const char *name,
                        const st_tensor **out);

/* ---- building a model in memory -----------------------------------------
 * Importers of other formats (src/models/tfjs.c: TensorFlow.js graph
 * models) produce the same st_onnx_model, node by node, so that one
 * executor plans and runs every teacher. The builder enforces the loader's
 * structural rules as it goes: every value is defined once, and a node may
 * only read values defined before it (graph inputs, initializers, outputs
 * of earlier nodes), so nodes end up in topological order. Op semantics are
 * the executor's question, as for a loaded file.
 *
 * Every call returns a status with a detail line naming the builder's label;
 * after a failure the builder stays usable (and must still be freed or
 * finished). */
typedef struct st_onnx_builder st_onnx_builder;

/* An empty model called `label` (in messages, as a file path would be) at
 * `opset` of the default domain, within [ST_ONNX_MIN_OPSET,
 * ST_ONNX_MAX_OPSET]. */
int st_onnx_builder_new(const char *label, int64_t opset,
                        st_onnx_builder **out);
/* Accepts NULL. */
void st_onnx_builder_free(st_onnx_builder *b);
/* The label given to st_onnx_builder_new. */
const char *st_onnx_builder_label(const st_onnx_builder *b);
/* 1 when `name` is already defined. */
int st_onnx_builder_has(const st_onnx_builder *b, const char *name);
/* A graph input; dims may be NULL (all -1: unknown), ndim -1 for unknown
 * rank. */
int st_onnx_builder_add_input(st_onnx_builder *b, const char *name,
                              int elem_type, int ndim, const int64_t *dims);
/* A constant. Takes ownership of *t (a host tensor, owned or empty), also
 * on failure; *t is cleared. */
int st_onnx_builder_add_initializer(st_onnx_builder *b, const char *name,
                                    st_tensor *t);
/* A node. Everything is copied (TENSOR attributes too); "" names an absent
 * optional input or an unused output. */
int st_onnx_builder_add_node(st_onnx_builder *b, const char *op_type,
                             const char *name, const char *const *inputs,
                             size_t n_inputs, const char *const *outputs,
                             size_t n_outputs, const st_onnx_attr *attrs,
                             size_t n_attrs);
/* Marks a defined value as a graph output (type and shape left unknown). */
int st_onnx_builder_add_output(st_onnx_builder *b, const char *name);
/* Hands the model over and frees the builder, also on failure (a graph
 * needs at least one output). */
int st_onnx_builder_finish(st_onnx_builder *b, st_onnx_model **out);

#endif
