/* ONNX executor: plan (shapes, folding, fusion, buffers) and run.
 *
 * Values are numbered densely: the graph inputs, then the initializers, then
 * every node output in node order, then values the planner makes up (the
 * product inside an unfused BatchNormalization, the keepdims result of an
 * ArgMax). A value is either a constant, held on the host (and uploaded to
 * the backend when a runtime op reads it), or a runtime tensor whose
 * storage belongs to its root: itself when a step writes it, another value
 * when it is a view, the caller's input tensor for the graph input.
 */
#include "models/onnx_exec.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

/* Longest "what is missing" text of a refusal. */
#define EXEC_MSG_BYTES 320
/* Values the planner may add per node (an unfused BatchNormalization
 * adds its scale, shift and product; ArgMax without keepdims one; a Conv
 * with asymmetric padding two zero blocks and a padded input per axis). */
#define EXEC_EXTRA_VALUES_PER_NODE 6
/* ONNX defaults the executor relies on (the spec's, opsets 11-18). */
#define ONNX_BN_EPSILON_DEFAULT 1e-5f
#define ONNX_HARDSIGMOID_ALPHA_DEFAULT 0.2f
#define ONNX_HARDSIGMOID_BETA_DEFAULT 0.5f
/* Opsets at which ops moved attributes to inputs or changed meaning. */
#define OPSET_AXES_AS_INPUT 13  /* Squeeze/Unsqueeze take axes as input */
#define OPSET_SOFTMAX_SINGLE_AXIS 13 /* earlier: softmax over axis.. end */

/* A root's last reader when the value is a graph output: after every step. */
#define LIVE_TO_END INT_MAX

typedef struct exec_value {
  int defined;    /* produced by an earlier node or the graph */
  int is_const;   /* 1: host constant in `host` */
  st_tensor host; /* constant's host data */
  int host_owned; /* 1: host data belongs to the plan */
  st_tensor rt;   /* runtime tensor (shape, dtype; data fixed after
                     planning), or a constant's device copy once uploaded */
  int uploaded;   /* constant: rt is its device copy */
  int root;       /* runtime: value owning the storage */
  int64_t offset; /* runtime: bytes from the start of the root's storage
                     (a view of a contiguous part: a channel split) */
  int buffer;     /* root: planned buffer index; -1 none */
  int def_step;   /* root: step writing it; -1 for the graph input */
  int last_use;   /* root: last step reading it or a view of it */
} exec_value;

/* A zero-valued spatial Pad whose only reader is a Conv (or another such
 * Pad): not run, its amounts added to the Conv's own padding instead. */
typedef struct deferred_pad {
  int active;     /* 1: this value is a deferred pad of `src` */
  int src;        /* the unpadded value */
  int64_t begin[2], end[2]; /* rows/columns added before and after, H and W */
} deferred_pad;

typedef enum step_kind {
  STEP_CONV = 0,
  STEP_UNARY,
  STEP_BINARY,
  STEP_POOL,
  STEP_GLOBAL_AVG_POOL,
  STEP_RESIZE,
  STEP_SOFTMAX,
  STEP_TRANSPOSE,
  STEP_CONCAT,
  STEP_SLICE,
  STEP_ARGMAX,
  STEP_CONV_TRANSPOSE,
} step_kind;

typedef struct exec_step {
  step_kind kind;
  int in[2];            /* value ids of the inputs (CONCAT: see ins) */
  int *ins;             /* CONCAT: n_ins value ids, owned */
  const st_tensor **in_tensors; /* CONCAT: their tensors, owned array */
  int n_ins;            /* CONCAT: input count */
  int out;              /* value id written */
  st_conv2d_params conv;
  st_tensor w, b;       /* CONV: weights and bias on the backend, owned */
  int has_bias;         /* CONV */
  st_activation act;    /* CONV */
  st_unary_kind unary;  /* UNARY */
  float alpha, beta;    /* UNARY */
  st_binary_kind binary;/* BINARY */
  st_pool2d_params pool;/* POOL */
  st_resize_params resize; /* RESIZE */
  int axis;             /* SOFTMAX, CONCAT, ARGMAX */
  int flatten2d;        /* SOFTMAX before opset 13: run on [outer, inner] */
  int64_t flat[2];      /* SOFTMAX: that 2-D shape */
  int perm[ST_MAX_DIMS];        /* TRANSPOSE */
  int64_t starts[ST_MAX_DIMS];  /* SLICE */
  int64_t steps[ST_MAX_DIMS];   /* SLICE */
} exec_step;

struct st_onnx_plan {
  st_backend *be;             /* borrowed */
  const st_onnx_model *m;     /* borrowed */
  exec_value *values;         /* n_values entries */
  size_t n_values;            /* values in use */
  size_t cap_values;          /* allocated entries */
  size_t *node_base;          /* id of each node's first output */
  int *consumers;             /* readers per value (graph outputs count) */
  int *sole_reader;           /* a node reading the value (the last one) */
  char *absorbed;             /* nodes fused into an earlier one */
  exec_step *steps;           /* run order */
  int n_steps, cap_steps;
  int input_id;               /* the first runtime graph input */
  int n_plan_inputs;          /* inputs given to st_onnx_plan_new_inputs */
  int *plan_input_ids;        /* their value ids; -1 for bound constants */
  const st_tensor **run_inputs; /* per model input: the tensor of the
                                   current run (runtime inputs only) */
  struct deferred_pad *deferred; /* per value: a zero Pad left for the
                                    Conv reading it to absorb */
  int *outputs;               /* value ids of the graph outputs */
  int n_outputs;
  void **buffers;             /* planned activation buffers, owned */
  int64_t *buffer_bytes;
  int n_buffers;
  int *input_views;           /* runtime values stored in a graph input */
  int n_input_views;
  st_onnx_plan_stats stats;
};

/* ---- errors ------------------------------------------------------------ */

static int node_fail(int code, const st_onnx_node *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int node_fail(int code, const st_onnx_node *n, const char *fmt, ...) {
  char msg[EXEC_MSG_BYTES];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return st_error_set(code, "%s: node '%s' (%s): %s", n->label, n->name,
                      n->op_type, msg);
}
#define REFUSE(n, ...) node_fail(ST_ENOTSUP, (n), __VA_ARGS__)

/* Refuses any attribute not in `known` (NULL-terminated): an attribute we
 * do not read would silently change the meaning. */
static int check_attrs(const st_onnx_node *n, const char *const *known) {
  for (size_t i = 0; i < n->n_attrs; i++) {
    int ok = 0;
    for (const char *const *k = known; *k; k++)
      if (!strcmp(*k, n->attrs[i].name))
        ok = 1;
    if (!ok)
      return REFUSE(n, "attribute '%s' is not supported", n->attrs[i].name);
  }
  return ST_OK;
}

/* Refuses nodes that use optional outputs beyond the first `used`. */
static int check_outputs(const st_onnx_node *n, size_t used) {
  for (size_t i = used; i < n->n_outputs; i++)
    if (n->outputs[i][0])
      return REFUSE(n, "output %zu ('%s') is not supported", i,
                    n->outputs[i]);
  return ST_OK;
}

static int has_input(const st_onnx_node *n, size_t i) {
  return i < n->n_inputs && n->inputs[i][0];
}

/* ---- host tensors ------------------------------------------------------ */

static double hget(const st_tensor *t, int64_t i) {
  switch (t->dtype) {
  case ST_F32: return ((const float *)t->data)[i];
  case ST_F16: return st_f16_to_f32(((const uint16_t *)t->data)[i]);
  case ST_U8: return ((const uint8_t *)t->data)[i];
  case ST_I32: return ((const int32_t *)t->data)[i];
  case ST_I64: return (double)((const int64_t *)t->data)[i];
  default: return 0.0;
  }
}

/* Integers read exactly (I64 shapes hold INT64_MAX "to the end" markers). */
static int64_t hgeti(const st_tensor *t, int64_t i) {
  switch (t->dtype) {
  case ST_I64: return ((const int64_t *)t->data)[i];
  case ST_I32: return ((const int32_t *)t->data)[i];
  case ST_U8: return ((const uint8_t *)t->data)[i];
  default: return (int64_t)hget(t, i);
  }
}

static void hset(st_tensor *t, int64_t i, double v) {
  switch (t->dtype) {
  case ST_F32: ((float *)t->data)[i] = (float)v; break;
  case ST_F16: ((uint16_t *)t->data)[i] = st_f32_to_f16((float)v); break;
  case ST_U8: ((uint8_t *)t->data)[i] = (uint8_t)v; break;
  case ST_I32: ((int32_t *)t->data)[i] = (int32_t)v; break;
  case ST_I64: ((int64_t *)t->data)[i] = (int64_t)v; break;
  default: break;
  }
}

static void hseti(st_tensor *t, int64_t i, int64_t v) {
  if (t->dtype == ST_I64)
    ((int64_t *)t->data)[i] = v;
  else if (t->dtype == ST_I32)
    ((int32_t *)t->data)[i] = (int32_t)v;
  else
    hset(t, i, (double)v);
}

static int64_t shape_numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++)
    n *= shape[i];
  return n;
}

/* Row-major strides in elements. */
static void strides_of(int ndim, const int64_t *shape, int64_t *strides) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
}

/* ---- values ------------------------------------------------------------ */

static int value_id(const st_onnx_plan *p, const char *name, int *out) {
  st_onnx_value_ref ref;
  *out = -1;
  if (st_onnx_model_find(p->m, name, &ref))
    return ST_ENOENT;
  switch (ref.kind) {
  case ST_ONNX_VALUE_INPUT: *out = (int)ref.index; break;
  case ST_ONNX_VALUE_INITIALIZER:
    *out = (int)(p->m->n_inputs + ref.index);
    break;
  case ST_ONNX_VALUE_NODE_OUTPUT:
    *out = (int)(p->node_base[ref.index] + ref.output);
    break;
  }
  return ST_OK;
}

/* Id of input i of node n, which must be defined. */
static int input_id(const st_onnx_plan *p, const st_onnx_node *n, size_t i,
                    int *out) {
  if (!has_input(n, i) || value_id(p, n->inputs[i], out))
    return node_fail(ST_EFORMAT, n, "input %zu is missing", i);
  if (!p->values[*out].defined)
    return node_fail(ST_EFORMAT, n, "input '%s' is not defined",
                     n->inputs[i]);
  return ST_OK;
}

static int output_id(const st_onnx_plan *p, const st_onnx_node *n,
                     size_t i) {
  return (int)(p->node_base[n - p->m->nodes] + i);
}

/* Shape and dtype of a value, constant or not. */
static const st_tensor *vt(const st_onnx_plan *p, int id) {
  const exec_value *v = &p->values[id];
  return v->is_const ? &v->host : &v->rt;
}

static int is_const(const st_onnx_plan *p, int id) {
  return p->values[id].is_const;
}

/* Makes `id` a constant that owns `t`. */
static void set_const(st_onnx_plan *p, int id, st_tensor t, int owned) {
  exec_value *v = &p->values[id];
  v->defined = 1;
  v->is_const = 1;
  v->host = t;
  v->host_owned = owned;
}

/* Makes `id` a runtime value stored in `root` (itself for a step output). */
static void set_runtime(st_onnx_plan *p, int id, st_dtype dt, int ndim,
                        const int64_t *shape, int root) {
  exec_value *v = &p->values[id];
  v->defined = 1;
  v->is_const = 0;
  v->rt = st_tensor_view(NULL, dt, ndim, shape);
  v->root = root;
  v->offset = 0;
  v->buffer = -1;
  v->def_step = -1;
  v->last_use = -1;
  if (root != id)
    p->stats.views++;
}

static int new_value(st_onnx_plan *p, int *out) {
  if (p->n_values >= p->cap_values)
    return st_error_set(ST_ENOMEM, "onnx plan: value table is full");
  *out = (int)p->n_values++;
  memset(&p->values[*out], 0, sizeof p->values[*out]);
  return ST_OK;
}

/* Host tensor owned by the caller. */
static int host_alloc(st_tensor *t, st_dtype dt, int ndim,
                      const int64_t *shape) {
  return st_tensor_alloc(NULL, t, dt, ndim, shape);
}

/* Reads a constant of at most `max` elements as integers. */
static int const_ints(const st_onnx_plan *p, const st_onnx_node *n, int id,
                      const char *what, int64_t *vals, size_t max,
                      size_t *count) {
  if (!is_const(p, id))
    return REFUSE(n, "%s is computed at run time; it must be a constant",
                  what);
  const st_tensor *t = &p->values[id].host;
  int64_t numel = st_tensor_numel(t);
  if (t->ndim > 1 || numel < 0 || (size_t)numel > max)
    return REFUSE(n, "%s has %lld elements (at most %zu supported)", what,
                  (long long)numel, max);
  for (int64_t i = 0; i < numel; i++)
    vals[i] = hgeti(t, i);
  *count = (size_t)numel;
  return ST_OK;
}

static int const_scalar(const st_onnx_plan *p, const st_onnx_node *n, int id,
                        const char *what, double *out) {
  if (!is_const(p, id))
    return REFUSE(n, "%s is computed at run time; it must be a constant",
                  what);
  const st_tensor *t = &p->values[id].host;
  if (st_tensor_numel(t) != 1)
    return REFUSE(n, "%s must be a scalar", what);
  *out = hget(t, 0);
  return ST_OK;
}

static int normalize_axis(const st_onnx_node *n, int64_t axis, int rank,
                          int *out) {
  if (axis < -rank || axis >= rank)
    return node_fail(ST_ESHAPE, n, "axis %lld is out of range for rank %d",
                     (long long)axis, rank);
  *out = (int)(axis < 0 ? axis + rank : axis);
  return ST_OK;
}

static int onnx_dtype(const st_onnx_node *n, int64_t elem, st_dtype *out) {
  switch (elem) {
  case ST_ONNX_FLOAT: *out = ST_F32; return ST_OK;
  case ST_ONNX_INT64: *out = ST_I64; return ST_OK;
  case ST_ONNX_INT32: *out = ST_I32; return ST_OK;
  default:
    return REFUSE(n, "element type %s is not supported",
                  st_onnx_elem_type_name((int)elem));
  }
}

/* ---- steps and runtime operands ---------------------------------------- */

static int push_step(st_onnx_plan *p, const exec_step *s) {
  if (p->n_steps == p->cap_steps) {
    int cap = p->cap_steps ? 2 * p->cap_steps : 64;
    exec_step *grown = realloc(p->steps, (size_t)cap * sizeof *grown);
    if (!grown)
      return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
    p->steps = grown;
    p->cap_steps = cap;
  }
  p->steps[p->n_steps++] = *s;
  return ST_OK;
}

/* Uploads a constant read by a runtime step. */
static int upload_const(st_onnx_plan *p, int id) {
  exec_value *v = &p->values[id];
  if (v->uploaded)
    return ST_OK;
  ST_TRY(st_tensor_alloc(p->be, &v->rt, v->host.dtype, v->host.ndim,
                      v->host.shape));
  v->uploaded = 1;
  return st_tensor_upload(p->be, &v->rt, v->host.data,
                          st_tensor_nbytes(&v->host));
}

/* Declares that the step about to be pushed reads value `id`. */
static int use_value(st_onnx_plan *p, int id) {
  exec_value *v = &p->values[id];
  if (v->is_const)
    return upload_const(p, id);
  p->values[v->root].last_use = p->n_steps;
  return ST_OK;
}

/* A runtime F32 operand (constants are uploaded). */
static int f32_operand(st_onnx_plan *p, const st_onnx_node *n, int id) {
  if (vt(p, id)->dtype != ST_F32)
    return REFUSE(n, "a %s operand at run time is not supported (F32 only)",
                  st_dtype_name(vt(p, id)->dtype));
  if (st_tensor_numel(vt(p, id)) == 0)
    return REFUSE(n, "empty tensors at run time are not supported");
  return use_value(p, id);
}

/* The output `id` of the step about to be pushed. */
static void step_output(st_onnx_plan *p, int id, st_dtype dt, int ndim,
                        const int64_t *shape) {
  set_runtime(p, id, dt, ndim, shape, id);
  p->values[id].def_step = p->n_steps;
  p->values[id].last_use = p->n_steps; /* dead unless read later */
}

/* Pushes the step y = concat(ids[0..count)) along `axis` (F32 operands
 * already declared; y has `ndim` extents `shape`). The ids are copied. */
static int push_concat(st_onnx_plan *p, const int *ids, int count, int axis,
                       int y, int ndim, const int64_t *shape) {
  exec_step s = {.kind = STEP_CONCAT, .n_ins = count, .out = y,
                 .axis = axis};
  s.ins = calloc((size_t)count, sizeof *s.ins);
  /* The values table never moves, so the run can read these pointers. */
  s.in_tensors = calloc((size_t)count, sizeof *s.in_tensors);
  if (!s.ins || !s.in_tensors) {
    free(s.ins);
    free(s.in_tensors);
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  }
  for (int k = 0; k < count; k++) {
    s.ins[k] = ids[k];
    s.in_tensors[k] = &p->values[ids[k]].rt;
  }
  step_output(p, y, ST_F32, ndim, shape);
  int rc = push_step(p, &s);
  if (rc) {
    free(s.ins);
    free(s.in_tensors);
  }
  return rc;
}

/* Output `out` becomes a view of runtime value `src` with another shape. */
static void make_view(st_onnx_plan *p, int out, int src, int ndim,
                      const int64_t *shape) {
  const exec_value *s = &p->values[src];
  set_runtime(p, out, s->rt.dtype, ndim, shape, s->root);
  p->values[out].offset = s->offset;
}

/* Same, starting `elems` elements into src's storage. */
static void make_view_at(st_onnx_plan *p, int out, int src, int ndim,
                         const int64_t *shape, int64_t elems) {
  make_view(p, out, src, ndim, shape);
  p->values[out].offset +=
      elems * (int64_t)st_dtype_size(p->values[src].rt.dtype);
}

/* ---- broadcasting ------------------------------------------------------ */

static int broadcast_shape(const st_onnx_node *n, const st_tensor *a,
                           const st_tensor *b, int *ndim, int64_t *shape) {
  int r = a->ndim > b->ndim ? a->ndim : b->ndim;
  for (int i = 0; i < r; i++) {
    int ia = i - (r - a->ndim), ib = i - (r - b->ndim);
    int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
    if (da != db && da != 1 && db != 1)
      return node_fail(ST_ESHAPE, n, "shapes do not broadcast (%lld vs %lld "
                       "on axis %d)", (long long)da, (long long)db, i);
    shape[i] = da == 1 ? db : da;
  }
  *ndim = r;
  return ST_OK;
}

/* Flat index into `t` for the broadcast output index `idx` (rank r). */
static int64_t broadcast_index(const st_tensor *t, int r, const int64_t *idx) {
  int64_t strides[ST_MAX_DIMS], off = 0;
  strides_of(t->ndim, t->shape, strides);
  for (int i = 0; i < t->ndim; i++) {
    int64_t k = idx[i + r - t->ndim];
    off += (t->shape[i] == 1 ? 0 : k) * strides[i];
  }
  return off;
}

static void unravel(int64_t flat, int ndim, const int64_t *shape,
                    int64_t *idx) {
  for (int i = ndim - 1; i >= 0; i--) {
    idx[i] = shape[i] ? flat % shape[i] : 0;
    flat = shape[i] ? flat / shape[i] : 0;
  }
}

/* ---- constant folding on the host -------------------------------------- */

/* The elementwise ops constant folding computes on the host: the
 * backend's binary kinds, and Min, Max and Mod (shape arithmetic). */
typedef enum fold_op {
  FOLD_ADD, FOLD_SUB, FOLD_MUL, FOLD_DIV, FOLD_MIN, FOLD_MAX,
  FOLD_MOD,  /* ONNX Mod fmod=0: the result takes the divisor's sign */
  FOLD_FMOD, /* fmod=1: C's fmod, the dividend's sign */
} fold_op;

static fold_op fold_op_of(st_binary_kind kind) {
  switch (kind) {
  case ST_BINARY_SUB: return FOLD_SUB;
  case ST_BINARY_MUL: return FOLD_MUL;
  case ST_BINARY_DIV: return FOLD_DIV;
  case ST_BINARY_ADD: break;
  }
  return FOLD_ADD;
}

/* One integer element; -1 on a division by zero. */
static int fold_int(fold_op op, int64_t x, int64_t z, int64_t *v) {
  if ((op == FOLD_DIV || op == FOLD_MOD || op == FOLD_FMOD) && z == 0)
    return -1;
  switch (op) {
  case FOLD_ADD: *v = x + z; break;
  case FOLD_SUB: *v = x - z; break;
  case FOLD_MUL: *v = x * z; break;
  case FOLD_DIV: *v = x / z; break; /* ONNX integer Div truncates, as C */
  case FOLD_MIN: *v = x < z ? x : z; break;
  case FOLD_MAX: *v = x > z ? x : z; break;
  case FOLD_MOD:
  case FOLD_FMOD:
    *v = x % z; /* C truncates; fmod=0 follows the divisor */
    if (op == FOLD_MOD && *v != 0 && ((*v < 0) != (z < 0)))
      *v += z;
    break;
  }
  return 0;
}

/* One float element, in fp32 as a runtime op would compute it (min, max
 * and fmod are exact). FOLD_MOD is refused for floats by its caller. */
static float fold_float(fold_op op, float x, float z) {
  switch (op) {
  case FOLD_ADD: return x + z;
  case FOLD_SUB: return x - z;
  case FOLD_MUL: return x * z;
  case FOLD_DIV: return x / z;
  case FOLD_MIN: return fminf(x, z);
  case FOLD_MAX: return fmaxf(x, z);
  case FOLD_MOD:
  case FOLD_FMOD: return fmodf(x, z);
  }
  return 0.0f;
}

/* out = a op b on two constants, broadcast. */
static int fold_binary(st_onnx_plan *p, const st_onnx_node *n, int a_id,
                       int b_id, fold_op op, int out) {
  const st_tensor *a = vt(p, a_id), *b = vt(p, b_id);
  if (a->dtype != b->dtype)
    return node_fail(ST_EDTYPE, n, "operands are %s and %s",
                     st_dtype_name(a->dtype), st_dtype_name(b->dtype));
  int r;
  int64_t shape[ST_MAX_DIMS], idx[ST_MAX_DIMS];
  ST_TRY(broadcast_shape(n, a, b, &r, shape));
  st_tensor y;
  ST_TRY(host_alloc(&y, a->dtype, r, shape));
  int integer = a->dtype != ST_F32 && a->dtype != ST_F16;
  for (int64_t i = 0; i < shape_numel(r, shape); i++) {
    unravel(i, r, shape, idx);
    int64_t ia = broadcast_index(a, r, idx), ib = broadcast_index(b, r, idx);
    if (integer) {
      int64_t v = 0;
      if (fold_int(op, hgeti(a, ia), hgeti(b, ib), &v)) {
        st_tensor_free(&y);
        return node_fail(ST_ERANGE, n, "integer %s by zero",
                         op == FOLD_DIV ? "division" : "modulo");
      }
      hseti(&y, i, v);
    } else {
      hset(&y, i, fold_float(op, (float)hget(a, ia), (float)hget(b, ib)));
    }
  }
  set_const(p, out, y, 1);
  return ST_OK;
}

/* Copies elements of `x` picked by a per-output-element source index. */
typedef int64_t (*src_index_fn)(const int64_t *out_idx, const void *ctx);

static int fold_gather_elems(st_onnx_plan *p, int out, const st_tensor *x,
                             int ndim, const int64_t *shape, src_index_fn fn,
                             const void *ctx) {
  st_tensor y;
  ST_TRY(host_alloc(&y, x->dtype, ndim, shape));
  size_t es = st_dtype_size(x->dtype);
  int64_t idx[ST_MAX_DIMS];
  for (int64_t i = 0; i < shape_numel(ndim, shape); i++) {
    unravel(i, ndim, shape, idx);
    memcpy((char *)y.data + i * es, (const char *)x->data + fn(idx, ctx) * es,
           es);
  }
  set_const(p, out, y, 1);
  return ST_OK;
}

typedef struct slice_ctx {
  const st_tensor *x;
  int64_t start[ST_MAX_DIMS], step[ST_MAX_DIMS];
} slice_ctx;

static int64_t slice_src(const int64_t *o, const void *vctx) {
  const slice_ctx *c = vctx;
  int64_t strides[ST_MAX_DIMS], off = 0;
  strides_of(c->x->ndim, c->x->shape, strides);
  for (int d = 0; d < c->x->ndim; d++)
    off += (c->start[d] + o[d] * c->step[d]) * strides[d];
  return off;
}

typedef struct gather_ctx {
  const st_tensor *x, *indices;
  int axis;
} gather_ctx;

static int64_t gather_src(const int64_t *o, const void *vctx) {
  const gather_ctx *c = vctx;
  int qr = c->indices->ndim;
  int64_t qstr[ST_MAX_DIMS], xstr[ST_MAX_DIMS], q = 0, off = 0;
  strides_of(qr, c->indices->shape, qstr);
  strides_of(c->x->ndim, c->x->shape, xstr);
  for (int i = 0; i < qr; i++)
    q += o[c->axis + i] * qstr[i];
  int64_t k = hgeti(c->indices, q);
  if (k < 0)
    k += c->x->shape[c->axis];
  for (int d = 0; d < c->x->ndim; d++) {
    int64_t j = d < c->axis ? o[d] : d == c->axis ? k : o[d + qr - 1];
    off += j * xstr[d];
  }
  return off;
}

typedef struct transpose_ctx {
  const st_tensor *x;
  const int *perm;
} transpose_ctx;

static int64_t transpose_src(const int64_t *o, const void *vctx) {
  const transpose_ctx *c = vctx;
  int64_t xstr[ST_MAX_DIMS], off = 0;
  strides_of(c->x->ndim, c->x->shape, xstr);
  for (int d = 0; d < c->x->ndim; d++)
    off += o[d] * xstr[c->perm[d]];
  return off;
}

/* ---- shape ops (shared by folding and views) --------------------------- */

/* Output shape of Reshape. */
static int reshape_shape(st_onnx_plan *p, const st_onnx_node *n,
                         const st_tensor *x, int shape_id, int *ndim,
                         int64_t *shape) {
  int64_t allowzero;
  ST_TRY(st_onnx_attr_int(n, "allowzero", 0, &allowzero));
  int64_t want[ST_MAX_DIMS];
  size_t count;
  ST_TRY(const_ints(p, n, shape_id, "the target shape", want, ST_MAX_DIMS,
                 &count));
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < count; i++) {
    int64_t d = want[i];
    if (d == 0 && !allowzero) {
      if ((int)i >= x->ndim)
        return node_fail(ST_ESHAPE, n, "0 at axis %zu copies no axis", i);
      d = x->shape[i];
    }
    if (d == -1) {
      if (infer >= 0)
        return node_fail(ST_ESHAPE, n, "two -1 extents");
      infer = (int)i;
      continue;
    }
    if (d < 0)
      return node_fail(ST_ESHAPE, n, "negative extent %lld", (long long)d);
    shape[i] = d;
    known *= d;
  }
  int64_t numel = st_tensor_numel(x);
  if (infer >= 0) {
    if (known == 0 || numel % known)
      return node_fail(ST_ESHAPE, n, "cannot infer the -1 extent");
    shape[infer] = numel / known;
    known *= shape[infer];
  }
  if (known != numel)
    return node_fail(ST_ESHAPE, n, "%lld elements cannot take the new shape",
                     (long long)numel);
  *ndim = (int)count;
  return ST_OK;
}

/* Axes of Squeeze/Unsqueeze: an attribute before opset 13, an input since. */
static int read_axes(st_onnx_plan *p, const st_onnx_node *n, int64_t *axes,
                     size_t *count) {
  if (p->m->opset >= OPSET_AXES_AS_INPUT) {
    *count = 0;
    if (!has_input(n, 1))
      return ST_OK;
    int id;
    ST_TRY(input_id(p, n, 1, &id));
    return const_ints(p, n, id, "axes", axes, ST_MAX_DIMS, count);
  }
  const int64_t *v;
  ST_TRY(st_onnx_attr_ints(n, "axes", &v, count));
  if (*count > ST_MAX_DIMS)
    return REFUSE(n, "more than %d axes", ST_MAX_DIMS);
  memcpy(axes, v, *count * sizeof *v);
  return ST_OK;
}

/* Attributes of Squeeze/Unsqueeze: from opset 13 on "axes" is an input,
 * and an attribute of that name would be ignored by the spec's meaning. */
static const char *const *axes_attrs(const st_onnx_plan *p) {
  static const char *const as_attr[] = {"axes", NULL};
  static const char *const none[] = {NULL};
  return p->m->opset >= OPSET_AXES_AS_INPUT ? none : as_attr;
}

static int squeeze_shape(st_onnx_plan *p, const st_onnx_node *n,
                         const st_tensor *x, int *ndim, int64_t *shape) {
  int64_t axes[ST_MAX_DIMS];
  size_t count;
  ST_TRY(read_axes(p, n, axes, &count));
  int drop[ST_MAX_DIMS] = {0};
  for (size_t i = 0; i < count; i++) {
    int a = 0;
    ST_TRY(normalize_axis(n, axes[i], x->ndim, &a));
    if (x->shape[a] != 1)
      return node_fail(ST_ESHAPE, n, "axis %d has extent %lld, not 1", a,
                       (long long)x->shape[a]);
    drop[a] = 1;
  }
  int r = 0;
  for (int d = 0; d < x->ndim; d++)
    if (!(count ? drop[d] : x->shape[d] == 1))
      shape[r++] = x->shape[d];
  *ndim = r;
  return ST_OK;
}

static int unsqueeze_shape(st_onnx_plan *p, const st_onnx_node *n,
                           const st_tensor *x, int *ndim, int64_t *shape) {
  int64_t axes[ST_MAX_DIMS];
  size_t count;
  ST_TRY(read_axes(p, n, axes, &count));
  int r = x->ndim + (int)count;
  if (r > ST_MAX_DIMS)
    return REFUSE(n, "rank %d exceeds %d", r, ST_MAX_DIMS);
  int add[ST_MAX_DIMS] = {0};
  for (size_t i = 0; i < count; i++) {
    int a = 0;
    ST_TRY(normalize_axis(n, axes[i], r, &a));
    if (add[a])
      return node_fail(ST_ESHAPE, n, "axis %d repeated", a);
    add[a] = 1;
  }
  for (int d = 0, k = 0; d < r; d++)
    shape[d] = add[d] ? 1 : x->shape[k++];
  *ndim = r;
  return ST_OK;
}

static int flatten_shape(const st_onnx_node *n, const st_tensor *x, int *ndim,
                         int64_t *shape) {
  int64_t axis;
  ST_TRY(st_onnx_attr_int(n, "axis", 1, &axis));
  int a = 0;
  if (axis == x->ndim)
    a = x->ndim;
  else
    ST_TRY(normalize_axis(n, axis, x->ndim, &a));
  shape[0] = shape_numel(a, x->shape);
  shape[1] = shape_numel(x->ndim - a, x->shape + a);
  *ndim = 2;
  return ST_OK;
}

/* Slice bounds per axis (starts clamped and non-negative) and output shape. */
static int slice_plan(st_onnx_plan *p, const st_onnx_node *n,
                      const st_tensor *x, int64_t *start, int64_t *step,
                      int64_t *shape) {
  int64_t starts[ST_MAX_DIMS], ends[ST_MAX_DIMS], axes[ST_MAX_DIMS],
      steps[ST_MAX_DIMS];
  size_t ns, ne, na, nst;
  int id = 0;
  ST_TRY(input_id(p, n, 1, &id));
  ST_TRY(const_ints(p, n, id, "starts", starts, ST_MAX_DIMS, &ns));
  ST_TRY(input_id(p, n, 2, &id));
  ST_TRY(const_ints(p, n, id, "ends", ends, ST_MAX_DIMS, &ne));
  if (has_input(n, 3)) {
    ST_TRY(input_id(p, n, 3, &id));
    ST_TRY(const_ints(p, n, id, "axes", axes, ST_MAX_DIMS, &na));
  } else {
    na = ns;
    for (size_t i = 0; i < na; i++)
      axes[i] = (int64_t)i;
  }
  if (has_input(n, 4)) {
    ST_TRY(input_id(p, n, 4, &id));
    ST_TRY(const_ints(p, n, id, "steps", steps, ST_MAX_DIMS, &nst));
  } else {
    nst = ns;
    for (size_t i = 0; i < nst; i++)
      steps[i] = 1;
  }
  if (ne != ns || na != ns || nst != ns)
    return node_fail(ST_ESHAPE, n, "starts, ends, axes, steps differ in "
                     "length");
  for (int d = 0; d < x->ndim; d++) {
    start[d] = 0;
    step[d] = 1;
    shape[d] = x->shape[d];
  }
  for (size_t i = 0; i < ns; i++) {
    int a = 0;
    ST_TRY(normalize_axis(n, axes[i], x->ndim, &a));
    int64_t dim = x->shape[a], s = starts[i], e = ends[i], k = steps[i];
    if (k == 0)
      return node_fail(ST_ESHAPE, n, "step 0");
    if (s < 0)
      s += dim;
    if (e < 0)
      e += dim;
    if (k > 0) {
      s = s < 0 ? 0 : s > dim ? dim : s;
      e = e < 0 ? 0 : e > dim ? dim : e;
    } else {
      s = s < 0 ? 0 : s > dim - 1 ? dim - 1 : s;
      e = e < -1 ? -1 : e > dim - 1 ? dim - 1 : e;
    }
    int64_t len = k > 0 ? (e - s + k - 1) / k : (s - e - k - 1) / -k;
    start[a] = s;
    step[a] = k;
    shape[a] = len > 0 ? len : 0;
  }
  return ST_OK;
}

/* ---- node handlers ----------------------------------------------------- */

static int slice_to(st_onnx_plan *p, const st_onnx_node *n, int x,
                    const int64_t *starts, const int64_t *steps,
                    const int64_t *shape, int out);

typedef int (*node_fn)(st_onnx_plan *p, const st_onnx_node *n);

static const char *const NO_ATTRS[] = {NULL};

static int op_constant(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"value", "value_float", "value_floats",
                                      "value_int", "value_ints", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int out = output_id(p, n, 0);
  if (n->n_attrs != 1)
    return node_fail(ST_EFORMAT, n, "needs exactly one value attribute");
  const st_onnx_attr *a = &n->attrs[0];
  st_tensor t;
  int64_t count = (int64_t)a->count;
  switch (a->type) {
  case ST_ONNX_ATTR_TENSOR:
    if (a->tensor->dtype == ST_F16) {
      ST_TRY(host_alloc(&t, ST_F32, a->tensor->ndim, a->tensor->shape));
      for (int64_t i = 0; i < st_tensor_numel(&t); i++)
        hset(&t, i, hget(a->tensor, i));
      set_const(p, out, t, 1);
    } else {
      set_const(p, out, *a->tensor, 0);
    }
    return ST_OK;
  case ST_ONNX_ATTR_FLOAT:
    ST_TRY(host_alloc(&t, ST_F32, 0, NULL));
    hset(&t, 0, a->f);
    break;
  case ST_ONNX_ATTR_INT:
    ST_TRY(host_alloc(&t, ST_I64, 0, NULL));
    hseti(&t, 0, a->i);
    break;
  case ST_ONNX_ATTR_FLOATS:
    ST_TRY(host_alloc(&t, ST_F32, 1, &count));
    for (int64_t i = 0; i < count; i++)
      hset(&t, i, a->floats[i]);
    break;
  case ST_ONNX_ATTR_INTS:
    ST_TRY(host_alloc(&t, ST_I64, 1, &count));
    for (int64_t i = 0; i < count; i++)
      hseti(&t, i, a->ints[i]);
    break;
  default:
    return REFUSE(n, "attribute '%s' of type %s is not supported", a->name,
                  st_onnx_attr_type_name(a->type));
  }
  set_const(p, out, t, 1);
  return ST_OK;
}

static int op_identity(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS));
  ST_TRY(check_outputs(n, 1));
  int x, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &x));
  if (is_const(p, x)) {
    set_const(p, out, p->values[x].host, 0); /* shares the data */
    return ST_OK;
  }
  make_view(p, out, x, vt(p, x)->ndim, vt(p, x)->shape);
  return ST_OK;
}

static int op_shape(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"start", "end", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int x;
  ST_TRY(input_id(p, n, 0, &x));
  const st_tensor *t = vt(p, x);
  int64_t start, end, r = t->ndim;
  ST_TRY(st_onnx_attr_int(n, "start", 0, &start));
  ST_TRY(st_onnx_attr_int(n, "end", r, &end));
  if (start < 0)
    start += r;
  if (end < 0)
    end += r;
  start = start < 0 ? 0 : start > r ? r : start;
  end = end < start ? start : end > r ? r : end;
  int64_t len = end - start;
  st_tensor y;
  ST_TRY(host_alloc(&y, ST_I64, 1, &len));
  for (int64_t i = 0; i < len; i++)
    hseti(&y, i, t->shape[start + i]);
  set_const(p, output_id(p, n, 0), y, 1);
  return ST_OK;
}

static int op_cast(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"to", "saturate", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int64_t to;
  ST_TRY(st_onnx_attr_int(n, "to", ST_ONNX_UNDEFINED, &to));
  st_dtype dt = ST_F32;
  ST_TRY(onnx_dtype(n, to, &dt));
  int x, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &x));
  const st_tensor *t = vt(p, x);
  if (!is_const(p, x)) {
    if (t->dtype != dt)
      return REFUSE(n, "casting a %s tensor to %s at run time is not "
                    "supported", st_dtype_name(t->dtype), st_dtype_name(dt));
    make_view(p, out, x, t->ndim, t->shape);
    return ST_OK;
  }
  st_tensor y;
  ST_TRY(host_alloc(&y, dt, t->ndim, t->shape));
  for (int64_t i = 0; i < st_tensor_numel(t); i++) {
    if (dt == ST_F32)
      hset(&y, i, hget(t, i));
    else if (t->dtype == ST_F32 || t->dtype == ST_F16)
      hseti(&y, i, (int64_t)hget(t, i)); /* toward zero, as C and ONNX */
    else
      hseti(&y, i, hgeti(t, i));
  }
  set_const(p, out, y, 1);
  return ST_OK;
}

/* Reshape, Flatten, Squeeze, Unsqueeze: new shape, same elements. */
static int reshape_like(st_onnx_plan *p, const st_onnx_node *n, int x,
                        int ndim, const int64_t *shape) {
  int out = output_id(p, n, 0);
  if (is_const(p, x)) {
    st_tensor t = p->values[x].host;
    t.ndim = ndim;
    for (int d = 0; d < ST_MAX_DIMS; d++)
      t.shape[d] = d < ndim ? shape[d] : 1;
    t.owns = 0;
    set_const(p, out, t, 0); /* shares the data */
    return ST_OK;
  }
  make_view(p, out, x, ndim, shape);
  return ST_OK;
}

static int op_reshape(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"allowzero", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int x = 0, s = 0, ndim = 0;
  int64_t shape[ST_MAX_DIMS];
  ST_TRY(input_id(p, n, 0, &x));
  ST_TRY(input_id(p, n, 1, &s));
  ST_TRY(reshape_shape(p, n, vt(p, x), s, &ndim, shape));
  return reshape_like(p, n, x, ndim, shape);
}

static int op_flatten(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"axis", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int x, ndim;
  int64_t shape[ST_MAX_DIMS];
  ST_TRY(input_id(p, n, 0, &x));
  ST_TRY(flatten_shape(n, vt(p, x), &ndim, shape));
  return reshape_like(p, n, x, ndim, shape);
}

static int op_squeeze(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, axes_attrs(p)));
  ST_TRY(check_outputs(n, 1));
  int x = 0, ndim = 0;
  int64_t shape[ST_MAX_DIMS];
  ST_TRY(input_id(p, n, 0, &x));
  ST_TRY(squeeze_shape(p, n, vt(p, x), &ndim, shape));
  return reshape_like(p, n, x, ndim, shape);
}

static int op_unsqueeze(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, axes_attrs(p)));
  ST_TRY(check_outputs(n, 1));
  int x = 0, ndim = 0;
  int64_t shape[ST_MAX_DIMS];
  ST_TRY(input_id(p, n, 0, &x));
  ST_TRY(unsqueeze_shape(p, n, vt(p, x), &ndim, shape));
  return reshape_like(p, n, x, ndim, shape);
}

static int op_gather(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"axis", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int x, q;
  ST_TRY(input_id(p, n, 0, &x));
  ST_TRY(input_id(p, n, 1, &q));
  if (!is_const(p, x) || !is_const(p, q))
    return REFUSE(n, "Gather of a tensor computed at run time is not "
                  "supported (only shape arithmetic is)");
  const st_tensor *t = vt(p, x), *ix = vt(p, q);
  if (ix->dtype != ST_I64 && ix->dtype != ST_I32)
    return REFUSE(n, "%s indices are not supported", st_dtype_name(ix->dtype));
  int64_t axis_attr;
  int axis = 0;
  ST_TRY(st_onnx_attr_int(n, "axis", 0, &axis_attr));
  ST_TRY(normalize_axis(n, axis_attr, t->ndim, &axis));
  int r = t->ndim - 1 + ix->ndim;
  if (r > ST_MAX_DIMS)
    return REFUSE(n, "rank %d exceeds %d", r, ST_MAX_DIMS);
  for (int64_t i = 0; i < st_tensor_numel(ix); i++) {
    int64_t k = hgeti(ix, i);
    if (k < -t->shape[axis] || k >= t->shape[axis])
      return node_fail(ST_ERANGE, n, "index %lld is out of range",
                       (long long)k);
  }
  int64_t shape[ST_MAX_DIMS];
  for (int d = 0; d < r; d++)
    shape[d] = d < axis ? t->shape[d]
               : d < axis + ix->ndim ? ix->shape[d - axis]
                                     : t->shape[d - ix->ndim + 1];
  gather_ctx c = {t, ix, axis};
  return fold_gather_elems(p, output_id(p, n, 0), t, r, shape, gather_src,
                           &c);
}

static int op_slice(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS));
  ST_TRY(check_outputs(n, 1));
  int x, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &x));
  const st_tensor *t = vt(p, x);
  slice_ctx c = {.x = t};
  int64_t shape[ST_MAX_DIMS];
  ST_TRY(slice_plan(p, n, t, c.start, c.step, shape));
  if (is_const(p, x))
    return fold_gather_elems(p, out, t, t->ndim, shape, slice_src, &c);
  return slice_to(p, n, x, c.start, c.step, shape, out);
}

static int op_concat(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"axis", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  if (n->n_inputs == 0)
    return node_fail(ST_EFORMAT, n, "no inputs");
  int64_t axis_attr;
  int axis = 0, all_const = 1, first = 0, out = output_id(p, n, 0);
  ST_TRY(st_onnx_attr_int(n, "axis", 0, &axis_attr));
  ST_TRY(input_id(p, n, 0, &first));
  const st_tensor *t0 = vt(p, first);
  ST_TRY(normalize_axis(n, axis_attr, t0->ndim, &axis));
  int64_t shape[ST_MAX_DIMS];
  memcpy(shape, t0->shape, sizeof shape);
  shape[axis] = 0;
  int *ids = calloc(n->n_inputs, sizeof *ids);
  if (!ids)
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  int rc = ST_OK;
  for (size_t i = 0; i < n->n_inputs && !rc; i++) {
    rc = input_id(p, n, i, &ids[i]);
    if (rc)
      break;
    const st_tensor *t = vt(p, ids[i]);
    all_const &= is_const(p, ids[i]);
    if (t->ndim != t0->ndim || t->dtype != t0->dtype)
      rc = node_fail(ST_ESHAPE, n, "inputs differ in rank or dtype");
    for (int d = 0; d < t->ndim && !rc; d++)
      if (d != axis && t->shape[d] != t0->shape[d])
        rc = node_fail(ST_ESHAPE, n, "inputs differ on axis %d", d);
    shape[axis] += t->shape[axis];
  }
  if (!rc && all_const) {
    st_tensor y;
    rc = host_alloc(&y, t0->dtype, t0->ndim, shape);
    if (!rc) {
      /* Row-major: each input contributes `inner` contiguous elements per
       * outer index. */
      size_t es = st_dtype_size(t0->dtype);
      int64_t outer = shape_numel(axis, shape), pos = 0;
      int64_t row = shape_numel(t0->ndim - axis, shape + axis);
      for (size_t i = 0; i < n->n_inputs; i++) {
        const st_tensor *t = vt(p, ids[i]);
        int64_t inner = shape_numel(t->ndim - axis, t->shape + axis);
        for (int64_t o = 0; o < outer; o++)
          memcpy((char *)y.data + (o * row + pos) * es,
                 (const char *)t->data + o * inner * es, (size_t)inner * es);
        pos += inner;
      }
      set_const(p, out, y, 1);
      p->stats.folded_nodes++;
    }
    free(ids);
    return rc;
  }
  for (size_t i = 0; i < n->n_inputs && !rc; i++)
    rc = f32_operand(p, n, ids[i]);
  if (rc) {
    free(ids);
    return rc;
  }
  rc = push_concat(p, ids, (int)n->n_inputs, axis, out, t0->ndim, shape);
  free(ids);
  return rc;
}

static int op_transpose(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"perm", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int x, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &x));
  const st_tensor *t = vt(p, x);
  const int64_t *perm_attr;
  size_t count;
  ST_TRY(st_onnx_attr_ints(n, "perm", &perm_attr, &count));
  int perm[ST_MAX_DIMS], seen[ST_MAX_DIMS] = {0};
  if (count && (int)count != t->ndim)
    return node_fail(ST_ESHAPE, n, "perm has %zu entries for rank %d", count,
                     t->ndim);
  int64_t shape[ST_MAX_DIMS];
  for (int d = 0; d < t->ndim; d++) {
    if (count)
      ST_TRY(normalize_axis(n, perm_attr[d], t->ndim, &perm[d]));
    else
      perm[d] = t->ndim - 1 - d; /* the default reverses the axes */
    if (seen[perm[d]]++)
      return node_fail(ST_ESHAPE, n, "perm repeats axis %d", perm[d]);
    shape[d] = t->shape[perm[d]];
  }
  if (is_const(p, x)) {
    transpose_ctx c = {t, perm};
    return fold_gather_elems(p, out, t, t->ndim, shape, transpose_src, &c);
  }
  ST_TRY(f32_operand(p, n, x));
  exec_step s = {.kind = STEP_TRANSPOSE, .in = {x, -1}, .out = out};
  memcpy(s.perm, perm, sizeof perm);
  step_output(p, out, ST_F32, t->ndim, shape);
  return push_step(p, &s);
}

static int op_binary(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS));
  ST_TRY(check_outputs(n, 1));
  static const struct {
    const char *name;
    st_binary_kind kind;
  } kinds[] = {{"Add", ST_BINARY_ADD},
               {"Sub", ST_BINARY_SUB},
               {"Mul", ST_BINARY_MUL},
               {"Div", ST_BINARY_DIV}};
  st_binary_kind kind = ST_BINARY_ADD;
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    if (!strcmp(n->op_type, kinds[i].name))
      kind = kinds[i].kind;
  int a, b, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &a));
  ST_TRY(input_id(p, n, 1, &b));
  if (is_const(p, a) && is_const(p, b)) {
    p->stats.folded_nodes++;
    return fold_binary(p, n, a, b, fold_op_of(kind), out);
  }
  int r;
  int64_t shape[ST_MAX_DIMS];
  ST_TRY(broadcast_shape(n, vt(p, a), vt(p, b), &r, shape));
  ST_TRY(f32_operand(p, n, a));
  ST_TRY(f32_operand(p, n, b));
  exec_step s = {.kind = STEP_BINARY, .in = {a, b}, .out = out,
                 .binary = kind};
  step_output(p, out, ST_F32, r, shape);
  return push_step(p, &s);
}

static int push_unary(st_onnx_plan *p, const st_onnx_node *n,
                      st_unary_kind kind, float alpha, float beta) {
  ST_TRY(check_outputs(n, 1));
  int x = 0, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &x));
  ST_TRY(f32_operand(p, n, x));
  exec_step s = {.kind = STEP_UNARY, .in = {x, -1}, .out = out,
                 .unary = kind, .alpha = alpha, .beta = beta};
  step_output(p, out, ST_F32, vt(p, x)->ndim, vt(p, x)->shape);
  return push_step(p, &s);
}

static int op_relu(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS));
  return push_unary(p, n, ST_UNARY_RELU, 0.0f, 0.0f);
}

static int op_sigmoid(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS));
  return push_unary(p, n, ST_UNARY_SIGMOID, 0.0f, 0.0f);
}

static int op_hardswish(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS));
  return push_unary(p, n, ST_UNARY_HARDSWISH, 0.0f, 0.0f);
}

static int op_hardsigmoid(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"alpha", "beta", NULL};
  ST_TRY(check_attrs(n, known));
  float alpha, beta;
  ST_TRY(st_onnx_attr_float(n, "alpha", ONNX_HARDSIGMOID_ALPHA_DEFAULT, &alpha));
  ST_TRY(st_onnx_attr_float(n, "beta", ONNX_HARDSIGMOID_BETA_DEFAULT, &beta));
  return push_unary(p, n, ST_UNARY_HARDSIGMOID, alpha, beta);
}

static int op_clip(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS)); /* min/max are inputs from opset 11 on */
  double lo = -INFINITY, hi = INFINITY;
  int id;
  if (has_input(n, 1)) {
    ST_TRY(input_id(p, n, 1, &id));
    ST_TRY(const_scalar(p, n, id, "min", &lo));
  }
  if (has_input(n, 2)) {
    ST_TRY(input_id(p, n, 2, &id));
    ST_TRY(const_scalar(p, n, id, "max", &hi));
  }
  return push_unary(p, n, ST_UNARY_CLIP, (float)lo, (float)hi);
}

/* Spatial geometry shared by Conv and the pools. */
typedef struct window2d {
  int64_t in[2], kernel[2];
  int stride[2], dilation[2];
  int pad_begin[2], pad_end[2];
  int64_t out[2];
} window2d;

static int read_pair(const st_onnx_node *n, const char *name, int def,
                     int *out) {
  const int64_t *v;
  size_t count;
  ST_TRY(st_onnx_attr_ints(n, name, &v, &count));
  if (!count) {
    out[0] = out[1] = def;
    return ST_OK;
  }
  if (count != 2)
    return REFUSE(n, "'%s' has %zu values; only 2-D windows are supported",
                  name, count);
  for (int i = 0; i < 2; i++) {
    if (v[i] < 1 || v[i] > INT_MAX)
      return node_fail(ST_ERANGE, n, "'%s' value %lld is out of range", name,
                       (long long)v[i]);
    out[i] = (int)v[i];
  }
  return ST_OK;
}

/* Fills pads and output extents from auto_pad/pads (ceil_mode for pools). */
static int window_geometry(const st_onnx_node *n, int ceil_mode,
                           window2d *g) {
  const char *auto_pad;
  ST_TRY(st_onnx_attr_string(n, "auto_pad", "NOTSET", &auto_pad));
  const int64_t *pads;
  size_t count;
  ST_TRY(st_onnx_attr_ints(n, "pads", &pads, &count));
  for (int i = 0; i < 2; i++) {
    int64_t span = (g->kernel[i] - 1) * g->dilation[i] + 1, s = g->stride[i];
    int64_t in = g->in[i], out, total, begin;
    if (!strcmp(auto_pad, "NOTSET")) {
      if (count && count != 4)
        return REFUSE(n, "'pads' has %zu values; only 2-D is supported",
                      count);
      int64_t pb = count ? pads[i] : 0, pe = count ? pads[i + 2] : 0;
      if (pb < 0 || pe < 0 || pb > INT_MAX || pe > INT_MAX)
        return node_fail(ST_ERANGE, n, "negative or huge pads");
      int64_t room = in + pb + pe - span;
      if (room < 0)
        return node_fail(ST_ESHAPE, n, "window larger than the padded input");
      out = (ceil_mode ? (room + s - 1) / s : room / s) + 1;
      /* PyTorch's rule (and ONNX's reference since): a last window that
       * would start inside the end padding is dropped. */
      if (ceil_mode && (out - 1) * s >= in + pb)
        out--;
      g->pad_begin[i] = (int)pb;
      g->pad_end[i] = (int)pe;
    } else if (!strcmp(auto_pad, "VALID")) {
      if (in < span)
        return node_fail(ST_ESHAPE, n, "window larger than the input");
      out = (in - span) / s + 1;
      g->pad_begin[i] = g->pad_end[i] = 0;
    } else if (!strcmp(auto_pad, "SAME_UPPER") ||
               !strcmp(auto_pad, "SAME_LOWER")) {
      out = (in + s - 1) / s;
      total = (out - 1) * s + span - in;
      if (total < 0)
        total = 0;
      /* SAME_UPPER puts the odd cell at the end, SAME_LOWER at the start. */
      begin = !strcmp(auto_pad, "SAME_UPPER") ? total / 2 : total - total / 2;
      g->pad_begin[i] = (int)begin;
      g->pad_end[i] = (int)(total - begin);
    } else {
      return REFUSE(n, "auto_pad '%s' is not supported", auto_pad);
    }
    if (out < 1)
      return node_fail(ST_ESHAPE, n, "empty output");
    g->out[i] = out;
  }
  return ST_OK;
}

static int rank4_input(st_onnx_plan *p, const st_onnx_node *n, int *x) {
  ST_TRY(input_id(p, n, 0, x));
  if (vt(p, *x)->ndim != 4)
    return REFUSE(n, "rank %d input; only 2-D (NCHW) is supported",
                  vt(p, *x)->ndim);
  return ST_OK;
}

/* Inference BatchNormalization as per-channel scale and shift. */
static int bn_affine(st_onnx_plan *p, const st_onnx_node *n, int64_t channels,
                     float **scale, float **shift) {
  static const char *const known[] = {"epsilon", "momentum", "training_mode",
                                      "spatial", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int64_t training, spatial;
  float eps;
  ST_TRY(st_onnx_attr_int(n, "training_mode", 0, &training));
  ST_TRY(st_onnx_attr_int(n, "spatial", 1, &spatial));
  ST_TRY(st_onnx_attr_float(n, "epsilon", ONNX_BN_EPSILON_DEFAULT, &eps));
  if (training)
    return REFUSE(n, "training_mode=%lld is not supported (inference only)",
                  (long long)training);
  if (spatial != 1)
    return REFUSE(n, "spatial=%lld is not supported", (long long)spatial);
  const st_tensor *prm[4];
  static const char *const names[4] = {"scale", "B", "input_mean",
                                       "input_var"};
  for (int i = 0; i < 4; i++) {
    int id;
    ST_TRY(input_id(p, n, (size_t)i + 1, &id));
    if (!is_const(p, id))
      return REFUSE(n, "%s is computed at run time; it must be a constant",
                    names[i]);
    prm[i] = vt(p, id);
    if (st_tensor_numel(prm[i]) != channels)
      return node_fail(ST_ESHAPE, n, "%s has %lld values for %lld channels",
                       names[i], (long long)st_tensor_numel(prm[i]),
                       (long long)channels);
  }
  *scale = malloc((size_t)channels * sizeof **scale);
  *shift = malloc((size_t)channels * sizeof **shift);
  if (!*scale || !*shift) {
    free(*scale);
    free(*shift);
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  }
  for (int64_t c = 0; c < channels; c++) {
    /* in double, then rounded once, so the folded weights match what a
     * framework folding in fp64 (torch.onnx's do_constant_folding) gives */
    double s = hget(prm[0], c) / sqrt(hget(prm[3], c) + (double)eps);
    (*scale)[c] = (float)s;
    (*shift)[c] = (float)(hget(prm[1], c) - hget(prm[2], c) * s);
  }
  return ST_OK;
}

/* The node reading value `id` when it is the only reader (not a graph
 * output) and has op type `op`; NULL otherwise. */
static const st_onnx_node *sole_consumer(const st_onnx_plan *p, int id,
                                         const char *op) {
  if (p->consumers[id] != 1 || p->sole_reader[id] < 0)
    return NULL;
  const st_onnx_node *c = &p->m->nodes[p->sole_reader[id]];
  if (strcmp(c->op_type, op) || !has_input(c, 0))
    return NULL;
  int in0 = -1;
  if (value_id(p, c->inputs[0], &in0) || in0 != id)
    return NULL;
  return c;
}

/* *out = x with `before` and `after` zero slices added along `axis` (a
 * Concat step); *out = x when both are 0. */
static int pad_with_zeros(st_onnx_plan *p, const st_onnx_node *n, int x,
                          int axis, int64_t before, int64_t after, int *out) {
  *out = x;
  if (!before && !after)
    return ST_OK;
  const st_tensor *xt = vt(p, x);
  int64_t shape[ST_MAX_DIMS];
  memcpy(shape, xt->shape, sizeof shape);
  int ids[3] = {0, 0, 0}, count = 0;
  int64_t extents[3] = {before, 0, after};
  for (int k = 0; k < 3; k++) {
    if (k == 1) {
      ids[count++] = x;
      continue;
    }
    if (!extents[k])
      continue;
    st_tensor zeros;
    shape[axis] = extents[k];
    ST_TRY(new_value(p, &ids[count]));
    ST_TRY(host_alloc(&zeros, ST_F32, xt->ndim, shape)); /* zero-filled */
    set_const(p, ids[count++], zeros, 1);
  }
  for (int k = 0; k < count; k++)
    ST_TRY(f32_operand(p, n, ids[k]));
  int y = 0;
  ST_TRY(new_value(p, &y));
  shape[axis] = xt->shape[axis] + before + after;
  ST_TRY(push_concat(p, ids, count, axis, y, xt->ndim, shape));
  *out = y;
  return ST_OK;
}

/* 1 when a BatchNormalization's parameters are constants already defined
 * (a Constant node holding them may come after the Conv in node order; then
 * the BN runs on its own). */
static int bn_params_ready(const st_onnx_plan *p, const st_onnx_node *bn) {
  for (size_t i = 1; i <= 4; i++) {
    int id;
    if (!has_input(bn, i) || value_id(p, bn->inputs[i], &id) ||
        !p->values[id].defined || !p->values[id].is_const)
      return 0;
  }
  return 1;
}

static int op_conv(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"auto_pad", "dilations", "group",
                                      "kernel_shape", "pads", "strides",
                                      NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int x = 0, wid = 0, bid = -1;
  ST_TRY(rank4_input(p, n, &x));
  /* A zero Pad before the Conv was left unrun for it: the geometry below
   * sees the padded extents, the step reads the unpadded tensor. */
  deferred_pad dp = p->deferred[x];
  ST_TRY(input_id(p, n, 1, &wid));
  if (!is_const(p, wid))
    return REFUSE(n, "weights computed at run time are not supported");
  if (has_input(n, 2)) {
    ST_TRY(input_id(p, n, 2, &bid));
    if (!is_const(p, bid))
      return REFUSE(n, "a bias computed at run time is not supported");
  }
  const st_tensor *xt = vt(p, x), *wt = vt(p, wid);
  if (wt->ndim != 4)
    return REFUSE(n, "rank %d weights; only 2-D convolution is supported",
                  wt->ndim);
  int64_t group;
  ST_TRY(st_onnx_attr_int(n, "group", 1, &group));
  int64_t cout = wt->shape[0];
  if (group < 1 || xt->shape[1] % group || cout % group ||
      wt->shape[1] * group != xt->shape[1])
    return node_fail(ST_ESHAPE, n, "group %lld does not fit %lld input and "
                     "%lld output channels", (long long)group,
                     (long long)xt->shape[1], (long long)cout);
  window2d g = {.in = {xt->shape[2], xt->shape[3]},
                .kernel = {wt->shape[2], wt->shape[3]}};
  const int64_t *ks;
  size_t kcount;
  ST_TRY(st_onnx_attr_ints(n, "kernel_shape", &ks, &kcount));
  if (kcount && (kcount != 2 || ks[0] != g.kernel[0] || ks[1] != g.kernel[1]))
    return node_fail(ST_ESHAPE, n, "kernel_shape disagrees with the weights");
  ST_TRY(read_pair(n, "strides", 1, g.stride));
  ST_TRY(read_pair(n, "dilations", 1, g.dilation));
  ST_TRY(window_geometry(n, 0, &g));
  if (dp.active) {
    for (int i = 0; i < 2; i++) {
      if (g.pad_begin[i] + dp.begin[i] > INT_MAX ||
          g.pad_end[i] + dp.end[i] > INT_MAX)
        return node_fail(ST_ERANGE, n, "padding too large");
      g.pad_begin[i] += (int)dp.begin[i];
      g.pad_end[i] += (int)dp.end[i];
    }
    x = dp.src;
  }
  /* st_conv2d_fwd pads symmetrically: the common part of the padding goes
   * to it, the rest is concatenated to the input as zeros. */
  int sym_pad[2];
  for (int i = 0; i < 2; i++)
    sym_pad[i] = g.pad_begin[i] < g.pad_end[i] ? g.pad_begin[i]
                                               : g.pad_end[i];

  /* Host copies of the weights and bias, with any BN folded in. */
  int64_t per_out = st_tensor_numel(wt) / cout;
  float *w = malloc((size_t)st_tensor_numel(wt) * sizeof *w);
  float *b = calloc((size_t)cout, sizeof *b);
  if (!w || !b) {
    free(w);
    free(b);
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  }
  int rc = ST_OK;
  for (int64_t i = 0; i < st_tensor_numel(wt); i++)
    w[i] = (float)hget(wt, i);
  if (bid >= 0) {
    if (st_tensor_numel(vt(p, bid)) != cout)
      rc = node_fail(ST_ESHAPE, n, "bias has %lld values for %lld outputs",
                     (long long)st_tensor_numel(vt(p, bid)), (long long)cout);
    for (int64_t c = 0; c < cout && !rc; c++)
      b[c] = (float)hget(vt(p, bid), c);
  }
  int out = output_id(p, n, 0);
  int has_bias = bid >= 0;
  const st_onnx_node *bn =
      rc ? NULL : sole_consumer(p, out, "BatchNormalization");
  if (bn && bn_params_ready(p, bn)) {
    float *scale = NULL, *shift = NULL;
    rc = bn_affine(p, bn, cout, &scale, &shift);
    if (!rc) {
      for (int64_t c = 0; c < cout; c++) {
        for (int64_t k = 0; k < per_out; k++)
          w[c * per_out + k] *= scale[c];
        b[c] = b[c] * scale[c] + shift[c];
      }
      has_bias = 1;
      p->absorbed[bn - p->m->nodes] = 1;
      p->stats.fused_batchnorms++;
      out = output_id(p, bn, 0);
    }
    free(scale);
    free(shift);
  }
  exec_step s = {.kind = STEP_CONV, .in = {x, -1}, .act = ST_ACT_NONE,
                 .has_bias = has_bias};
  const st_onnx_node *relu = rc ? NULL : sole_consumer(p, out, "Relu");
  if (relu && relu->n_attrs == 0 && !check_outputs(relu, 1)) {
    s.act = ST_ACT_RELU;
    p->absorbed[relu - p->m->nodes] = 1;
    p->stats.fused_relus++;
    out = output_id(p, relu, 0);
  }
  s.out = out;
  s.conv = (st_conv2d_params){.stride = {g.stride[0], g.stride[1]},
                              .pad = {sym_pad[0], sym_pad[1]},
                              .dilation = {g.dilation[0], g.dilation[1]},
                              .groups = (int)group};
  if (!rc)
    rc = st_tensor_alloc(p->be, &s.w, ST_F32, 4, wt->shape);
  if (!rc)
    rc = st_tensor_upload(p->be, &s.w, w, st_tensor_nbytes(&s.w));
  if (!rc && has_bias)
    rc = st_tensor_alloc(p->be, &s.b, ST_F32, 1, &cout);
  if (!rc && has_bias)
    rc = st_tensor_upload(p->be, &s.b, b, st_tensor_nbytes(&s.b));
  free(w);
  free(b);
  int conv_in = x;
  for (int i = 0; i < 2 && !rc; i++)
    rc = pad_with_zeros(p, n, conv_in, 2 + i, g.pad_begin[i] - sym_pad[i],
                        g.pad_end[i] - sym_pad[i], &conv_in);
  s.in[0] = conv_in;
  if (!rc)
    rc = f32_operand(p, n, conv_in);
  if (!rc) {
    int64_t shape[4] = {xt->shape[0], cout, g.out[0], g.out[1]};
    step_output(p, out, ST_F32, 4, shape);
    rc = push_step(p, &s);
  }
  if (rc) {
    st_tensor_free(&s.w);
    st_tensor_free(&s.b);
  }
  return rc;
}

/* BatchNormalization not after a foldable Conv: y = x * scale + shift with
 * [1,C,1,...] constants. */
static int op_batchnorm(st_onnx_plan *p, const st_onnx_node *n) {
  int x;
  ST_TRY(input_id(p, n, 0, &x));
  const st_tensor *xt = vt(p, x);
  if (xt->ndim < 2)
    return node_fail(ST_ESHAPE, n, "input of rank %d", xt->ndim);
  int64_t c = xt->shape[1];
  float *scale = NULL, *shift = NULL;
  ST_TRY(bn_affine(p, n, c, &scale, &shift));
  int64_t shape[ST_MAX_DIMS];
  for (int d = 0; d < xt->ndim; d++)
    shape[d] = d == 1 ? c : 1;
  int ids[2] = {0, 0}, rc = ST_OK;
  float *src[2] = {scale, shift};
  for (int k = 0; k < 2 && !rc; k++) {
    st_tensor t;
    rc = new_value(p, &ids[k]);
    if (!rc)
      rc = host_alloc(&t, ST_F32, xt->ndim, shape);
    if (!rc) {
      memcpy(t.data, src[k], (size_t)c * sizeof(float));
      set_const(p, ids[k], t, 1);
    }
  }
  free(scale);
  free(shift);
  ST_TRY(rc);
  int mid = 0, out = output_id(p, n, 0);
  ST_TRY(new_value(p, &mid));
  ST_TRY(f32_operand(p, n, x));
  ST_TRY(f32_operand(p, n, ids[0]));
  exec_step mul = {.kind = STEP_BINARY, .in = {x, ids[0]}, .out = mid,
                   .binary = ST_BINARY_MUL};
  step_output(p, mid, ST_F32, xt->ndim, xt->shape);
  ST_TRY(push_step(p, &mul));
  ST_TRY(use_value(p, mid));
  ST_TRY(f32_operand(p, n, ids[1]));
  exec_step add = {.kind = STEP_BINARY, .in = {mid, ids[1]}, .out = out,
                   .binary = ST_BINARY_ADD};
  step_output(p, out, ST_F32, xt->ndim, xt->shape);
  return push_step(p, &add);
}

static int op_pool(st_onnx_plan *p, const st_onnx_node *n, st_pool_kind kind) {
  static const char *const max_known[] = {"auto_pad", "ceil_mode",
                                          "dilations", "kernel_shape",
                                          "pads", "storage_order",
                                          "strides", NULL};
  static const char *const avg_known[] = {"auto_pad", "ceil_mode",
                                          "count_include_pad",
                                          "kernel_shape", "pads", "strides",
                                          NULL};
  ST_TRY(check_attrs(n, kind == ST_POOL_MAX ? max_known : avg_known));
  ST_TRY(check_outputs(n, 1));
  int x = 0, out = output_id(p, n, 0);
  ST_TRY(rank4_input(p, n, &x));
  const st_tensor *xt = vt(p, x);
  int64_t ceil_mode, storage_order, include_pad;
  ST_TRY(st_onnx_attr_int(n, "ceil_mode", 0, &ceil_mode));
  ST_TRY(st_onnx_attr_int(n, "storage_order", 0, &storage_order));
  ST_TRY(st_onnx_attr_int(n, "count_include_pad", 0, &include_pad));
  if (storage_order != 0)
    return REFUSE(n, "storage_order=%lld is not supported (only 0)",
                  (long long)storage_order);
  int kernel[2];
  const int64_t *ks;
  size_t kcount;
  ST_TRY(st_onnx_attr_ints(n, "kernel_shape", &ks, &kcount));
  if (kcount != 2)
    return REFUSE(n, "kernel_shape with %zu values; only 2-D is supported",
                  kcount);
  ST_TRY(read_pair(n, "kernel_shape", 1, kernel));
  window2d g = {.in = {xt->shape[2], xt->shape[3]},
                .kernel = {kernel[0], kernel[1]}};
  ST_TRY(read_pair(n, "strides", 1, g.stride));
  ST_TRY(read_pair(n, "dilations", 1, g.dilation));
  ST_TRY(window_geometry(n, ceil_mode != 0, &g));
  ST_TRY(f32_operand(p, n, x));
  exec_step s = {.kind = STEP_POOL, .in = {x, -1}, .out = out};
  s.pool = (st_pool2d_params){
      .kind = kind,
      .kernel = {kernel[0], kernel[1]},
      .stride = {g.stride[0], g.stride[1]},
      .pad_begin = {g.pad_begin[0], g.pad_begin[1]},
      .pad_end = {g.pad_end[0], g.pad_end[1]},
      .dilation = {g.dilation[0], g.dilation[1]},
      .count_include_pad = include_pad != 0};
  int64_t shape[4] = {xt->shape[0], xt->shape[1], g.out[0], g.out[1]};
  step_output(p, out, ST_F32, 4, shape);
  return push_step(p, &s);
}

static int op_maxpool(st_onnx_plan *p, const st_onnx_node *n) {
  return op_pool(p, n, ST_POOL_MAX);
}

static int op_avgpool(st_onnx_plan *p, const st_onnx_node *n) {
  return op_pool(p, n, ST_POOL_AVG);
}

static int op_global_avg_pool(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS));
  ST_TRY(check_outputs(n, 1));
  int x = 0, out = output_id(p, n, 0);
  ST_TRY(rank4_input(p, n, &x));
  ST_TRY(f32_operand(p, n, x));
  const st_tensor *xt = vt(p, x);
  exec_step s = {.kind = STEP_GLOBAL_AVG_POOL, .in = {x, -1}, .out = out};
  int64_t shape[4] = {xt->shape[0], xt->shape[1], 1, 1};
  step_output(p, out, ST_F32, 4, shape);
  return push_step(p, &s);
}

/* A name-to-enum table entry for string attributes. */
typedef struct name_code {
  const char *name;
  int code;
} name_code;

static int lookup(const st_onnx_node *n, const char *attr, const char *value,
                  const name_code *table, size_t count, int *out) {
  for (size_t i = 0; i < count; i++)
    if (!strcmp(table[i].name, value)) {
      *out = table[i].code;
      return ST_OK;
    }
  return REFUSE(n, "%s '%s' is not supported", attr, value);
}

static int op_resize(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {
      "mode", "coordinate_transformation_mode", "nearest_mode",
      "cubic_coeff_a", "exclude_outside", "extrapolation_value",
      "antialias", "axes", "keep_aspect_ratio_policy", NULL};
  static const name_code modes[] = {{"nearest", ST_RESIZE_NEAREST},
                                    {"linear", ST_RESIZE_LINEAR}};
  static const name_code coords[] = {
      {"half_pixel", ST_COORD_HALF_PIXEL},
      {"pytorch_half_pixel", ST_COORD_PYTORCH_HALF_PIXEL},
      {"align_corners", ST_COORD_ALIGN_CORNERS},
      {"asymmetric", ST_COORD_ASYMMETRIC}};
  static const name_code nearests[] = {
      {"round_prefer_floor", ST_NEAREST_ROUND_PREFER_FLOOR},
      {"round_prefer_ceil", ST_NEAREST_ROUND_PREFER_CEIL},
      {"floor", ST_NEAREST_FLOOR},
      {"ceil", ST_NEAREST_CEIL}};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  const char *mode, *coord, *nearest, *policy;
  int64_t exclude, antialias;
  ST_TRY(st_onnx_attr_string(n, "mode", "nearest", &mode));
  ST_TRY(st_onnx_attr_string(n, "coordinate_transformation_mode", "half_pixel",
                          &coord));
  ST_TRY(st_onnx_attr_string(n, "nearest_mode", "round_prefer_floor", &nearest));
  ST_TRY(st_onnx_attr_string(n, "keep_aspect_ratio_policy", "stretch", &policy));
  ST_TRY(st_onnx_attr_int(n, "exclude_outside", 0, &exclude));
  ST_TRY(st_onnx_attr_int(n, "antialias", 0, &antialias));
  st_resize_params rp;
  int code = 0;
  ST_TRY(lookup(n, "mode", mode, modes, sizeof modes / sizeof modes[0], &code));
  rp.mode = (st_resize_mode)code;
  ST_TRY(lookup(n, "coordinate_transformation_mode", coord, coords,
             sizeof coords / sizeof coords[0], &code));
  rp.coord = (st_resize_coord)code;
  ST_TRY(lookup(n, "nearest_mode", nearest, nearests,
             sizeof nearests / sizeof nearests[0], &code));
  rp.nearest = (st_nearest_mode)code;
  if (exclude)
    return REFUSE(n, "exclude_outside=%lld is not supported",
                  (long long)exclude);
  if (antialias)
    return REFUSE(n, "antialias=%lld is not supported", (long long)antialias);
  if (strcmp(policy, "stretch"))
    return REFUSE(n, "keep_aspect_ratio_policy '%s' is not supported",
                  policy);
  int x = 0, out = output_id(p, n, 0);
  ST_TRY(rank4_input(p, n, &x));
  const st_tensor *xt = vt(p, x);
  /* Which axes the scales/sizes name: all four, or (opset 18) a list that
   * must be the two spatial ones. */
  const int64_t *axes;
  size_t n_axes;
  ST_TRY(st_onnx_attr_ints(n, "axes", &axes, &n_axes));
  int first_axis = 0;
  if (n_axes) {
    int a0 = -1, a1 = -1;
    ST_TRY(normalize_axis(n, axes[0], 4, &a0));
    if (n_axes == 2)
      ST_TRY(normalize_axis(n, axes[1], 4, &a1));
    if (n_axes != 2 || a0 != 2 || a1 != 3)
      return REFUSE(n, "axes other than the last two are not supported");
    first_axis = 2;
  }
  size_t want = 4 - (size_t)first_axis;
  /* roi (input 1) only matters for tf_crop_and_resize, refused above. An
   * empty scales tensor means "absent", as exporters write at opset 11. */
  int64_t vals[ST_MAX_DIMS];
  size_t count = 0;
  int64_t osize[4];
  int scales_id = -1, sizes_id = -1;
  if (has_input(n, 2)) {
    ST_TRY(input_id(p, n, 2, &scales_id));
    if (is_const(p, scales_id) && st_tensor_numel(vt(p, scales_id)) == 0)
      scales_id = -1;
  }
  if (has_input(n, 3)) {
    ST_TRY(input_id(p, n, 3, &sizes_id));
    if (is_const(p, sizes_id) && st_tensor_numel(vt(p, sizes_id)) == 0)
      sizes_id = -1;
  }
  if ((scales_id >= 0) == (sizes_id >= 0))
    return node_fail(ST_EFORMAT, n, "needs exactly one of scales and sizes");
  double scale[4] = {1, 1, 1, 1};
  if (scales_id >= 0) {
    if (!is_const(p, scales_id))
      return REFUSE(n, "scales computed at run time are not supported");
    const st_tensor *st = vt(p, scales_id);
    if ((size_t)st_tensor_numel(st) != want)
      return node_fail(ST_ESHAPE, n, "scales has %lld values, expected %zu",
                       (long long)st_tensor_numel(st), want);
    for (size_t i = 0; i < want; i++) {
      int d = first_axis + (int)i;
      scale[d] = hget(st, (int64_t)i);
      if (!(scale[d] > 0))
        return node_fail(ST_ERANGE, n, "scale %g is not positive", scale[d]);
    }
    if (scale[0] != 1.0 || scale[1] != 1.0)
      return REFUSE(n, "scaling the batch or channel axis is not supported");
    for (int d = 0; d < 4; d++)
      osize[d] = (int64_t)floor((double)xt->shape[d] * scale[d]);
  } else {
    ST_TRY(const_ints(p, n, sizes_id, "sizes", vals, ST_MAX_DIMS, &count));
    if (count != want)
      return node_fail(ST_ESHAPE, n, "sizes has %zu values, expected %zu",
                       count, want);
    for (int d = 0; d < 4; d++) {
      osize[d] = d < first_axis ? xt->shape[d] : vals[d - first_axis];
      scale[d] = (double)osize[d] / (double)xt->shape[d];
    }
  }
  if (osize[0] != xt->shape[0] || osize[1] != xt->shape[1])
    return REFUSE(n, "resizing the batch or channel axis is not supported");
  if (osize[2] < 1 || osize[3] < 1)
    return node_fail(ST_ESHAPE, n, "empty output");
  rp.scale[0] = scale[2];
  rp.scale[1] = scale[3];
  ST_TRY(f32_operand(p, n, x));
  exec_step s = {.kind = STEP_RESIZE, .in = {x, -1}, .out = out,
                 .resize = rp};
  step_output(p, out, ST_F32, 4, osize);
  return push_step(p, &s);
}

static int op_softmax(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"axis", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int x = 0, out = output_id(p, n, 0), axis = 0;
  ST_TRY(input_id(p, n, 0, &x));
  const st_tensor *xt = vt(p, x);
  int coerced = p->m->opset < OPSET_SOFTMAX_SINGLE_AXIS;
  int64_t axis_attr;
  ST_TRY(st_onnx_attr_int(n, "axis", coerced ? 1 : -1, &axis_attr));
  ST_TRY(normalize_axis(n, axis_attr, xt->ndim, &axis));
  ST_TRY(f32_operand(p, n, x));
  exec_step s = {.kind = STEP_SOFTMAX, .in = {x, -1}, .out = out,
                 .axis = axis};
  if (coerced) {
    /* Before opset 13 the input is viewed as [prod(:axis), prod(axis:)]
     * and normalised over the second axis. */
    s.flatten2d = 1;
    s.flat[0] = shape_numel(axis, xt->shape);
    s.flat[1] = shape_numel(xt->ndim - axis, xt->shape + axis);
    s.axis = 1;
  }
  step_output(p, out, ST_F32, xt->ndim, xt->shape);
  return push_step(p, &s);
}

static int op_argmax(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"axis", "keepdims", "select_last_index",
                                      NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int64_t axis_attr, keepdims, last;
  ST_TRY(st_onnx_attr_int(n, "axis", 0, &axis_attr));
  ST_TRY(st_onnx_attr_int(n, "keepdims", 1, &keepdims));
  ST_TRY(st_onnx_attr_int(n, "select_last_index", 0, &last));
  if (last)
    return REFUSE(n, "select_last_index=%lld is not supported",
                  (long long)last);
  int x = 0, axis = 0, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &x));
  const st_tensor *xt = vt(p, x);
  ST_TRY(normalize_axis(n, axis_attr, xt->ndim, &axis));
  ST_TRY(f32_operand(p, n, x));
  int64_t shape[ST_MAX_DIMS];
  memcpy(shape, xt->shape, sizeof shape);
  shape[axis] = 1;
  int target = out;
  if (!keepdims)
    ST_TRY(new_value(p, &target));
  exec_step s = {.kind = STEP_ARGMAX, .in = {x, -1}, .out = target,
                 .axis = axis};
  step_output(p, target, ST_I64, xt->ndim, shape);
  ST_TRY(push_step(p, &s));
  if (!keepdims) {
    int64_t dropped[ST_MAX_DIMS];
    for (int d = 0, k = 0; d < xt->ndim; d++)
      if (d != axis)
        dropped[k++] = xt->shape[d];
    make_view(p, out, target, xt->ndim - 1, dropped);
  }
  return ST_OK;
}

/* ---- ops of imported (TensorFlow.js) graphs ------------------------------
 * ONNX ops that exporters of convolutional teachers rarely write but that
 * src/models/tfjs.c maps TensorFlow ops onto: Pad, Split, ReduceMean,
 * Expand, Min, Max, Mod, Tanh, ConvTranspose. Each folds on constants and
 * runs on F32 tensors where the backend has what it needs. */

/* Host copy of `x` with every element passed through `fn` (constants). */
static int fold_unary(st_onnx_plan *p, int out, const st_tensor *x,
                      double (*fn)(double)) {
  st_tensor y;
  ST_TRY(host_alloc(&y, x->dtype, x->ndim, x->shape));
  for (int64_t i = 0; i < st_tensor_numel(x); i++)
    hset(&y, i, fn(hget(x, i)));
  set_const(p, out, y, 1);
  return ST_OK;
}

/* A scalar constant of value v (F32) as a new value. */
static int scalar_const(st_onnx_plan *p, float v, int *id) {
  st_tensor t;
  ST_TRY(new_value(p, id));
  ST_TRY(host_alloc(&t, ST_F32, 0, NULL));
  hset(&t, 0, v);
  set_const(p, *id, t, 1);
  return ST_OK;
}

/* y = a (op) b as a runtime step writing `out` (a new value when out < 0). */
static int push_binary(st_onnx_plan *p, const st_onnx_node *n,
                       st_binary_kind kind, int a, int b, int out,
                       int *written) {
  int r;
  int64_t shape[ST_MAX_DIMS];
  ST_TRY(broadcast_shape(n, vt(p, a), vt(p, b), &r, shape));
  if (out < 0)
    ST_TRY(new_value(p, &out));
  ST_TRY(f32_operand(p, n, a));
  ST_TRY(f32_operand(p, n, b));
  exec_step s = {.kind = STEP_BINARY, .in = {a, b}, .out = out,
                 .binary = kind};
  step_output(p, out, ST_F32, r, shape);
  ST_TRY(push_step(p, &s));
  if (written)
    *written = out;
  return ST_OK;
}

static int push_unary_to(st_onnx_plan *p, const st_onnx_node *n,
                         st_unary_kind kind, float alpha, float beta, int x,
                         int out, int *written) {
  if (out < 0)
    ST_TRY(new_value(p, &out));
  ST_TRY(f32_operand(p, n, x));
  exec_step s = {.kind = STEP_UNARY, .in = {x, -1}, .out = out,
                 .unary = kind, .alpha = alpha, .beta = beta};
  step_output(p, out, ST_F32, vt(p, x)->ndim, vt(p, x)->shape);
  ST_TRY(push_step(p, &s));
  if (written)
    *written = out;
  return ST_OK;
}

/* The part of runtime value x given by starts/steps and shape `shape`
 * written to `out`: a view when it is one contiguous block of x (a
 * channel split of a batch-1 tensor), a Slice step otherwise. */
static int slice_to(st_onnx_plan *p, const st_onnx_node *n, int x,
                    const int64_t *starts, const int64_t *steps,
                    const int64_t *shape, int out) {
  const st_tensor *t = vt(p, x);
  int r = t->ndim, d0 = 0, contiguous = 1;
  for (int d = 0; d < r; d++)
    if (steps[d] != 1)
      contiguous = 0;
  while (d0 < r && shape[d0] == t->shape[d0])
    d0++;
  /* After the first axis cut, every axis must be whole; before it, every
   * axis must have extent 1, or the block is strided. */
  for (int d = d0 + 1; d < r && contiguous; d++)
    if (shape[d] != t->shape[d])
      contiguous = 0;
  for (int d = 0; d < d0 && d < r && contiguous; d++)
    if (t->shape[d] != 1)
      contiguous = 0;
  if (contiguous) {
    int64_t strides[ST_MAX_DIMS], off = 0;
    strides_of(r, t->shape, strides);
    for (int d = 0; d < r; d++)
      off += starts[d] * strides[d];
    make_view_at(p, out, x, r, shape, off);
    return ST_OK;
  }
  if (shape_numel(r, shape) == 0)
    return REFUSE(n, "an empty slice at run time is not supported");
  ST_TRY(f32_operand(p, n, x));
  exec_step s = {.kind = STEP_SLICE, .in = {x, -1}, .out = out};
  memcpy(s.starts, starts, (size_t)r * sizeof *starts);
  memcpy(s.steps, steps, (size_t)r * sizeof *steps);
  step_output(p, out, ST_F32, r, shape);
  return push_step(p, &s);
}

/* Pad (opset 11+: pads and constant_value are inputs; mode "constant"). */
static int op_pad(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"mode", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  const char *mode;
  ST_TRY(st_onnx_attr_string(n, "mode", "constant", &mode));
  if (strcmp(mode, "constant"))
    return REFUSE(n, "mode '%s' is not supported (only constant)", mode);
  if (has_input(n, 3))
    return REFUSE(n, "the axes input is not supported");
  int x = 0, pid = 0, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &x));
  ST_TRY(input_id(p, n, 1, &pid));
  double value = 0.0;
  if (has_input(n, 2)) {
    int vid;
    ST_TRY(input_id(p, n, 2, &vid));
    ST_TRY(const_scalar(p, n, vid, "constant_value", &value));
  }
  const st_tensor *t = vt(p, x);
  int r = t->ndim;
  int64_t pads[2 * ST_MAX_DIMS];
  size_t count;
  ST_TRY(const_ints(p, n, pid, "pads", pads, 2 * ST_MAX_DIMS, &count));
  if (count != 2 * (size_t)r)
    return node_fail(ST_ESHAPE, n, "pads has %zu values for rank %d", count,
                     r);
  /* A Pad of a deferred Pad pads the original by the sum. */
  deferred_pad in_dp = p->deferred[x];
  if (in_dp.active) {
    x = in_dp.src;
    t = vt(p, x);
    for (int i = 0; i < 2; i++) {
      pads[2 + i] += in_dp.begin[i];
      pads[r + 2 + i] += in_dp.end[i];
    }
  }
  int64_t shape[ST_MAX_DIMS];
  int negative = 0, positive = 0;
  for (int d = 0; d < r; d++) {
    shape[d] = t->shape[d] + pads[d] + pads[r + d];
    if (shape[d] < 0)
      return node_fail(ST_ESHAPE, n, "pads remove more than axis %d holds",
                       d);
    negative |= pads[d] < 0 || pads[r + d] < 0;
    positive |= pads[d] > 0 || pads[r + d] > 0;
  }
  if (is_const(p, x)) {
    st_tensor y;
    ST_TRY(host_alloc(&y, t->dtype, r, shape));
    int64_t idx[ST_MAX_DIMS], strides[ST_MAX_DIMS];
    strides_of(r, t->shape, strides);
    for (int64_t i = 0; i < st_tensor_numel(&y); i++) {
      unravel(i, r, shape, idx);
      int64_t off = 0, inside = 1;
      for (int d = 0; d < r; d++) {
        int64_t k = idx[d] - pads[d];
        inside &= k >= 0 && k < t->shape[d];
        off += k * strides[d];
      }
      hset(&y, i, inside ? hget(t, off) : value);
    }
    set_const(p, out, y, 1);
    p->stats.folded_nodes++;
    return ST_OK;
  }
  /* Left for the Conv (or Pad) that alone reads it. */
  int spatial_only = r == 4 && !negative && value == 0.0;
  for (int d = 0; d < 2 && spatial_only; d++)
    spatial_only = pads[d] == 0 && pads[r + d] == 0;
  if (spatial_only && (sole_consumer(p, out, "Conv") ||
                       sole_consumer(p, out, "Pad"))) {
    set_runtime(p, out, ST_F32, r, shape, p->values[x].root);
    p->stats.views--; /* not a view: nothing reads it */
    deferred_pad *dp = &p->deferred[out];
    dp->active = 1;
    dp->src = x;
    for (int i = 0; i < 2; i++) {
      dp->begin[i] = pads[2 + i];
      dp->end[i] = pads[r + 2 + i];
    }
    return ST_OK;
  }
  int cur = x;
  if (negative) {
    int64_t starts[ST_MAX_DIMS], steps[ST_MAX_DIMS], cshape[ST_MAX_DIMS];
    for (int d = 0; d < r; d++) {
      int64_t b = pads[d] < 0 ? -pads[d] : 0, e = pads[r + d] < 0
                                                       ? -pads[r + d]
                                                       : 0;
      starts[d] = b;
      steps[d] = 1;
      cshape[d] = t->shape[d] - b - e;
    }
    int cropped = out;
    if (positive)
      ST_TRY(new_value(p, &cropped));
    ST_TRY(slice_to(p, n, cur, starts, steps, cshape, cropped));
    cur = cropped;
  }
  if (!positive) {
    if (!negative)
      make_view(p, out, x, r, shape);
    return ST_OK;
  }
  /* Each padded axis is a Concat of filled blocks around the tensor. */
  for (int d = 0; d < r; d++) {
    int64_t b = pads[d] > 0 ? pads[d] : 0, e = pads[r + d] > 0 ? pads[r + d]
                                                               : 0;
    if (!b && !e)
      continue;
    const st_tensor *ct = vt(p, cur);
    int64_t bshape[ST_MAX_DIMS];
    memcpy(bshape, ct->shape, sizeof bshape);
    int ids[3], count_in = 0;
    int64_t extents[3] = {b, 0, e};
    for (int k = 0; k < 3; k++) {
      if (k == 1) {
        ids[count_in++] = cur;
        continue;
      }
      if (!extents[k])
        continue;
      st_tensor block;
      bshape[d] = extents[k];
      ST_TRY(new_value(p, &ids[count_in]));
      ST_TRY(host_alloc(&block, ST_F32, r, bshape));
      for (int64_t i = 0; value != 0.0 && i < st_tensor_numel(&block); i++)
        hset(&block, i, value);
      set_const(p, ids[count_in++], block, 1);
    }
    for (int k = 0; k < count_in; k++)
      ST_TRY(f32_operand(p, n, ids[k]));
    int y = out;
    int last = 1;
    for (int d2 = d + 1; d2 < r; d2++)
      if (pads[d2] > 0 || pads[r + d2] > 0)
        last = 0;
    if (!last)
      ST_TRY(new_value(p, &y));
    int64_t yshape[ST_MAX_DIMS];
    memcpy(yshape, ct->shape, sizeof yshape);
    yshape[d] += b + e;
    ST_TRY(push_concat(p, ids, count_in, d, y, r, yshape));
    cur = y;
  }
  return ST_OK;
}

/* Split (opset 13+: sizes as an optional input; opset 18: num_outputs). */
static int op_split(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"axis", "num_outputs", NULL};
  ST_TRY(check_attrs(n, known));
  int x = 0, axis = 0;
  ST_TRY(input_id(p, n, 0, &x));
  const st_tensor *t = vt(p, x);
  int64_t axis_attr, num;
  ST_TRY(st_onnx_attr_int(n, "axis", 0, &axis_attr));
  ST_TRY(normalize_axis(n, axis_attr, t->ndim, &axis));
  size_t outs = n->n_outputs;
  ST_TRY(st_onnx_attr_int(n, "num_outputs", (int64_t)outs, &num));
  if (num != (int64_t)outs || outs < 1)
    return node_fail(ST_EFORMAT, n, "num_outputs %lld for %zu outputs",
                     (long long)num, outs);
  int64_t *sizes = calloc(outs, sizeof *sizes);
  if (!sizes)
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  int rc = ST_OK;
  int64_t dim = t->shape[axis], total = 0;
  if (has_input(n, 1)) {
    int sid = 0;
    size_t count = 0;
    rc = input_id(p, n, 1, &sid);
    if (!rc)
      rc = const_ints(p, n, sid, "split", sizes, outs, &count);
    if (!rc && count != outs)
      rc = node_fail(ST_ESHAPE, n, "split has %zu sizes for %zu outputs",
                     count, outs);
  } else {
    /* Equal parts, the last one smaller when the axis does not divide. */
    int64_t part = (dim + (int64_t)outs - 1) / (int64_t)outs;
    for (size_t k = 0; k < outs; k++) {
      int64_t left = dim - part * (int64_t)k;
      sizes[k] = left < part ? (left > 0 ? left : 0) : part;
    }
  }
  for (size_t k = 0; !rc && k < outs; k++) {
    if (sizes[k] < 0)
      rc = node_fail(ST_ESHAPE, n, "negative split size");
    total += sizes[k];
  }
  if (!rc && total != dim)
    rc = node_fail(ST_ESHAPE, n, "split sizes add up to %lld, the axis has "
                   "%lld", (long long)total, (long long)dim);
  int64_t start = 0;
  for (size_t k = 0; !rc && k < outs; k++) {
    int64_t starts[ST_MAX_DIMS] = {0}, steps[ST_MAX_DIMS], shape[ST_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) {
      steps[d] = 1;
      shape[d] = t->shape[d];
    }
    starts[axis] = start;
    shape[axis] = sizes[k];
    start += sizes[k];
    if (!n->outputs[k][0])
      continue;
    int out = output_id(p, n, k);
    if (is_const(p, x)) {
      slice_ctx c = {.x = t};
      memcpy(c.start, starts, sizeof c.start);
      memcpy(c.step, steps, sizeof c.step);
      rc = fold_gather_elems(p, out, t, t->ndim, shape, slice_src, &c);
    } else {
      rc = slice_to(p, n, x, starts, steps, shape, out);
    }
  }
  free(sizes);
  return rc;
}

/* The reduced axes of ReduceMean (an attribute before opset 18, an input
 * since); none given means all. */
static int reduce_axes(st_onnx_plan *p, const st_onnx_node *n, int rank,
                       int *reduce) {
  int64_t axes[ST_MAX_DIMS];
  size_t count = 0;
  enum { OPSET_REDUCE_AXES_AS_INPUT = 18 };
  if (p->m->opset >= OPSET_REDUCE_AXES_AS_INPUT) {
    if (has_input(n, 1)) {
      int id;
      ST_TRY(input_id(p, n, 1, &id));
      ST_TRY(const_ints(p, n, id, "axes", axes, ST_MAX_DIMS, &count));
    }
  } else {
    const int64_t *v;
    ST_TRY(st_onnx_attr_ints(n, "axes", &v, &count));
    if (count > ST_MAX_DIMS)
      return REFUSE(n, "more than %d axes", ST_MAX_DIMS);
    memcpy(axes, v, count * sizeof *v);
  }
  int64_t noop;
  ST_TRY(st_onnx_attr_int(n, "noop_with_empty_axes", 0, &noop));
  if (!count && noop)
    return REFUSE(n, "noop_with_empty_axes=1 is not supported");
  for (int d = 0; d < rank; d++)
    reduce[d] = count == 0;
  for (size_t i = 0; i < count; i++) {
    int a = 0;
    ST_TRY(normalize_axis(n, axes[i], rank, &a));
    reduce[a] = 1;
  }
  return ST_OK;
}

static int op_reduce_mean(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"axes", "keepdims",
                                      "noop_with_empty_axes", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int x = 0, out = output_id(p, n, 0), reduce[ST_MAX_DIMS];
  ST_TRY(input_id(p, n, 0, &x));
  const st_tensor *t = vt(p, x);
  int64_t keepdims;
  ST_TRY(st_onnx_attr_int(n, "keepdims", 1, &keepdims));
  ST_TRY(reduce_axes(p, n, t->ndim, reduce));
  int64_t kept[ST_MAX_DIMS], dropped[ST_MAX_DIMS];
  int r_dropped = 0;
  for (int d = 0; d < t->ndim; d++) {
    kept[d] = reduce[d] ? 1 : t->shape[d];
    if (!reduce[d])
      dropped[r_dropped++] = t->shape[d];
  }
  if (is_const(p, x)) {
    st_tensor y;
    ST_TRY(host_alloc(&y, ST_F32, t->ndim, kept));
    double *acc = calloc((size_t)st_tensor_numel(&y), sizeof *acc);
    if (!acc) {
      st_tensor_free(&y);
      return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
    }
    int64_t idx[ST_MAX_DIMS], ystr[ST_MAX_DIMS];
    strides_of(t->ndim, kept, ystr);
    for (int64_t i = 0; i < st_tensor_numel(t); i++) {
      unravel(i, t->ndim, t->shape, idx);
      int64_t o = 0;
      for (int d = 0; d < t->ndim; d++)
        o += (reduce[d] ? 0 : idx[d]) * ystr[d];
      acc[o] += hget(t, i);
    }
    int64_t per = st_tensor_numel(&y) ? st_tensor_numel(t) /
                                            st_tensor_numel(&y)
                                      : 1;
    for (int64_t i = 0; i < st_tensor_numel(&y); i++)
      hset(&y, i, acc[i] / (double)(per ? per : 1));
    free(acc);
    if (!keepdims) {
      y.ndim = r_dropped;
      for (int d = 0; d < ST_MAX_DIMS; d++)
        y.shape[d] = d < r_dropped ? dropped[d] : 1;
    }
    set_const(p, out, y, 1);
    p->stats.folded_nodes++;
    return ST_OK;
  }
  if (t->ndim != 4)
    return REFUSE(n, "a mean over a rank-%d runtime tensor is not supported "
                  "(only NCHW)", t->ndim);
  int spatial = !reduce[0] && !reduce[1] && reduce[2] && reduce[3];
  int channels = !reduce[0] && reduce[1] && !reduce[2] && !reduce[3];
  if (!spatial && !channels)
    return REFUSE(n, "a mean over these axes is not supported (only H,W or "
                  "C of NCHW)");
  int target = out;
  if (!keepdims)
    ST_TRY(new_value(p, &target));
  ST_TRY(f32_operand(p, n, x));
  if (spatial) {
    exec_step s = {.kind = STEP_GLOBAL_AVG_POOL, .in = {x, -1},
                   .out = target};
    step_output(p, target, ST_F32, 4, kept);
    ST_TRY(push_step(p, &s));
  } else {
    /* The channel mean is a 1x1 convolution with weights 1/C. */
    exec_step s = {.kind = STEP_CONV, .in = {x, -1}, .out = target,
                   .act = ST_ACT_NONE};
    s.conv = (st_conv2d_params){.stride = {1, 1}, .pad = {0, 0},
                                .dilation = {1, 1}, .groups = 1};
    const int64_t wshape[4] = {1, t->shape[1], 1, 1};
    float *w = malloc((size_t)t->shape[1] * sizeof *w);
    if (!w)
      return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
    for (int64_t c = 0; c < t->shape[1]; c++)
      w[c] = (float)(1.0 / (double)t->shape[1]);
    int rc = st_tensor_alloc(p->be, &s.w, ST_F32, 4, wshape);
    if (!rc)
      rc = st_tensor_upload(p->be, &s.w, w, st_tensor_nbytes(&s.w));
    free(w);
    if (!rc) {
      step_output(p, target, ST_F32, 4, kept);
      rc = push_step(p, &s);
    }
    if (rc) {
      st_tensor_free(&s.w);
      return rc;
    }
  }
  if (!keepdims)
    make_view(p, out, target, r_dropped, dropped);
  return ST_OK;
}

/* Expand: x broadcast to a shape (numpy rules, both ways). */
static int op_expand(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS));
  ST_TRY(check_outputs(n, 1));
  int x = 0, sid = 0, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &x));
  ST_TRY(input_id(p, n, 1, &sid));
  int64_t want[ST_MAX_DIMS];
  size_t count;
  ST_TRY(const_ints(p, n, sid, "shape", want, ST_MAX_DIMS, &count));
  st_tensor target = st_tensor_view(NULL, ST_F32, (int)count, want);
  int r;
  int64_t shape[ST_MAX_DIMS];
  ST_TRY(broadcast_shape(n, vt(p, x), &target, &r, shape));
  const st_tensor *t = vt(p, x);
  if (is_const(p, x)) {
    st_tensor y;
    ST_TRY(host_alloc(&y, t->dtype, r, shape));
    int64_t idx[ST_MAX_DIMS];
    size_t es = st_dtype_size(t->dtype);
    for (int64_t i = 0; i < st_tensor_numel(&y); i++) {
      unravel(i, r, shape, idx);
      memcpy((char *)y.data + i * es,
             (const char *)t->data + broadcast_index(t, r, idx) * es, es);
    }
    set_const(p, out, y, 1);
    p->stats.folded_nodes++;
    return ST_OK;
  }
  if (shape_numel(r, shape) == st_tensor_numel(t)) {
    make_view(p, out, x, r, shape); /* nothing to repeat */
    return ST_OK;
  }
  /* x + zeros of the target shape: the backend's broadcasting binary op
   * does the repeating. */
  int zeros = 0;
  st_tensor z;
  ST_TRY(new_value(p, &zeros));
  ST_TRY(host_alloc(&z, ST_F32, r, shape));
  set_const(p, zeros, z, 1);
  return push_binary(p, n, ST_BINARY_ADD, x, zeros, out, NULL);
}

/* Min and Max of two operands: folded on constants, a Clip against a
 * scalar constant at run time. */
static int op_min_max(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS));
  ST_TRY(check_outputs(n, 1));
  int is_max = !strcmp(n->op_type, "Max");
  if (n->n_inputs != 2)
    return REFUSE(n, "%zu operands are not supported (only 2)", n->n_inputs);
  int a = 0, b = 0, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &a));
  ST_TRY(input_id(p, n, 1, &b));
  if (is_const(p, a) && is_const(p, b)) {
    p->stats.folded_nodes++;
    return fold_binary(p, n, a, b, is_max ? FOLD_MAX : FOLD_MIN, out);
  }
  if (is_const(p, a)) {
    int tmp = a;
    a = b;
    b = tmp;
  }
  if (is_const(p, b) && st_tensor_numel(vt(p, b)) == 1 &&
      vt(p, b)->ndim <= vt(p, a)->ndim) {
    float c = (float)hget(vt(p, b), 0);
    return push_unary_to(p, n, ST_UNARY_CLIP, is_max ? c : -INFINITY,
                         is_max ? INFINITY : c, a, out, NULL);
  }
  return REFUSE(n, "%s of two runtime tensors is not supported (only against "
                "a scalar constant)", n->op_type);
}

/* Mod, on constants only (shape arithmetic). */
static int op_mod(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"fmod", NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int64_t use_fmod;
  ST_TRY(st_onnx_attr_int(n, "fmod", 0, &use_fmod));
  int a = 0, b = 0, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &a));
  ST_TRY(input_id(p, n, 1, &b));
  if (!is_const(p, a) || !is_const(p, b))
    return REFUSE(n, "Mod of a tensor computed at run time is not supported "
                  "(only shape arithmetic is)");
  const st_tensor *ta = vt(p, a);
  int integer = ta->dtype != ST_F32 && ta->dtype != ST_F16;
  if (!integer && !use_fmod)
    return node_fail(ST_EINVAL, n, "fmod must be 1 for floating point");
  p->stats.folded_nodes++;
  return fold_binary(p, n, a, b, use_fmod ? FOLD_FMOD : FOLD_MOD, out);
}

/* Tanh: the backend has a sigmoid, and tanh(x) = 2 * sigmoid(2x) - 1. */
static int op_tanh(st_onnx_plan *p, const st_onnx_node *n) {
  ST_TRY(check_attrs(n, NO_ATTRS));
  ST_TRY(check_outputs(n, 1));
  int x = 0, out = output_id(p, n, 0);
  ST_TRY(input_id(p, n, 0, &x));
  if (is_const(p, x)) {
    p->stats.folded_nodes++;
    return fold_unary(p, out, vt(p, x), tanh);
  }
  int two = 0, one = 0, v1 = 0, v2 = 0, v3 = 0;
  ST_TRY(scalar_const(p, 2.0f, &two));
  ST_TRY(scalar_const(p, 1.0f, &one));
  ST_TRY(push_binary(p, n, ST_BINARY_MUL, x, two, -1, &v1));
  ST_TRY(use_value(p, v1));
  ST_TRY(push_unary_to(p, n, ST_UNARY_SIGMOID, 0.0f, 0.0f, v1, -1, &v2));
  ST_TRY(use_value(p, v2));
  ST_TRY(push_binary(p, n, ST_BINARY_MUL, v2, two, -1, &v3));
  ST_TRY(use_value(p, v3));
  return push_binary(p, n, ST_BINARY_SUB, v3, one, out, NULL);
}

/* ConvTranspose: the data gradient of the convolution it inverts
 * (st_conv2d_bwd_data), plus the bias. Padding that differs between the
 * two ends of an axis is run as the smaller one and the rest cropped off
 * the end. */
static int op_conv_transpose(st_onnx_plan *p, const st_onnx_node *n) {
  static const char *const known[] = {"auto_pad", "dilations", "group",
                                      "kernel_shape", "output_padding",
                                      "output_shape", "pads", "strides",
                                      NULL};
  ST_TRY(check_attrs(n, known));
  ST_TRY(check_outputs(n, 1));
  int x = 0, wid = 0, bid = -1, out = output_id(p, n, 0);
  ST_TRY(rank4_input(p, n, &x));
  ST_TRY(input_id(p, n, 1, &wid));
  if (!is_const(p, wid))
    return REFUSE(n, "weights computed at run time are not supported");
  if (has_input(n, 2)) {
    ST_TRY(input_id(p, n, 2, &bid));
    if (!is_const(p, bid))
      return REFUSE(n, "a bias computed at run time is not supported");
  }
  const st_tensor *xt = vt(p, x), *wt = vt(p, wid);
  if (wt->ndim != 4)
    return REFUSE(n, "rank %d weights; only 2-D is supported", wt->ndim);
  int64_t group;
  ST_TRY(st_onnx_attr_int(n, "group", 1, &group));
  if (group != 1)
    return REFUSE(n, "group=%lld is not supported", (long long)group);
  if (wt->shape[0] != xt->shape[1])
    return node_fail(ST_ESHAPE, n, "weights take %lld channels, the input "
                     "has %lld", (long long)wt->shape[0],
                     (long long)xt->shape[1]);
  int64_t cout = wt->shape[1];
  int stride[2], dil[2];
  ST_TRY(read_pair(n, "strides", 1, stride));
  ST_TRY(read_pair(n, "dilations", 1, dil));
  const int64_t *v;
  size_t count;
  int64_t outpad[2] = {0, 0}, pads[4] = {0, 0, 0, 0}, osize[2];
  ST_TRY(st_onnx_attr_ints(n, "output_padding", &v, &count));
  if (count && count != 2)
    return REFUSE(n, "output_padding with %zu values", count);
  for (size_t i = 0; i < count; i++)
    outpad[i] = v[i];
  const char *auto_pad;
  ST_TRY(st_onnx_attr_string(n, "auto_pad", "NOTSET", &auto_pad));
  const int64_t *oshape;
  size_t ocount;
  ST_TRY(st_onnx_attr_ints(n, "output_shape", &oshape, &ocount));
  for (int i = 0; i < 2; i++) {
    int64_t span = (wt->shape[2 + i] - 1) * dil[i] + 1;
    int64_t full = (xt->shape[2 + i] - 1) * stride[i] + outpad[i] + span;
    if (ocount) {
      if (ocount != 2)
        return REFUSE(n, "output_shape with %zu values", ocount);
      int64_t total = full - oshape[i];
      if (total < 0)
        return node_fail(ST_ESHAPE, n, "output_shape larger than the full "
                         "transposed convolution");
      /* SAME_LOWER puts the odd cell first; otherwise it goes last. */
      int lower = !strcmp(auto_pad, "SAME_LOWER");
      pads[i] = lower ? total - total / 2 : total / 2;
      pads[2 + i] = total - pads[i];
    } else if (!strcmp(auto_pad, "SAME_UPPER") ||
               !strcmp(auto_pad, "SAME_LOWER")) {
      int64_t total = full - xt->shape[2 + i] * stride[i];
      if (total < 0)
        total = 0;
      int lower = !strcmp(auto_pad, "SAME_LOWER");
      pads[i] = lower ? total - total / 2 : total / 2;
      pads[2 + i] = total - pads[i];
    } else {
      const int64_t *pv;
      size_t pc;
      ST_TRY(st_onnx_attr_ints(n, "pads", &pv, &pc));
      if (pc && pc != 4)
        return REFUSE(n, "'pads' has %zu values", pc);
      if (pc) {
        pads[i] = pv[i];
        pads[2 + i] = pv[2 + i];
      }
    }
    if (pads[i] < 0 || pads[2 + i] < 0 || pads[i] > INT_MAX ||
        pads[2 + i] > INT_MAX)
      return node_fail(ST_ERANGE, n, "negative or huge pads");
    osize[i] = full - pads[i] - pads[2 + i];
    if (osize[i] < 1)
      return node_fail(ST_ESHAPE, n, "empty output");
  }
  exec_step s = {.kind = STEP_CONV_TRANSPOSE, .in = {x, -1}};
  int sym[2], crop = 0;
  int64_t full_shape[4] = {xt->shape[0], cout, 0, 0};
  for (int i = 0; i < 2; i++) {
    sym[i] = (int)(pads[i] < pads[2 + i] ? pads[i] : pads[2 + i]);
    /* The larger end's extra rows are computed and cropped off. */
    full_shape[2 + i] = osize[i] + (pads[i] - sym[i]) + (pads[2 + i] - sym[i]);
    crop |= full_shape[2 + i] != osize[i];
  }
  if (pads[0] > pads[2] || pads[1] > pads[3])
    return REFUSE(n, "more padding at the start than at the end is not "
                  "supported");
  s.conv = (st_conv2d_params){.stride = {stride[0], stride[1]},
                              .pad = {sym[0], sym[1]},
                              .dilation = {dil[0], dil[1]}, .groups = 1};
  int rc = st_tensor_alloc(p->be, &s.w, ST_F32, 4, wt->shape);
  float *w = rc ? NULL : malloc((size_t)st_tensor_numel(wt) * sizeof *w);
  if (!rc && !w)
    rc = st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  for (int64_t i = 0; !rc && i < st_tensor_numel(wt); i++)
    w[i] = (float)hget(wt, i);
  if (!rc)
    rc = st_tensor_upload(p->be, &s.w, w, st_tensor_nbytes(&s.w));
  free(w);
  if (!rc)
    rc = f32_operand(p, n, x);
  int conv_out = out;
  if (!rc && (crop || bid >= 0))
    rc = new_value(p, &conv_out);
  if (!rc) {
    s.out = conv_out;
    step_output(p, conv_out, ST_F32, 4, full_shape);
    rc = push_step(p, &s);
  }
  if (rc) {
    st_tensor_free(&s.w);
    return rc;
  }
  int cur = conv_out;
  if (crop) {
    int64_t starts[4] = {0, 0, 0, 0}, steps[4] = {1, 1, 1, 1};
    int64_t cshape[4] = {full_shape[0], cout, osize[0], osize[1]};
    int cropped = out;
    if (bid >= 0)
      ST_TRY(new_value(p, &cropped));
    ST_TRY(slice_to(p, n, cur, starts, steps, cshape, cropped));
    cur = cropped;
  }
  if (bid >= 0) {
    if (st_tensor_numel(vt(p, bid)) != cout)
      return node_fail(ST_ESHAPE, n, "bias has %lld values for %lld outputs",
                       (long long)st_tensor_numel(vt(p, bid)),
                       (long long)cout);
    int bias = 0;
    st_tensor bt;
    const int64_t bshape[4] = {1, cout, 1, 1};
    ST_TRY(new_value(p, &bias));
    ST_TRY(host_alloc(&bt, ST_F32, 4, bshape));
    for (int64_t c = 0; c < cout; c++)
      hset(&bt, c, hget(vt(p, bid), c));
    set_const(p, bias, bt, 1);
    ST_TRY(use_value(p, cur));
    ST_TRY(push_binary(p, n, ST_BINARY_ADD, cur, bias, out, NULL));
  }
  return ST_OK;
}

typedef struct op_entry {
  const char *name;
  node_fn fn;
  int host_folded; /* counts as folded when it runs on constants */
} op_entry;

static const op_entry OPS[] = {
    {"Conv", op_conv, 0},
    {"BatchNormalization", op_batchnorm, 0},
    {"Relu", op_relu, 0},
    {"Clip", op_clip, 0},
    {"HardSigmoid", op_hardsigmoid, 0},
    {"HardSwish", op_hardswish, 0},
    {"Sigmoid", op_sigmoid, 0},
    {"Add", op_binary, 0},
    {"Sub", op_binary, 0},
    {"Mul", op_binary, 0},
    {"Div", op_binary, 0},
    {"Concat", op_concat, 0},
    {"GlobalAveragePool", op_global_avg_pool, 0},
    {"AveragePool", op_avgpool, 0},
    {"MaxPool", op_maxpool, 0},
    {"Resize", op_resize, 0},
    {"Softmax", op_softmax, 0},
    {"ArgMax", op_argmax, 0},
    {"Transpose", op_transpose, 0},
    {"Identity", op_identity, 1},
    {"Constant", op_constant, 1},
    {"Shape", op_shape, 1},
    {"Gather", op_gather, 1},
    {"Slice", op_slice, 1},
    {"Squeeze", op_squeeze, 1},
    {"Unsqueeze", op_unsqueeze, 1},
    {"Cast", op_cast, 1},
    {"Reshape", op_reshape, 1},
    {"Flatten", op_flatten, 1},
    {"Pad", op_pad, 0},
    {"Split", op_split, 0},
    {"ReduceMean", op_reduce_mean, 0},
    {"Expand", op_expand, 0},
    {"Min", op_min_max, 0},
    {"Max", op_min_max, 0},
    {"Mod", op_mod, 0},
    {"Tanh", op_tanh, 0},
    {"ConvTranspose", op_conv_transpose, 0},
};

/* ---- buffers ----------------------------------------------------------- */

/* Gives every root a buffer: a free one large enough (the smallest such),
 * else the largest free one grown, else a new one. Buffers are freed after
 * the last step reading their value, so a step never writes over its own
 * inputs. */
static int assign_buffers(st_onnx_plan *p) {
  int cap = (int)p->n_values;
  p->buffer_bytes = calloc((size_t)cap + 1, sizeof *p->buffer_bytes);
  char *busy = calloc((size_t)cap + 1, 1);
  /* roots ending at each step, chained through a next array */
  int *end_head = malloc(((size_t)p->n_steps + 1) * sizeof *end_head);
  int *end_next = malloc(p->n_values * sizeof *end_next);
  if (!p->buffer_bytes || !busy || !end_head || !end_next) {
    free(busy);
    free(end_head);
    free(end_next);
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  }
  for (int s = 0; s <= p->n_steps; s++)
    end_head[s] = -1;
  for (size_t i = 0; i < p->n_values; i++) {
    exec_value *v = &p->values[i];
    end_next[i] = -1;
    if (!v->defined || v->is_const || v->root != (int)i || v->def_step < 0)
      continue;
    p->stats.naive_bytes += (int64_t)st_tensor_nbytes(&v->rt);
    if (v->last_use != LIVE_TO_END) {
      end_next[i] = end_head[v->last_use];
      end_head[v->last_use] = (int)i;
    }
  }
  for (int s = 0; s < p->n_steps; s++) {
    exec_value *v = &p->values[p->steps[s].out];
    int64_t need = (int64_t)st_tensor_nbytes(&v->rt);
    int best = -1, largest = -1;
    for (int b = 0; b < p->n_buffers; b++) {
      if (busy[b])
        continue;
      if (p->buffer_bytes[b] >= need &&
          (best < 0 || p->buffer_bytes[b] < p->buffer_bytes[best]))
        best = b;
      if (largest < 0 || p->buffer_bytes[b] > p->buffer_bytes[largest])
        largest = b;
    }
    if (best < 0 && largest >= 0) {
      best = largest;
      p->buffer_bytes[best] = need;
    }
    if (best < 0) {
      best = p->n_buffers++;
      p->buffer_bytes[best] = need;
    }
    busy[best] = 1;
    v->buffer = best;
    for (int r = end_head[s]; r >= 0; r = end_next[r])
      busy[p->values[r].buffer] = 0;
  }
  free(busy);
  free(end_head);
  free(end_next);
  p->buffers = calloc((size_t)p->n_buffers + 1, sizeof *p->buffers);
  if (!p->buffers)
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  for (int b = 0; b < p->n_buffers; b++) {
    ST_TRY(st_backend_alloc(p->be, (size_t)p->buffer_bytes[b], &p->buffers[b]));
    p->stats.buffer_bytes += p->buffer_bytes[b];
  }
  p->stats.buffers = p->n_buffers;
  return ST_OK;
}

/* Points every runtime value at its storage; lists those in the input. */
static int bind_storage(st_onnx_plan *p) {
  p->input_views = calloc(p->n_values, sizeof *p->input_views);
  if (!p->input_views)
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  for (size_t i = 0; i < p->n_values; i++) {
    exec_value *v = &p->values[i];
    if (!v->defined || v->is_const)
      continue;
    if (v->root < (int)p->m->n_inputs)
      p->input_views[p->n_input_views++] = (int)i;
    else
      v->rt.data = (char *)p->buffers[p->values[v->root].buffer] + v->offset;
  }
  return ST_OK;
}

/* ---- planning ---------------------------------------------------------- */

/* Binds graph input `idx` of the model to plan input `given`: a runtime
 * F32 tensor of the given shape, or a host constant. */
static int plan_one_input(st_onnx_plan *p, size_t idx,
                          const st_onnx_plan_input *given) {
  const st_onnx_model *m = p->m;
  const st_onnx_value_info *in = &m->inputs[idx];
  int id = (int)idx;
  if (given->value) {
    const st_tensor *c = given->value;
    if (c->backend || (!c->data && st_tensor_nbytes(c)))
      return st_error_set(ST_EINVAL, "%s: input '%s' must be bound to a host "
                          "tensor", m->label, in->name);
    /* Copied: the caller's tensor need not outlive the plan. */
    st_tensor t;
    ST_TRY(host_alloc(&t, c->dtype, c->ndim, c->shape));
    if (st_tensor_nbytes(&t))
      memcpy(t.data, c->data, st_tensor_nbytes(&t));
    set_const(p, id, t, 1);
    return ST_OK;
  }
  if (in->elem_type != ST_ONNX_FLOAT && in->elem_type != ST_ONNX_UNDEFINED)
    return st_error_set(ST_ENOTSUP, "%s: input '%s' is %s, not FLOAT",
                        m->label, in->name,
                        st_onnx_elem_type_name(in->elem_type));
  if (given->ndim < 0 || given->ndim > ST_MAX_DIMS)
    return st_error_set(ST_ESHAPE, "%s: input '%s': rank %d", m->label,
                        in->name, given->ndim);
  if (in->ndim >= 0 && in->ndim != given->ndim)
    return st_error_set(ST_ESHAPE, "%s: input '%s' has rank %d, not %d",
                        m->label, in->name, in->ndim, given->ndim);
  for (int d = 0; d < given->ndim; d++) {
    if (given->shape[d] < 1)
      return st_error_set(ST_ESHAPE, "%s: input extent %lld", m->label,
                          (long long)given->shape[d]);
    if (in->ndim == given->ndim && in->dims[d] >= 0 &&
        in->dims[d] != given->shape[d])
      return st_error_set(ST_ESHAPE, "%s: input '%s' is fixed at extent %lld "
                          "on axis %d, asked for %lld", m->label, in->name,
                          (long long)in->dims[d], d,
                          (long long)given->shape[d]);
  }
  set_runtime(p, id, ST_F32, given->ndim, given->shape, id);
  if (p->input_id < 0)
    p->input_id = id;
  return ST_OK;
}

/* Every graph input is given exactly once, by name. */
static int plan_inputs(st_onnx_plan *p, const st_onnx_plan_input *inputs,
                       int n) {
  const st_onnx_model *m = p->m;
  p->input_id = -1;
  p->n_plan_inputs = n;
  p->plan_input_ids = calloc((size_t)n + 1, sizeof *p->plan_input_ids);
  p->run_inputs = calloc(m->n_inputs + 1, sizeof *p->run_inputs);
  if (!p->plan_input_ids || !p->run_inputs)
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  for (int k = 0; k < n; k++) {
    size_t idx = 0;
    while (idx < m->n_inputs &&
           (!inputs[k].name || strcmp(m->inputs[idx].name, inputs[k].name)))
      idx++;
    if (idx == m->n_inputs)
      return st_error_set(ST_EINVAL, "%s: the model has no input '%s'",
                          m->label, inputs[k].name ? inputs[k].name : "");
    if (p->values[idx].defined)
      return st_error_set(ST_EINVAL, "%s: input '%s' is given twice",
                          m->label, inputs[k].name);
    ST_TRY(plan_one_input(p, idx, &inputs[k]));
    p->plan_input_ids[k] = inputs[k].value ? -1 : (int)idx;
  }
  for (size_t idx = 0; idx < m->n_inputs; idx++)
    if (!p->values[idx].defined)
      return st_error_set(ST_EINVAL, "%s: input '%s' is not given", m->label,
                          m->inputs[idx].name);
  return ST_OK;
}

static int plan_initializers(st_onnx_plan *p) {
  for (size_t i = 0; i < p->m->n_initializers; i++) {
    const st_tensor *t = &p->m->initializers[i].tensor;
    int id = (int)(p->m->n_inputs + i);
    if (t->dtype == ST_F16) { /* computed on in F32 */
      st_tensor c;
      ST_TRY(host_alloc(&c, ST_F32, t->ndim, t->shape));
      for (int64_t k = 0; k < st_tensor_numel(t); k++)
        hset(&c, k, hget(t, k));
      set_const(p, id, c, 1);
    } else {
      set_const(p, id, *t, 0);
    }
    p->values[id].host.owns = p->values[id].host_owned;
  }
  return ST_OK;
}

/* Reader counts: sole_consumer() needs them before the nodes are planned. */
static int count_consumers(st_onnx_plan *p) {
  const st_onnx_model *m = p->m;
  for (size_t i = 0; i < p->n_values; i++)
    p->sole_reader[i] = -1;
  for (size_t k = 0; k < m->n_nodes; k++)
    for (size_t j = 0; j < m->nodes[k].n_inputs; j++) {
      int id = 0;
      if (!has_input(&m->nodes[k], j) ||
          value_id(p, m->nodes[k].inputs[j], &id))
        continue;
      p->consumers[id]++;
      p->sole_reader[id] = (int)k;
    }
  for (size_t o = 0; o < m->n_outputs; o++) {
    int id = 0;
    if (value_id(p, m->outputs[o].name, &id))
      return st_error_set(ST_EFORMAT, "%s: output '%s' is not defined",
                          m->label, m->outputs[o].name);
    p->consumers[id]++;
    p->sole_reader[id] = -1;
  }
  return ST_OK;
}

static int plan_outputs(st_onnx_plan *p) {
  const st_onnx_model *m = p->m;
  p->n_outputs = (int)m->n_outputs;
  p->outputs = calloc(m->n_outputs + 1, sizeof *p->outputs);
  if (!p->outputs)
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  for (size_t o = 0; o < m->n_outputs; o++) {
    int id = 0;
    ST_TRY(value_id(p, m->outputs[o].name, &id));
    p->outputs[o] = id;
    exec_value *v = &p->values[id];
    if (v->is_const)
      ST_TRY(upload_const(p, id)); /* a constant output lives on the backend */
    else
      p->values[v->root].last_use = LIVE_TO_END;
  }
  return ST_OK;
}

int st_onnx_plan_new_inputs(st_backend *be, const st_onnx_model *m,
                            const st_onnx_plan_input *inputs, int n_inputs,
                            st_onnx_plan **out) {
  *out = NULL;
  if (!be || !m || (!inputs && n_inputs) || n_inputs < 0)
    return st_error_set(ST_EINVAL, "onnx plan: missing argument");
  st_onnx_plan *p = calloc(1, sizeof *p);
  if (!p)
    return st_error_set(ST_ENOMEM, "onnx plan: out of memory");
  p->be = be;
  p->m = m;
  int rc = ST_OK;
  size_t base = m->n_inputs + m->n_initializers, outs = 0;
  p->node_base = calloc(m->n_nodes + 1, sizeof *p->node_base);
  if (!p->node_base)
    goto oom;
  for (size_t k = 0; k < m->n_nodes; k++) {
    p->node_base[k] = base + outs;
    outs += m->nodes[k].n_outputs;
  }
  p->n_values = base + outs;
  p->cap_values = p->n_values + EXEC_EXTRA_VALUES_PER_NODE * m->n_nodes;
  p->values = calloc(p->cap_values, sizeof *p->values);
  p->consumers = calloc(p->cap_values, sizeof *p->consumers);
  p->sole_reader = calloc(p->cap_values, sizeof *p->sole_reader);
  p->absorbed = calloc(m->n_nodes + 1, 1);
  p->deferred = calloc(p->cap_values, sizeof *p->deferred);
  if (!p->values || !p->consumers || !p->sole_reader || !p->absorbed ||
      !p->deferred)
    goto oom;
  if ((rc = count_consumers(p)) || (rc = plan_inputs(p, inputs, n_inputs)) ||
      (rc = plan_initializers(p)))
    goto err;
  for (size_t k = 0; k < m->n_nodes; k++) {
    const st_onnx_node *n = &m->nodes[k];
    if (p->absorbed[k])
      continue;
    const op_entry *op = NULL;
    for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++)
      if (!strcmp(OPS[i].name, n->op_type))
        op = &OPS[i];
    if (!op) {
      rc = REFUSE(n, "operator %s is not supported", n->op_type);
      goto err;
    }
    int steps_before = p->n_steps;
    if ((rc = op->fn(p, n)))
      goto err;
    if (op->host_folded && p->n_steps == steps_before &&
        p->values[output_id(p, n, 0)].is_const)
      p->stats.folded_nodes++;
  }
  if ((rc = plan_outputs(p)) || (rc = assign_buffers(p)) ||
      (rc = bind_storage(p)))
    goto err;
  p->stats.steps = p->n_steps;
  *out = p;
  return ST_OK;
oom:
  rc = st_error_set(ST_ENOMEM, "onnx plan: out of memory");
err:
  st_onnx_plan_free(p);
  return rc;
}

int st_onnx_plan_new(st_backend *be, const st_onnx_model *m,
                     const int64_t *input_shape, st_onnx_plan **out) {
  *out = NULL;
  if (!be || !m || !input_shape)
    return st_error_set(ST_EINVAL, "onnx plan: missing argument");
  if (m->n_inputs != 1)
    return st_error_set(ST_ENOTSUP, "%s: the model has %zu inputs; the "
                        "executor takes one image", m->label, m->n_inputs);
  enum { IMAGE_RANK = 4 };
  const st_onnx_value_info *in = &m->inputs[0];
  if (in->ndim >= 0 && in->ndim != IMAGE_RANK)
    return st_error_set(ST_ESHAPE, "%s: input '%s' has rank %d, not 4",
                        m->label, in->name, in->ndim);
  st_onnx_plan_input pi = {.name = in->name, .ndim = IMAGE_RANK};
  memcpy(pi.shape, input_shape, IMAGE_RANK * sizeof *input_shape);
  return st_onnx_plan_new_inputs(be, m, &pi, 1, out);
}

/* ---- running ----------------------------------------------------------- */

/* Subnormal floats: a network whose sigmoids saturate (RVM's recurrent
 * gates on a dark frame) fills activations with values below FLT_MIN, and
 * every multiply-add touching one takes a microcode assist: the same RVM
 * frame ran 55x slower on one core (3.0 s against 53 ms at 384x288). A
 * plan therefore runs with subnormals flushed to zero
 * (st_backend_flush_subnormals), as GPUs and TF's XNNPACK kernels do; a
 * value below 1.2e-38 has no meaning for a teacher. */

static st_tensor *rt(st_onnx_plan *p, int id) { return &p->values[id].rt; }

static int run_step(st_onnx_plan *p, exec_step *s) {
  st_backend *be = p->be;
  st_tensor *x = s->in[0] >= 0 ? rt(p, s->in[0]) : NULL, *y = rt(p, s->out);
  switch (s->kind) {
  case STEP_CONV:
    return st_conv2d_fwd(be, &s->conv, x, &s->w, s->has_bias ? &s->b : NULL,
                         s->act, 0.0f, y);
  case STEP_UNARY:
    return st_unary(be, s->unary, s->alpha, s->beta, x, y);
  case STEP_BINARY:
    return st_binary(be, s->binary, x, rt(p, s->in[1]), y);
  case STEP_POOL:
    return st_pool2d(be, &s->pool, x, y);
  case STEP_GLOBAL_AVG_POOL:
    return st_global_avg_pool(be, x, y);
  case STEP_RESIZE:
    return st_resize(be, &s->resize, x, y);
  case STEP_SOFTMAX:
    if (s->flatten2d) {
      st_tensor x2 = st_tensor_view(x->data, ST_F32, 2, s->flat);
      st_tensor y2 = st_tensor_view(y->data, ST_F32, 2, s->flat);
      return st_softmax(be, s->axis, &x2, &y2);
    }
    return st_softmax(be, s->axis, x, y);
  case STEP_TRANSPOSE:
    return st_transpose(be, s->perm, x, y);
  case STEP_CONCAT:
    return st_concat(be, s->axis, s->in_tensors, s->n_ins, y);
  case STEP_SLICE:
    return st_slice(be, s->starts, s->steps, x, y);
  case STEP_ARGMAX:
    return st_argmax_axis(be, s->axis, x, y);
  case STEP_CONV_TRANSPOSE:
    return st_conv2d_bwd_data(be, &s->conv, x, &s->w, y);
  }
  return st_error_set(ST_EINVAL, "onnx run: bad step");
}

int st_onnx_plan_run_inputs(st_onnx_plan *p, const st_tensor *const *inputs,
                            int n_inputs) {
  if (!p || (!inputs && n_inputs))
    return st_error_set(ST_EINVAL, "onnx run: missing argument");
  if (n_inputs != p->n_plan_inputs)
    return st_error_set(ST_EINVAL, "%s: %d inputs given, the plan takes %d",
                        p->m->label, n_inputs, p->n_plan_inputs);
  for (int k = 0; k < n_inputs; k++) {
    int id = p->plan_input_ids[k];
    if (id < 0)
      continue; /* bound at planning */
    const st_tensor *input = inputs[k];
    const st_tensor *want = &p->values[id].rt;
    char a[96], b[96];
    if (!input || !input->data)
      return st_error_set(ST_EINVAL, "%s: input '%s' is missing",
                          p->m->label, p->m->inputs[id].name);
    if (input->dtype != ST_F32 || !st_tensor_same_shape(input, want))
      return st_error_set(ST_ESHAPE,
                          "%s: input is %s %s, the plan takes F32 %s",
                          p->m->label, st_dtype_name(input->dtype),
                          st_tensor_shape_str(input, a, sizeof a),
                          st_tensor_shape_str(want, b, sizeof b));
    p->run_inputs[id] = input;
  }
  st_backend_flush_subnormals(p->be);
  for (int i = 0; i < p->n_input_views; i++) {
    exec_value *v = &p->values[p->input_views[i]];
    v->rt.data = (char *)p->run_inputs[v->root]->data + v->offset;
  }
  for (int i = 0; i < p->n_steps; i++) {
    int rc = run_step(p, &p->steps[i]);
    if (rc)
      return rc;
  }
  return ST_OK;
}

int st_onnx_plan_run(st_onnx_plan *p, const st_tensor *input,
                     const st_tensor **output) {
  if (!p || !input)
    return st_error_set(ST_EINVAL, "onnx run: missing argument");
  if (p->n_plan_inputs != 1)
    return st_error_set(ST_EINVAL, "%s: the plan takes %d inputs; use "
                        "st_onnx_plan_run_inputs", p->m->label,
                        p->n_plan_inputs);
  ST_TRY(st_onnx_plan_run_inputs(p, &input, 1));
  if (output)
    *output = rt(p, p->outputs[0]);
  return ST_OK;
}

int st_onnx_plan_n_outputs(const st_onnx_plan *p) { return p->n_outputs; }

int st_onnx_plan_output_index(const st_onnx_plan *p, const char *name) {
  for (int o = 0; o < p->n_outputs; o++)
    if (!strcmp(p->m->outputs[o].name, name))
      return o;
  return -1;
}

const st_tensor *st_onnx_plan_output(const st_onnx_plan *p, int index) {
  if (index < 0 || index >= p->n_outputs)
    return NULL;
  return &p->values[p->outputs[index]].rt;
}

void st_onnx_plan_get_stats(const st_onnx_plan *p, st_onnx_plan_stats *out) {
  *out = p->stats;
}

void st_onnx_plan_free(st_onnx_plan *p) {
  if (!p)
    return;
  for (int i = 0; i < p->n_steps; i++) {
    st_tensor_free(&p->steps[i].w);
    st_tensor_free(&p->steps[i].b);
    free(p->steps[i].ins);
    free(p->steps[i].in_tensors);
  }
  free(p->steps);
  if (p->values)
    for (size_t i = 0; i < p->n_values; i++) {
      exec_value *v = &p->values[i];
      if (v->is_const && v->host_owned)
        st_tensor_free(&v->host);
      if (v->is_const && v->uploaded)
        st_tensor_free(&v->rt);
    }
  if (p->buffers)
    for (int b = 0; b < p->n_buffers; b++)
      if (p->buffers[b])
        st_backend_release(p->be, p->buffers[b]);
  free(p->buffers);
  free(p->buffer_bytes);
  free(p->input_views);
  free(p->plan_input_ids);
  free(p->run_inputs);
  free(p->deferred);
  free(p->outputs);
  free(p->values);
  free(p->consumers);
  free(p->sole_reader);
  free(p->absorbed);
  free(p->node_base);
  free(p);
}
