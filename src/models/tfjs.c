/* TensorFlow.js graph-model importer: model.json -> ONNX IR.
 *
 * Steps, each over the whole graph:
 *  1. read: the JSON (jansson) into tf_node records (inputs split into data
 *     references "name[:k]" and control references "^name"), the weight
 *     shards into host tensors per Const (dequantised);
 *  2. order: a depth-first topological sort over data and control edges
 *     (a cycle means a TF while loop: refused);
 *  3. liveness: bound placeholders are constants; Switch nodes whose
 *     predicate evaluates to a constant (a small evaluator for scalar
 *     Const/Identity/Squeeze/Cast/comparison/logic chains) kill one output;
 *     deadness spreads along data and control edges, except that a Merge
 *     is live when one data input is and forwards that one;
 *  4. need: what the requested outputs read, walking data edges back;
 *  5. translate: every needed live node in order, into IR nodes through the
 *     builder. Each TF value (node, output) carries its rank when known,
 *     its element kind, and the IR names holding it in TF order and/or in
 *     NCHW; rank-4 operands are converted lazily, where a consumer needs
 *     the other layout (Transpose nodes, folded by the executor when
 *     constant).
 *
 * Every error is ST_EFORMAT (a file that is not a valid graph model),
 * ST_ENOTSUP (a valid one using what we do not translate), ST_EIO/ST_ENOENT
 * (files) or ST_ENOMEM, with one detail line starting with the model path.
 */
#include "models/tfjs.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/error.h"
#include "base/file.h"
#include "base/json.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* The IR's opset: axes of Squeeze/Unsqueeze/ReduceMean and Split sizes are
 * inputs there, Resize takes an `axes` attribute. */
enum { TFJS_IR_OPSET = 18 };
/* Longest message part and generated name. */
enum { MSG_BYTES = 320, NAME_BYTES = 512 };
/* Slice/StridedSlice bounds meaning "to the end of the axis" (ONNX clamps
 * them), and the extent added to a Slice size of -1 (TF's "to the end"). */
static const int64_t SLICE_END_MAX = INT64_MAX;
static const int64_t SLICE_END_MIN = INT64_MIN;
static const int64_t SLICE_TO_END_EXTRA = (int64_t)1 << 40;
/* A node with more inputs or outputs than this is corrupt. */
enum { MAX_NODE_PORTS = 4096 };

/* Axis permutations between TF's NHWC and the executor's NCHW. */
static const int64_t PERM_TO_NCHW[4] = {0, 3, 1, 2};
static const int64_t PERM_TO_NHWC[4] = {0, 2, 3, 1};
/* NCHW axis of NHWC axis d. */
static const int NHWC_TO_NCHW_AXIS[4] = {0, 2, 3, 1};

/* ---- records ------------------------------------------------------------ */

typedef enum tf_kind { TK_UNKNOWN = 0, TK_FLOAT, TK_INT, TK_BOOL } tf_kind;

/* One TF value (a node's output) as the translation sees it. */
typedef struct tval {
  const char *tf;    /* IR value in TF axis order, or NULL */
  const char *nchw;  /* the same rank-4 value in NCHW, or NULL */
  const char *b4;    /* rank 1..3: reshaped to broadcast against an NCHW
                        rank-4 tensor, or NULL */
  int rank;          /* -1 unknown */
  tf_kind kind;      /* element kind */
  int64_t len;       /* rank 1: static length; -1 unknown */
  st_tensor *host;   /* import-time constant in TF order (owned by the
                        importer), or NULL */
  int translated;    /* the producing node was translated */
} tval;

typedef struct tf_ref {
  int node; /* producing node */
  int out;  /* its output index */
} tf_ref;

typedef struct tf_node {
  const char *name;  /* borrowed from the JSON */
  const char *op;    /* borrowed from the JSON */
  json_t *attr;      /* borrowed; may be NULL */
  tf_ref *in;        /* data inputs */
  int n_in;
  int *ctrl;         /* control inputs (node indices) */
  int n_ctrl;
  int n_out;         /* outputs referenced (at least 1) */
  tval *out;         /* n_out values */
  /* analysis */
  int order;         /* position in topological order */
  int mark;          /* DFS state: 0 new, 1 on stack, 2 done */
  int live;          /* node is live (some output may still be dead) */
  unsigned dead_outs;/* Switch: bit k set = output k dead */
  int merge_from;    /* Merge: the live data input */
  int needed;        /* read by a requested output */
  int consumers;     /* data readers among needed nodes */
  int absorbed;      /* translated as part of another node */
} tf_node;

typedef struct name_slot {
  const char *name;
  int node;
} name_slot;

/* A weight decoded from the shards. */
typedef struct weight {
  const char *name; /* borrowed from the JSON */
  st_tensor t;      /* host, TF order; int32 widened to I64, bool as U8 */
  tf_kind kind;
} weight;

/* Generated strings: a chunk list, freed at the end. */
typedef struct str_chunk {
  struct str_chunk *next;
  char data[];
} str_chunk;

typedef struct importer {
  const char *label;        /* model.json path, in messages */
  const st_tfjs_options *opts;
  json_t *root;
  tf_node *nodes;
  int n_nodes;
  name_slot *slots;         /* node name index */
  size_t cap;
  int *topo;                /* node indices in topological order */
  int n_topo;
  weight *weights;
  size_t n_weights;
  st_onnx_builder *b;
  str_chunk *strings;
  unsigned long counter;    /* for generated names */
  st_tensor *bound;         /* host scalars of bound placeholders */
  size_t n_bound;
} importer;

/* ---- errors ------------------------------------------------------------- */

static int node_err(const importer *im, int code, const tf_node *n,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int node_err(const importer *im, int code, const tf_node *n,
                    const char *fmt, ...) {
  char msg[MSG_BYTES];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return st_error_set(code, "%s: node '%s' (%s): %s", im->label, n->name,
                      n->op, msg);
}
#define REFUSE(im, n, ...) node_err((im), ST_ENOTSUP, (n), __VA_ARGS__)
#define BAD(im, n, ...) node_err((im), ST_EFORMAT, (n), __VA_ARGS__)

static int oom(const importer *im) {
  return st_error_set(ST_ENOMEM, "%s: out of memory", im->label);
}

/* ---- strings ------------------------------------------------------------ */

static const char *str_keep(importer *im, const char *s) {
  size_t n = strlen(s);
  str_chunk *c = malloc(sizeof *c + n + 1);
  if (!c)
    return NULL;
  memcpy(c->data, s, n + 1);
  c->next = im->strings;
  im->strings = c;
  return c->data;
}

/* A fresh IR name "<base>/<what>#<k>" that nothing defines yet. */
static const char *fresh_name(importer *im, const char *base,
                              const char *what) {
  char buf[NAME_BYTES];
  do {
    snprintf(buf, sizeof buf, "%s/%s#%lu", base, what, im->counter++);
  } while (st_onnx_builder_has(im->b, buf));
  return str_keep(im, buf);
}

/* ---- base64 (TF string attributes) --------------------------------------- */

static int b64_value(int c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+' || c == '-')
    return 62;
  if (c == '/' || c == '_')
    return 63;
  return -1;
}

/* Decodes base64 text into buf (NUL-terminated); -1 when malformed or too
 * long. */
static int b64_decode(const char *in, char *buf, size_t cap) {
  size_t o = 0;
  unsigned acc = 0;
  int bits = 0;
  for (const char *p = in; *p && *p != '='; p++) {
    int v = b64_value((unsigned char)*p);
    if (v < 0)
      return -1;
    acc = (acc << 6) | (unsigned)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (o + 1 >= cap)
        return -1;
      buf[o++] = (char)((acc >> bits) & 0xff);
    }
  }
  buf[o] = '\0';
  return (int)o;
}

/* ---- TF attributes -------------------------------------------------------- */

static json_t *attr_get(const tf_node *n, const char *name) {
  return n->attr ? json_object_get(n->attr, name) : NULL;
}

/* An integer held as a JSON string or number. */
static int json_int64(json_t *v, int64_t *out) {
  if (json_is_integer(v)) {
    *out = (int64_t)json_integer_value(v);
    return 1;
  }
  if (json_is_string(v)) {
    const char *s = json_string_value(v);
    char *end;
    long long x = strtoll(s, &end, 10);
    if (end == s || *end)
      return 0;
    *out = (int64_t)x;
    return 1;
  }
  return 0;
}

static int attr_int(importer *im, const tf_node *n, const char *name,
                    int64_t def, int64_t *out) {
  json_t *a = attr_get(n, name);
  *out = def;
  if (!a)
    return ST_OK;
  json_t *v = json_object_get(a, "i");
  if (!v || !json_int64(v, out))
    return BAD(im, n, "attribute '%s' is not an integer", name);
  return ST_OK;
}

static int attr_bool(importer *im, const tf_node *n, const char *name,
                     int def, int *out) {
  json_t *a = attr_get(n, name);
  *out = def;
  if (!a)
    return ST_OK;
  json_t *v = json_object_get(a, "b");
  if (!json_is_boolean(v))
    return BAD(im, n, "attribute '%s' is not a boolean", name);
  *out = json_is_true(v);
  return ST_OK;
}

/* A string attribute (base64 in the file), decoded into buf. */
static int attr_string(importer *im, const tf_node *n, const char *name,
                       const char *def, char *buf, size_t cap) {
  json_t *a = attr_get(n, name);
  if (!a) {
    snprintf(buf, cap, "%s", def);
    return ST_OK;
  }
  json_t *v = json_object_get(a, "s");
  if (!json_is_string(v) || b64_decode(json_string_value(v), buf, cap) < 0)
    return BAD(im, n, "attribute '%s' is not a string", name);
  return ST_OK;
}

/* An integer list attribute; *count 0 when absent. */
static int attr_ints(importer *im, const tf_node *n, const char *name,
                     int64_t *vals, size_t cap, size_t *count) {
  json_t *a = attr_get(n, name);
  *count = 0;
  if (!a)
    return ST_OK;
  json_t *list = json_object_get(a, "list");
  if (!json_is_object(list))
    return BAD(im, n, "attribute '%s' is not a list", name);
  json_t *is = json_object_get(list, "i");
  if (!is)
    return ST_OK;
  if (!json_is_array(is) || json_array_size(is) > cap)
    return BAD(im, n, "attribute '%s' has too many values", name);
  for (size_t i = 0; i < json_array_size(is); i++)
    if (!json_int64(json_array_get(is, i), &vals[i]))
      return BAD(im, n, "attribute '%s' holds a non-integer", name);
  *count = json_array_size(is);
  return ST_OK;
}

/* The TF dtype name of a "type" attribute ("DT_FLOAT"), or NULL. */
static const char *attr_type(const tf_node *n, const char *name) {
  json_t *a = attr_get(n, name);
  json_t *v = a ? json_object_get(a, "type") : NULL;
  return json_is_string(v) ? json_string_value(v) : NULL;
}

/* ---- values and IR emission -------------------------------------------- */

static tval *outv(tf_node *n, int k) { return &n->out[k]; }

static tval *inv(importer *im, const tf_node *n, int i) {
  return &im->nodes[n->in[i].node].out[n->in[i].out];
}

typedef struct attr_list {
  st_onnx_attr a[8];
  size_t n;
} attr_list;

static void al_int(attr_list *l, const char *name, int64_t v) {
  l->a[l->n++] = (st_onnx_attr){.name = name, .type = ST_ONNX_ATTR_INT,
                                .i = v};
}
static void al_ints(attr_list *l, const char *name, const int64_t *v,
                    size_t n) {
  l->a[l->n++] = (st_onnx_attr){.name = name, .type = ST_ONNX_ATTR_INTS,
                                .ints = v, .count = n};
}
static void al_str(attr_list *l, const char *name, const char *s) {
  l->a[l->n++] = (st_onnx_attr){.name = name, .type = ST_ONNX_ATTR_STRING,
                                .s = s, .s_len = strlen(s)};
}
static void al_float(attr_list *l, const char *name, float f) {
  l->a[l->n++] = (st_onnx_attr){.name = name, .type = ST_ONNX_ATTR_FLOAT,
                                .f = f};
}

/* Emits one IR node with one output called `out` (a fresh name when NULL;
 * returned through *name). */
static int emit(importer *im, const char *op, const char *base,
                const char *const *ins, size_t n_ins, const attr_list *al,
                const char *out, const char **name) {
  *name = NULL;
  if (!out && !(out = fresh_name(im, base, op)))
    return oom(im);
  const char *node_name = fresh_name(im, base, op);
  if (!node_name)
    return oom(im);
  ST_TRY(st_onnx_builder_add_node(im->b, op, node_name, ins, n_ins, &out, 1,
                               al ? al->a : NULL, al ? al->n : 0));
  *name = out;
  return ST_OK;
}

/* An INT64 constant vector (or scalar when ndim is 0) as an initializer. */
static int emit_i64(importer *im, const char *base, const int64_t *v,
                    int64_t count, int ndim, const char **name) {
  *name = NULL;
  st_tensor t;
  ST_TRY(st_tensor_alloc(NULL, &t, ST_I64, ndim, &count));
  if (count)
    memcpy(t.data, v, (size_t)count * sizeof *v);
  const char *nm = fresh_name(im, base, "const");
  if (!nm) {
    st_tensor_free(&t);
    return oom(im);
  }
  ST_TRY(st_onnx_builder_add_initializer(im->b, nm, &t));
  *name = nm;
  return ST_OK;
}

static int emit_f32_scalar(importer *im, const char *base, float v,
                           const char **name) {
  *name = NULL;
  st_tensor t;
  ST_TRY(st_tensor_alloc(NULL, &t, ST_F32, 0, NULL));
  *(float *)t.data = v;
  const char *nm = fresh_name(im, base, "const");
  if (!nm) {
    st_tensor_free(&t);
    return oom(im);
  }
  ST_TRY(st_onnx_builder_add_initializer(im->b, nm, &t));
  *name = nm;
  return ST_OK;
}

/* The IR name of an import-time constant, added as an initializer on first
 * use (named after its TF value). */
static int host_name(importer *im, const tf_node *n, int k, tval *v) {
  if (v->tf)
    return ST_OK;
  char buf[NAME_BYTES];
  if (k)
    snprintf(buf, sizeof buf, "%s:%d", n->name, k);
  else
    snprintf(buf, sizeof buf, "%s", n->name);
  const char *nm = st_onnx_builder_has(im->b, buf) ? fresh_name(im, buf, "c")
                                                   : str_keep(im, buf);
  if (!nm)
    return oom(im);
  st_tensor t;
  ST_TRY(st_tensor_alloc(NULL, &t, v->host->dtype, v->host->ndim,
                      v->host->shape));
  if (st_tensor_nbytes(&t))
    memcpy(t.data, v->host->data, st_tensor_nbytes(&t));
  ST_TRY(st_onnx_builder_add_initializer(im->b, nm, &t));
  v->tf = nm;
  return ST_OK;
}

/* Input i of node n, whose value is already translated. */
static int in_value(importer *im, const tf_node *n, int i, tval **v) {
  const tf_node *src = &im->nodes[n->in[i].node];
  *v = inv(im, n, i);
  if ((*v)->host && !(*v)->tf)
    ST_TRY(host_name(im, src, n->in[i].out, *v));
  if (!(*v)->tf && !(*v)->nchw)
    return BAD(im, n, "input %d ('%s') has no value", i, src->name);
  return ST_OK;
}

static int transpose(importer *im, const char *base, const char *x,
                     const int64_t *perm, int rank, const char **out) {
  attr_list al = {.n = 0};
  al_ints(&al, "perm", perm, (size_t)rank);
  return emit(im, "Transpose", base, &x, 1, &al, NULL, out);
}

/* The value in TF order. */
static int as_tf(importer *im, const tf_node *n, tval *v, const char **out) {
  *out = NULL;
  if (!v->tf) {
    if (v->rank != 4)
      return BAD(im, n, "an NCHW value of rank %d", v->rank);
    ST_TRY(transpose(im, n->name, v->nchw, PERM_TO_NHWC, 4, &v->tf));
  }
  *out = v->tf;
  return ST_OK;
}

/* A rank-4 value in NCHW. */
static int as_nchw(importer *im, const tf_node *n, tval *v, const char **out) {
  *out = NULL;
  if (v->rank != 4)
    return REFUSE(im, n, "an operand of rank %d where rank 4 is needed",
                  v->rank);
  if (!v->nchw)
    ST_TRY(transpose(im, n->name, v->tf, PERM_TO_NCHW, 4, &v->nchw));
  *out = v->nchw;
  return ST_OK;
}

/* The value shaped to broadcast against an NCHW rank-4 tensor the way its
 * TF form broadcasts against the NHWC one: aligned to the right of NHWC,
 * then permuted. */
static int as_bcast_nchw(importer *im, const tf_node *n, tval *v,
                         const char **out) {
  *out = NULL;
  if (v->rank == 4)
    return as_nchw(im, n, v, out);
  if (v->rank == 0)
    return as_tf(im, n, v, out);
  if (v->rank < 0 || v->rank > 4)
    return REFUSE(im, n, "an operand of unknown rank next to an image "
                  "tensor");
  if (!v->b4) {
    int64_t axes[4];
    int k = 4 - v->rank;
    for (int i = 0; i < k; i++)
      axes[i] = i;
    const char *ax, *u, *x;
    ST_TRY(as_tf(im, n, v, &x));
    ST_TRY(emit_i64(im, n->name, axes, k, 1, &ax));
    const char *ins[2] = {x, ax};
    ST_TRY(emit(im, "Unsqueeze", n->name, ins, 2, NULL, NULL, &u));
    ST_TRY(transpose(im, n->name, u, PERM_TO_NCHW, 4, &v->b4));
  }
  *out = v->b4;
  return ST_OK;
}

/* Output k of n as the IR value `name` in the given layout. */
static void set_out(tf_node *n, int k, const char *name, int nchw, int rank,
                    tf_kind kind) {
  tval *v = outv(n, k);
  v->tf = nchw ? NULL : name;
  v->nchw = nchw ? name : NULL;
  v->rank = rank;
  v->kind = kind;
  v->translated = 1;
}

/* The host value of input i when it is an import-time constant. */
static const st_tensor *in_host(importer *im, const tf_node *n, int i) {
  return inv(im, n, i)->host;
}

/* Integer values of an import-time constant input (at most cap). */
static int host_ints(importer *im, const tf_node *n, int i, const char *what,
                     int64_t *vals, size_t cap, size_t *count) {
  *count = 0;
  const st_tensor *t = in_host(im, n, i);
  if (!t)
    return REFUSE(im, n, "%s must be a constant in the file", what);
  int64_t numel = st_tensor_numel(t);
  if (t->dtype != ST_I64 || t->ndim > 1 || (size_t)numel > cap)
    return BAD(im, n, "%s must be at most %zu integers", what, cap);
  memcpy(vals, t->data, (size_t)numel * sizeof *vals);
  *count = (size_t)numel;
  return ST_OK;
}

/* ---- reading the graph ------------------------------------------------- */

static uint64_t name_hash(const char *s) {
  uint64_t h = 14695981039346656037ull;
  for (; *s; s++)
    h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

static name_slot *slot_for(const importer *im, const char *name, size_t len) {
  char key[NAME_BYTES];
  if (len >= sizeof key)
    len = sizeof key - 1;
  memcpy(key, name, len);
  key[len] = '\0';
  size_t mask = im->cap - 1;
  for (size_t i = (size_t)name_hash(key) & mask;; i = (i + 1) & mask) {
    name_slot *s = &im->slots[i];
    if (!s->name || !strcmp(s->name, key))
      return s;
  }
}

static int find_node(const importer *im, const char *name, size_t len) {
  name_slot *s = slot_for(im, name, len);
  return s->name ? s->node : -1;
}

/* Splits "name", "name:k" or "^name" into the node index and output. */
static int parse_ref(importer *im, const tf_node *n, const char *text,
                     int *node, int *out, int *control) {
  *control = text[0] == '^';
  if (*control)
    text++;
  size_t len = strlen(text);
  *out = 0;
  const char *colon = strrchr(text, ':');
  if (colon && !*control) {
    char *end;
    long k = strtol(colon + 1, &end, 10);
    if (end != colon + 1 && !*end && k >= 0 && k < MAX_NODE_PORTS) {
      *out = (int)k;
      len = (size_t)(colon - text);
    }
  }
  *node = find_node(im, text, len);
  if (*node < 0)
    return BAD(im, n, "input '%s' names no node", text);
  return ST_OK;
}

static int read_nodes(importer *im) {
  json_t *topo = json_object_get(im->root, "modelTopology");
  json_t *nodes = topo ? json_object_get(topo, "node") : NULL;
  if (!json_is_array(nodes) || json_array_size(nodes) == 0)
    return st_error_set(ST_EFORMAT, "%s: not a TF.js graph model: no "
                        "modelTopology.node array", im->label);
  size_t count = json_array_size(nodes);
  if (count > INT_MAX / 4)
    return st_error_set(ST_EFORMAT, "%s: too many nodes", im->label);
  im->n_nodes = (int)count;
  im->nodes = calloc(count, sizeof *im->nodes);
  im->cap = 16;
  while (im->cap < 2 * count + 1)
    im->cap *= 2;
  im->slots = calloc(im->cap, sizeof *im->slots);
  if (!im->nodes || !im->slots)
    return oom(im);
  for (size_t i = 0; i < count; i++) {
    json_t *j = json_array_get(nodes, i);
    json_t *name = json_object_get(j, "name"), *op = json_object_get(j, "op");
    if (!json_is_string(name) || !json_is_string(op) ||
        !json_string_length(name))
      return st_error_set(ST_EFORMAT, "%s: node %zu has no name or op",
                          im->label, i);
    tf_node *n = &im->nodes[i];
    n->name = json_string_value(name);
    n->op = json_string_value(op);
    n->attr = json_object_get(j, "attr");
    n->merge_from = -1;
    if (strlen(n->name) >= NAME_BYTES - 64)
      return st_error_set(ST_EFORMAT, "%s: node name '%.40s...' is too long",
                          im->label, n->name);
    name_slot *s = slot_for(im, n->name, strlen(n->name));
    if (s->name)
      return st_error_set(ST_EFORMAT, "%s: two nodes are called '%s'",
                          im->label, n->name);
    s->name = n->name;
    s->node = (int)i;
  }
  for (size_t i = 0; i < count; i++) {
    tf_node *n = &im->nodes[i];
    json_t *ins = json_object_get(json_array_get(nodes, i), "input");
    size_t k = json_is_array(ins) ? json_array_size(ins) : 0;
    if (ins && !json_is_array(ins))
      return BAD(im, n, "input is not an array");
    if (k > MAX_NODE_PORTS)
      return BAD(im, n, "%zu inputs", k);
    n->in = calloc(k + 1, sizeof *n->in);
    n->ctrl = calloc(k + 1, sizeof *n->ctrl);
    if (!n->in || !n->ctrl)
      return oom(im);
    for (size_t q = 0; q < k; q++) {
      json_t *t = json_array_get(ins, q);
      if (!json_is_string(t))
        return BAD(im, n, "input %zu is not a string", q);
      int src, out, control;
      ST_TRY(parse_ref(im, n, json_string_value(t), &src, &out, &control));
      if (control) {
        n->ctrl[n->n_ctrl++] = src;
      } else {
        if (n->n_ctrl)
          return BAD(im, n, "a data input after a control input");
        n->in[n->n_in++] = (tf_ref){src, out};
        if (im->nodes[src].n_out < out + 1)
          im->nodes[src].n_out = out + 1;
      }
    }
  }
  /* Outputs: as referenced, at least one, and what the op itself makes. */
  for (int i = 0; i < im->n_nodes; i++) {
    tf_node *n = &im->nodes[i];
    int64_t num_split = 0;
    if (!strcmp(n->op, "Split") || !strcmp(n->op, "SplitV"))
      ST_TRY(attr_int(im, n, "num_split", 1, &num_split));
    if (num_split < 0 || num_split > MAX_NODE_PORTS)
      return BAD(im, n, "num_split %lld", (long long)num_split);
    if (n->n_out < (int)num_split)
      n->n_out = (int)num_split;
    if (!strcmp(n->op, "Switch") || !strcmp(n->op, "Merge"))
      n->n_out = n->n_out < 2 ? 2 : n->n_out;
    if (n->n_out < 1)
      n->n_out = 1;
    n->out = calloc((size_t)n->n_out, sizeof *n->out);
    if (!n->out)
      return oom(im);
    for (int k = 0; k < n->n_out; k++) {
      n->out[k].rank = -1;
      n->out[k].len = -1;
    }
  }
  return ST_OK;
}

/* Depth-first topological order over data and control edges. */
static int sort_nodes(importer *im) {
  im->topo = calloc((size_t)im->n_nodes + 1, sizeof *im->topo);
  int *stack = calloc((size_t)im->n_nodes + 1, sizeof *stack);
  int *next = calloc((size_t)im->n_nodes + 1, sizeof *next);
  if (!im->topo || !stack || !next) {
    free(stack);
    free(next);
    return oom(im);
  }
  int rc = ST_OK;
  for (int r = 0; r < im->n_nodes && !rc; r++) {
    if (im->nodes[r].mark)
      continue;
    int sp = 0;
    stack[sp++] = r;
    im->nodes[r].mark = 1;
    next[r] = 0;
    while (sp && !rc) {
      int u = stack[sp - 1];
      tf_node *n = &im->nodes[u];
      int total = n->n_in + n->n_ctrl;
      if (next[u] < total) {
        int k = next[u]++;
        int v = k < n->n_in ? n->in[k].node : n->ctrl[k - n->n_in];
        if (im->nodes[v].mark == 1)
          rc = REFUSE(im, n, "the graph has a cycle through '%s' (TF while "
                      "loops are not supported)", im->nodes[v].name);
        else if (!im->nodes[v].mark) {
          im->nodes[v].mark = 1;
          next[v] = 0;
          stack[sp++] = v;
        }
      } else {
        n->mark = 2;
        n->order = im->n_topo;
        im->topo[im->n_topo++] = u;
        sp--;
      }
    }
  }
  free(stack);
  free(next);
  return rc;
}

/* ---- weights ----------------------------------------------------------- */

/* Shard paths are file names inside the model's folder. */
static int shard_path_ok(const char *p) {
  if (!p[0] || p[0] == '/')
    return 0;
  for (const char *s = p; *s; s++)
    if (s[0] == '.' && s[1] == '.' && (s == p || s[-1] == '/') &&
        (s[2] == '/' || !s[2]))
      return 0;
  return 1;
}

static int dtype_bytes(const char *dt) {
  if (!strcmp(dt, "float32") || !strcmp(dt, "int32"))
    return 4;
  if (!strcmp(dt, "bool") || !strcmp(dt, "uint8"))
    return 1;
  if (!strcmp(dt, "float16") || !strcmp(dt, "uint16"))
    return 2;
  return 0;
}

/* Decodes one weight from `bytes` as TF.js does (io_utils decodeWeight). */
static int decode_weight(importer *im, json_t *spec, const uint8_t *bytes,
                         size_t avail, weight *w, size_t *used) {
  json_t *name = json_object_get(spec, "name");
  json_t *shape = json_object_get(spec, "shape");
  json_t *dtype = json_object_get(spec, "dtype");
  if (!json_is_string(name) || !json_is_array(shape) || !json_is_string(dtype))
    return st_error_set(ST_EFORMAT, "%s: a weightsManifest entry lacks name, "
                        "shape or dtype", im->label);
  w->name = json_string_value(name);
  const char *dt = json_string_value(dtype);
  int64_t dims[ST_MAX_DIMS];
  size_t nd = json_array_size(shape);
  if (nd > ST_MAX_DIMS)
    return st_error_set(ST_ENOTSUP, "%s: weight '%s' has rank %zu", im->label,
                        w->name, nd);
  for (size_t d = 0; d < nd; d++)
    if (!json_int64(json_array_get(shape, d), &dims[d]) || dims[d] < 0)
      return st_error_set(ST_EFORMAT, "%s: weight '%s' has a bad shape",
                          im->label, w->name);
  st_dtype st;
  if (!strcmp(dt, "float32")) {
    st = ST_F32;
    w->kind = TK_FLOAT;
  } else if (!strcmp(dt, "int32")) {
    st = ST_I64;
    w->kind = TK_INT;
  } else if (!strcmp(dt, "bool")) {
    st = ST_U8;
    w->kind = TK_BOOL;
  } else {
    return st_error_set(ST_ENOTSUP, "%s: weight '%s' has dtype %s (float32, "
                        "int32 and bool are supported)", im->label, w->name,
                        dt);
  }
  ST_TRY(st_tensor_alloc(NULL, &w->t, st, (int)nd, dims));
  int64_t numel = st_tensor_numel(&w->t);
  json_t *q = json_object_get(spec, "quantization");
  const char *qdt = NULL;
  double qmin = 0.0, qscale = 0.0;
  if (q) {
    json_t *qd = json_object_get(q, "dtype");
    if (!json_is_string(qd))
      return st_error_set(ST_EFORMAT, "%s: weight '%s': quantization without "
                          "a dtype", im->label, w->name);
    qdt = json_string_value(qd);
    if (!strcmp(qdt, "uint8") || !strcmp(qdt, "uint16")) {
      json_t *mn = json_object_get(q, "min"), *sc = json_object_get(q, "scale");
      if (!json_is_number(mn) || !json_is_number(sc))
        return st_error_set(ST_EFORMAT, "%s: weight '%s' is quantised to %s "
                            "without min and scale", im->label, w->name, qdt);
      qmin = json_number_value(mn);
      qscale = json_number_value(sc);
      if (w->kind == TK_BOOL)
        return st_error_set(ST_ENOTSUP, "%s: weight '%s': quantised bool",
                            im->label, w->name);
    } else if (!strcmp(qdt, "float16")) {
      if (w->kind != TK_FLOAT)
        return st_error_set(ST_EFORMAT, "%s: weight '%s': float16 "
                            "quantisation of a %s weight", im->label, w->name,
                            dt);
    } else {
      return st_error_set(ST_ENOTSUP, "%s: weight '%s' has quantization dtype "
                          "%s (uint8, uint16 and float16 are supported)",
                          im->label, w->name, qdt);
    }
  }
  size_t each = (size_t)dtype_bytes(qdt ? qdt : dt);
  if ((uint64_t)numel > SIZE_MAX / each || (size_t)numel * each > avail)
    return st_error_set(ST_EFORMAT, "%s: the weight shards end inside weight "
                        "'%s'", im->label, w->name);
  *used = (size_t)numel * each;
  for (int64_t i = 0; i < numel; i++) {
    const uint8_t *p = bytes + (size_t)i * each;
    if (qdt && strcmp(qdt, "float16")) {
      unsigned v = each == 1 ? p[0] : (unsigned)(p[0] | (p[1] << 8));
      /* TF.js: v * scale + min in double, stored once into the typed
       * array (float32: one rounding; int32: Math.round). */
      double x = (double)v * qscale + qmin;
      if (w->kind == TK_FLOAT)
        ((float *)w->t.data)[i] = (float)x;
      else
        ((int64_t *)w->t.data)[i] = (int64_t)floor(x + 0.5);
    } else if (qdt) {
      ((float *)w->t.data)[i] = st_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
    } else if (w->kind == TK_FLOAT) {
      memcpy((float *)w->t.data + i, p, sizeof(float));
    } else if (w->kind == TK_INT) {
      int32_t v;
      memcpy(&v, p, sizeof v);
      ((int64_t *)w->t.data)[i] = v;
    } else {
      ((uint8_t *)w->t.data)[i] = p[0] != 0;
    }
  }
  return ST_OK;
}

static int read_weights(importer *im, const char *dir) {
  json_t *man = json_object_get(im->root, "weightsManifest");
  if (!man)
    return ST_OK;
  if (!json_is_array(man))
    return st_error_set(ST_EFORMAT, "%s: weightsManifest is not an array",
                        im->label);
  size_t total = 0;
  for (size_t g = 0; g < json_array_size(man); g++) {
    json_t *ws = json_object_get(json_array_get(man, g), "weights");
    total += json_is_array(ws) ? json_array_size(ws) : 0;
  }
  im->weights = calloc(total + 1, sizeof *im->weights);
  if (!im->weights)
    return oom(im);
  for (size_t g = 0; g < json_array_size(man); g++) {
    json_t *group = json_array_get(man, g);
    json_t *paths = json_object_get(group, "paths");
    json_t *ws = json_object_get(group, "weights");
    if (!json_is_array(paths) || !json_is_array(ws))
      return st_error_set(ST_EFORMAT, "%s: weightsManifest[%zu] lacks paths "
                          "or weights", im->label, g);
    /* The group's shards, concatenated in order. */
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = ST_OK;
    for (size_t s = 0; s < json_array_size(paths) && !rc; s++) {
      json_t *p = json_array_get(paths, s);
      char path[4096];
      if (!json_is_string(p) || !shard_path_ok(json_string_value(p))) {
        rc = st_error_set(ST_EFORMAT, "%s: weight shard path '%s' must be a "
                          "relative path inside the model's folder",
                          im->label, json_is_string(p) ? json_string_value(p)
                                                       : "?");
        break;
      }
      int w = snprintf(path, sizeof path, "%s%s%s", dir, *dir ? "/" : "",
                       json_string_value(p));
      if (w < 0 || (size_t)w >= sizeof path) {
        rc = st_error_set(ST_EINVAL, "%s: shard path too long", im->label);
        break;
      }
      uint8_t *shard = NULL;
      size_t slen = 0;
      rc = st_read_file(path, ST_TFJS_MAX_SHARD_BYTES, ST_EFORMAT, &shard,
                        &slen);
      if (rc)
        break;
      uint8_t *grown = realloc(data, len + slen + 1);
      if (!grown) {
        free(shard);
        rc = oom(im);
        break;
      }
      data = grown;
      memcpy(data + len, shard, slen);
      len += slen;
      free(shard);
    }
    size_t off = 0;
    for (size_t k = 0; k < json_array_size(ws) && !rc; k++) {
      size_t used = 0;
      weight *w = &im->weights[im->n_weights];
      rc = decode_weight(im, json_array_get(ws, k), data + off, len - off, w,
                         &used);
      if (w->t.data || w->name)
        im->n_weights++;
      off += used;
    }
    free(data);
    if (rc)
      return rc;
  }
  return ST_OK;
}

static const weight *find_weight(const importer *im, const char *name) {
  for (size_t i = 0; i < im->n_weights; i++)
    if (im->weights[i].name && !strcmp(im->weights[i].name, name))
      return &im->weights[i];
  return NULL;
}

/* ---- inputs, constants, control flow ------------------------------------- */

static const st_tfjs_input *input_option(const importer *im,
                                         const char *name) {
  if (!im->opts)
    return NULL;
  for (size_t i = 0; i < im->opts->n_inputs; i++) {
    const char *o = im->opts->inputs[i].name;
    size_t n = strlen(name);
    if (o && !strncmp(o, name, n) && (!o[n] || !strcmp(o + n, ":0")))
      return &im->opts->inputs[i];
  }
  return NULL;
}

static tf_kind kind_of_dtype(const char *dt) {
  if (!dt)
    return TK_UNKNOWN;
  if (!strcmp(dt, "DT_FLOAT"))
    return TK_FLOAT;
  if (!strcmp(dt, "DT_INT32") || !strcmp(dt, "DT_INT64"))
    return TK_INT;
  if (!strcmp(dt, "DT_BOOL"))
    return TK_BOOL;
  return TK_UNKNOWN;
}

/* Const nodes take their value from the weights; bound placeholders from
 * the options. */
static int setup_constants(importer *im) {
  size_t n_bind = 0;
  for (int i = 0; i < im->n_nodes; i++)
    n_bind += !strcmp(im->nodes[i].op, "Placeholder");
  im->bound = calloc(n_bind + 1, sizeof *im->bound);
  if (!im->bound)
    return oom(im);
  for (int i = 0; i < im->n_nodes; i++) {
    tf_node *n = &im->nodes[i];
    tval *v = outv(n, 0);
    if (!strcmp(n->op, "Const")) {
      const weight *w = find_weight(im, n->name);
      if (!w)
        continue; /* an error only if the node is needed */
      v->host = (st_tensor *)&w->t;
      v->kind = w->kind;
      v->rank = w->t.ndim;
      v->len = w->t.ndim == 1 ? w->t.shape[0] : -1;
    } else if (!strcmp(n->op, "Placeholder")) {
      const st_tfjs_input *o = input_option(im, n->name);
      if (o && o->bound) {
        st_tensor *t = &im->bound[im->n_bound++];
        ST_TRY(st_tensor_alloc(NULL, t, ST_F32, 0, NULL));
        *(float *)t->data = (float)o->value;
        v->host = t;
        v->kind = TK_FLOAT;
        v->rank = 0;
      }
    }
  }
  return ST_OK;
}

/* Evaluates a scalar predicate chain on the host; 1 when constant. */
static int eval_scalar(const importer *im, int node, int out, double *v,
                       int depth) {
  enum { MAX_EVAL_DEPTH = 64 };
  if (depth > MAX_EVAL_DEPTH)
    return 0;
  const tf_node *n = &im->nodes[node];
  const tval *t = &n->out[out];
  if (t->host) {
    if (st_tensor_numel(t->host) != 1)
      return 0;
    switch (t->host->dtype) {
    case ST_F32: *v = ((const float *)t->host->data)[0]; return 1;
    case ST_I64: *v = (double)((const int64_t *)t->host->data)[0]; return 1;
    case ST_U8: *v = ((const uint8_t *)t->host->data)[0]; return 1;
    default: return 0;
    }
  }
  static const char *const pass[] = {"Identity", "Squeeze", "StopGradient",
                                     "Snapshot", "Cast", "Switch"};
  for (size_t i = 0; i < COUNT(pass); i++)
    if (!strcmp(n->op, pass[i]) && n->n_in >= 1) {
      if (!eval_scalar(im, n->in[0].node, n->in[0].out, v, depth + 1))
        return 0;
      if (!strcmp(n->op, "Cast")) {
        tf_kind k = kind_of_dtype(attr_type(n, "DstT"));
        if (k == TK_INT)
          *v = trunc(*v);
        else if (k == TK_BOOL)
          *v = *v != 0.0;
      }
      return 1;
    }
  double a, b;
  if (!strcmp(n->op, "LogicalNot") && n->n_in == 1) {
    if (!eval_scalar(im, n->in[0].node, n->in[0].out, &a, depth + 1))
      return 0;
    *v = a == 0.0;
    return 1;
  }
  if (n->n_in != 2 ||
      !eval_scalar(im, n->in[0].node, n->in[0].out, &a, depth + 1) ||
      !eval_scalar(im, n->in[1].node, n->in[1].out, &b, depth + 1))
    return 0;
  if (!strcmp(n->op, "Equal")) *v = a == b;
  else if (!strcmp(n->op, "NotEqual")) *v = a != b;
  else if (!strcmp(n->op, "Less")) *v = a < b;
  else if (!strcmp(n->op, "LessEqual")) *v = a <= b;
  else if (!strcmp(n->op, "Greater")) *v = a > b;
  else if (!strcmp(n->op, "GreaterEqual")) *v = a >= b;
  else if (!strcmp(n->op, "LogicalAnd")) *v = a != 0.0 && b != 0.0;
  else if (!strcmp(n->op, "LogicalOr")) *v = a != 0.0 || b != 0.0;
  else return 0;
  return 1;
}

static int ref_live(const importer *im, tf_ref r) {
  const tf_node *s = &im->nodes[r.node];
  return s->live && !(r.out < 32 && (s->dead_outs >> r.out) & 1u);
}

/* Deadness, in topological order (TF's executor semantics, with every
 * Switch predicate known). A Switch whose predicate is not constant gets
 * both outputs marked dead only if it is needed, at translation: here it
 * is left live with no dead output and flagged. */
static int propagate_liveness(importer *im) {
  for (int t = 0; t < im->n_topo; t++) {
    tf_node *n = &im->nodes[im->topo[t]];
    if (!strcmp(n->op, "Merge")) {
      n->live = 0;
      for (int i = 0; i < n->n_in; i++)
        if (ref_live(im, n->in[i])) {
          /* Two live inputs: an unresolved Switch upstream, refused when
           * the translation reaches it (or this Merge). */
          n->merge_from = n->live ? -2 : i;
          n->live = 1;
        }
      continue;
    }
    n->live = 1;
    for (int i = 0; i < n->n_in; i++)
      n->live &= ref_live(im, n->in[i]);
    for (int i = 0; i < n->n_ctrl; i++)
      n->live &= im->nodes[n->ctrl[i]].live;
    if (n->live && !strcmp(n->op, "Switch")) {
      if (n->n_in != 2)
        return BAD(im, n, "a Switch needs data and predicate inputs");
      double pred;
      if (eval_scalar(im, n->in[1].node, n->in[1].out, &pred, 0))
        n->dead_outs = pred != 0.0 ? 1u : 2u; /* output 1 is the true one */
      else
        n->merge_from = -2; /* unresolved: refused if needed */
    }
  }
  return ST_OK;
}

static int is_alias_op(const char *op) {
  return !strcmp(op, "Identity") || !strcmp(op, "StopGradient") ||
         !strcmp(op, "Snapshot") || !strcmp(op, "Switch") ||
         !strcmp(op, "Merge");
}

/* The data inputs a node reads once Switch/Merge are folded. */
static void data_inputs(const tf_node *n, int *first, int *count) {
  *first = 0;
  *count = n->n_in;
  if (!strcmp(n->op, "Merge")) {
    *first = n->merge_from < 0 ? 0 : n->merge_from;
    *count = n->merge_from == -2 ? n->n_in : n->merge_from < 0 ? 0 : 1;
  } else if (!strcmp(n->op, "Switch")) {
    *count = n->n_in ? 1 : 0; /* the predicate is folded */
  }
}

/* ---- what the outputs need ---------------------------------------------- */

typedef struct out_req {
  const char *key;  /* graph output name in the IR */
  tf_ref ref;       /* the TF value */
} out_req;

static int resolve_ref_text(importer *im, const char *text, tf_ref *r) {
  size_t len = strlen(text);
  r->out = 0;
  const char *colon = strrchr(text, ':');
  if (colon) {
    char *end;
    long k = strtol(colon + 1, &end, 10);
    if (end != colon + 1 && !*end && k >= 0 && k < MAX_NODE_PORTS) {
      r->out = (int)k;
      len = (size_t)(colon - text);
    }
  }
  r->node = find_node(im, text, len);
  if (r->node < 0 || r->out >= im->nodes[r->node].n_out)
    return st_error_set(ST_EFORMAT, "%s: the signature names '%s', which no "
                        "node produces", im->label, text);
  return ST_OK;
}

/* The signature's outputs (those asked for), in the order asked or, for
 * all, in the file's order. */
static int resolve_outputs(importer *im, out_req **reqs, size_t *n_reqs) {
  json_t *sig = json_object_get(im->root, "signature");
  json_t *outs = sig ? json_object_get(sig, "outputs") : NULL;
  if (!json_is_object(outs) || !json_object_size(outs))
    return st_error_set(ST_ENOTSUP, "%s: the model has no signature outputs "
                        "(models converted without a signature are not "
                        "supported)", im->label);
  size_t want = im->opts && im->opts->outputs ? im->opts->n_outputs
                                              : json_object_size(outs);
  *reqs = calloc(want + 1, sizeof **reqs);
  if (!*reqs)
    return oom(im);
  *n_reqs = 0;
  if (im->opts && im->opts->outputs) {
    for (size_t i = 0; i < want; i++) {
      const char *key = im->opts->outputs[i];
      json_t *o = key ? json_object_get(outs, key) : NULL;
      json_t *nm = o ? json_object_get(o, "name") : NULL;
      if (!json_is_string(nm))
        return st_error_set(ST_ENOENT, "%s: the model has no output '%s'",
                            im->label, key ? key : "");
      (*reqs)[i].key = key;
      ST_TRY(resolve_ref_text(im, json_string_value(nm), &(*reqs)[i].ref));
      (*n_reqs)++;
    }
    return ST_OK;
  }
  const char *key;
  json_t *o;
  json_object_foreach(outs, key, o) {
    json_t *nm = json_object_get(o, "name");
    if (!json_is_string(nm))
      return st_error_set(ST_EFORMAT, "%s: signature output '%s' has no "
                          "name", im->label, key);
    out_req *r = &(*reqs)[(*n_reqs)++];
    r->key = key;
    ST_TRY(resolve_ref_text(im, json_string_value(nm), &r->ref));
  }
  return ST_OK;
}

static int mark_needed(importer *im, const out_req *reqs, size_t n_reqs) {
  int *stack = calloc((size_t)im->n_nodes + 1, sizeof *stack);
  if (!stack)
    return oom(im);
  int sp = 0, rc = ST_OK;
  for (size_t i = 0; i < n_reqs && !rc; i++) {
    tf_node *n = &im->nodes[reqs[i].ref.node];
    if (!ref_live(im, reqs[i].ref))
      rc = st_error_set(ST_EINVAL, "%s: output '%s' is never computed with "
                        "the bound inputs (its branch is dead)", im->label,
                        reqs[i].key);
    n->consumers++; /* a graph output is a reader no fusion may remove */
    if (!n->needed) {
      n->needed = 1;
      stack[sp++] = reqs[i].ref.node;
    }
  }
  while (sp && !rc) {
    tf_node *n = &im->nodes[stack[--sp]];
    int first, count;
    data_inputs(n, &first, &count);
    for (int i = first; i < first + count; i++) {
      tf_node *s = &im->nodes[n->in[i].node];
      s->consumers++;
      if (!s->needed) {
        s->needed = 1;
        stack[sp++] = n->in[i].node;
      }
    }
  }
  free(stack);
  return rc;
}

/* The only needed node reading node `src` (data edges), or NULL. */
static tf_node *sole_reader(importer *im, int src) {
  if (im->nodes[src].consumers != 1)
    return NULL;
  for (int i = 0; i < im->n_nodes; i++) {
    tf_node *n = &im->nodes[i];
    if (!n->needed || !n->live)
      continue;
    int first, count;
    data_inputs(n, &first, &count);
    for (int k = first; k < first + count; k++)
      if (n->in[k].node == src)
        return n;
  }
  return NULL;
}

/* A host scalar (or one-element) F32 constant input's value. */
static int host_scalar_f(const importer *im, tf_ref r, double *v) {
  const st_tensor *t = im->nodes[r.node].out[r.out].host;
  if (!t || t->dtype != ST_F32 || st_tensor_numel(t) != 1)
    return 0;
  *v = ((const float *)t->data)[0];
  return 1;
}

static int op_is(const tf_node *n, const char *a, const char *b) {
  return !strcmp(n->op, a) || (b && !strcmp(n->op, b));
}

/* Fusion marks set by the pattern pass (translation reads them). */
enum { FUSE_NONE = 0, FUSE_HARDSWISH, FUSE_HARDSIGMOID };
typedef struct fusion {
  int kind;
  tf_ref src; /* x of hard_swish(x) / hard_sigmoid(x) */
} fusion;

/* relu6(x + 3) as written by Keras: returns the Relu6 node's x (through
 * the AddV2) when node `r` is that and it and the add have one reader. */
static int match_relu6_plus3(importer *im, tf_ref r, tf_ref *x) {
  tf_node *relu6 = &im->nodes[r.node];
  if (!op_is(relu6, "Relu6", NULL) || relu6->consumers != 1 ||
      relu6->n_in != 1)
    return 0;
  tf_node *add = &im->nodes[relu6->in[0].node];
  if (!op_is(add, "AddV2", "Add") || add->consumers != 1 || add->n_in != 2)
    return 0;
  enum { HARD_OFFSET = 3 };
  for (int k = 0; k < 2; k++) {
    double c;
    if (host_scalar_f(im, add->in[1 - k], &c) && c == HARD_OFFSET) {
      *x = add->in[k];
      return 1;
    }
  }
  return 0;
}

/* 1/6 as the converter writes it (a float32 reciprocal). */
static int is_one_sixth(double c) {
  static const double SIXTH = 1.0 / 6.0, TOLERANCE = 1e-6;
  return fabs(c - SIXTH) <= TOLERANCE;
}

static void absorb(importer *im, int node) { im->nodes[node].absorbed = 1; }

/* Finds x * relu6(x + 3) / 6 and relu6(x + 3) / 6 (Keras hard_swish and
 * hard_sigmoid after grappler) among the needed nodes. */
static int find_hard_activations(importer *im, fusion *fu) {
  for (int t = 0; t < im->n_topo; t++) {
    int y = im->topo[t];
    tf_node *n = &im->nodes[y];
    if (!n->needed || !n->live || !op_is(n, "Mul", NULL) || n->n_in != 2)
      continue;
    for (int k = 0; k < 2; k++) {
      tf_ref x, x2;
      double c;
      if (!match_relu6_plus3(im, n->in[k], &x))
        continue;
      tf_ref other = n->in[1 - k];
      tf_node *o = &im->nodes[other.node];
      if (host_scalar_f(im, other, &c) && is_one_sixth(c)) {
        fu[y] = (fusion){FUSE_HARDSIGMOID, x};
      } else if (op_is(o, "Mul", NULL) && o->consumers == 1 && o->n_in == 2) {
        int hit = 0;
        for (int q = 0; q < 2 && !hit; q++) {
          x2 = o->in[1 - q];
          hit = host_scalar_f(im, o->in[q], &c) && is_one_sixth(c) &&
                x2.node == x.node && x2.out == x.out;
        }
        if (!hit)
          continue;
        fu[y] = (fusion){FUSE_HARDSWISH, x};
        absorb(im, other.node);
      } else {
        continue;
      }
      tf_node *relu6 = &im->nodes[n->in[k].node];
      absorb(im, n->in[k].node);
      absorb(im, relu6->in[0].node);
      break;
    }
  }
  return ST_OK;
}

/* ---- translation: element-wise ------------------------------------------ */

/* Output rank of a broadcast; -1 when an operand's rank is unknown. */
static int bcast_rank(const tval *a, const tval *b) {
  if (a->rank < 0 || b->rank < 0)
    return -1;
  return a->rank > b->rank ? a->rank : b->rank;
}

/* Emits op(a, b): in NCHW when either operand is an NCHW-held image
 * tensor, in TF order otherwise. */
static int emit_binary(importer *im, tf_node *n, const char *op, tval *a,
                       tval *b, const attr_list *al, int out_k) {
  int r = bcast_rank(a, b);
  int nchw = r == 4 && ((a->rank == 4 && a->nchw) || (b->rank == 4 && b->nchw));
  const char *ins[2], *y;
  if (nchw) {
    ST_TRY(as_bcast_nchw(im, n, a, &ins[0]));
    ST_TRY(as_bcast_nchw(im, n, b, &ins[1]));
  } else {
    ST_TRY(as_tf(im, n, a, &ins[0]));
    ST_TRY(as_tf(im, n, b, &ins[1]));
  }
  ST_TRY(emit(im, op, n->name, ins, 2, al, NULL, &y));
  set_out(n, out_k, y, nchw, r, a->kind != TK_UNKNOWN ? a->kind : b->kind);
  return ST_OK;
}

static int tr_binary(importer *im, tf_node *n) {
  static const struct {
    const char *tf, *onnx;
  } map[] = {{"Add", "Add"},      {"AddV2", "Add"},    {"BiasAdd", "Add"},
             {"Sub", "Sub"},      {"Mul", "Mul"},      {"RealDiv", "Div"},
             {"Maximum", "Max"},  {"Minimum", "Min"},  {"FloorMod", "Mod"}};
  if (n->n_in != 2)
    return BAD(im, n, "%d inputs, expected 2", n->n_in);
  tval *a, *b;
  ST_TRY(in_value(im, n, 0, &a));
  ST_TRY(in_value(im, n, 1, &b));
  if (a->kind == TK_BOOL || b->kind == TK_BOOL)
    return REFUSE(im, n, "boolean tensors at run time are not supported");
  if (!strcmp(n->op, "BiasAdd")) {
    char fmt[16];
    ST_TRY(attr_string(im, n, "data_format", "NHWC", fmt, sizeof fmt));
    if (strcmp(fmt, "NHWC"))
      return REFUSE(im, n, "data_format %s is not supported", fmt);
  }
  if (!strcmp(n->op, "FloorMod") && a->kind != TK_INT)
    return REFUSE(im, n, "FloorMod of floating-point values is not "
                  "supported");
  for (size_t i = 0; i < COUNT(map); i++)
    if (!strcmp(n->op, map[i].tf))
      return emit_binary(im, n, map[i].onnx, a, b, NULL, 0);
  return REFUSE(im, n, "operator %s is not supported", n->op);
}

static int tr_square(importer *im, tf_node *n) {
  tval *a;
  ST_TRY(in_value(im, n, 0, &a));
  return emit_binary(im, n, "Mul", a, a, NULL, 0);
}

static int tr_addn(importer *im, tf_node *n) {
  if (n->n_in < 1)
    return BAD(im, n, "no inputs");
  tval acc;
  tval *a;
  ST_TRY(in_value(im, n, 0, &a));
  acc = *a;
  for (int i = 1; i < n->n_in; i++) {
    tval *b;
    ST_TRY(in_value(im, n, i, &b));
    ST_TRY(emit_binary(im, n, "Add", &acc, b, NULL, 0));
    acc = *outv(n, 0);
  }
  *outv(n, 0) = acc;
  outv(n, 0)->host = NULL;
  outv(n, 0)->translated = 1;
  return ST_OK;
}

/* A unary op keeping x's layout. */
static int emit_unary(importer *im, tf_node *n, const char *op, tval *x,
                      const char *const *extra, size_t n_extra,
                      const attr_list *al) {
  const char *ins[3], *y;
  int nchw = x->nchw != NULL && x->rank == 4;
  ins[0] = nchw ? x->nchw : NULL;
  if (!nchw)
    ST_TRY(as_tf(im, n, x, &ins[0]));
  for (size_t i = 0; i < n_extra; i++)
    ins[1 + i] = extra[i];
  ST_TRY(emit(im, op, n->name, ins, 1 + n_extra, al, NULL, &y));
  set_out(n, 0, y, nchw, x->rank, x->kind);
  return ST_OK;
}

/* Clip(x, lo, hi) with scalar constant bounds. */
static int emit_clip(importer *im, tf_node *n, tval *x, float lo, float hi) {
  const char *b[2];
  ST_TRY(emit_f32_scalar(im, n->name, lo, &b[0]));
  ST_TRY(emit_f32_scalar(im, n->name, hi, &b[1]));
  return emit_unary(im, n, "Clip", x, b, 2, NULL);
}

static int tr_unary(importer *im, tf_node *n, const fusion *fu) {
  tval *x;
  if (fu->kind != FUSE_NONE) {
    tf_node *src = &im->nodes[fu->src.node];
    x = &src->out[fu->src.out];
    if (x->host && !x->tf)
      ST_TRY(host_name(im, src, fu->src.out, x));
    if (fu->kind == FUSE_HARDSWISH)
      return emit_unary(im, n, "HardSwish", x, NULL, 0, NULL);
    attr_list al = {.n = 0};
    al_float(&al, "alpha", (float)(1.0 / 6.0));
    al_float(&al, "beta", 0.5f);
    return emit_unary(im, n, "HardSigmoid", x, NULL, 0, &al);
  }
  ST_TRY(in_value(im, n, 0, &x));
  if (x->kind != TK_FLOAT)
    return REFUSE(im, n, "a non-float operand is not supported");
  enum { RELU6_MAX = 6 };
  if (!strcmp(n->op, "Relu"))
    return emit_unary(im, n, "Relu", x, NULL, 0, NULL);
  if (!strcmp(n->op, "Relu6"))
    return emit_clip(im, n, x, 0.0f, RELU6_MAX);
  if (!strcmp(n->op, "Sigmoid"))
    return emit_unary(im, n, "Sigmoid", x, NULL, 0, NULL);
  if (!strcmp(n->op, "Tanh"))
    return emit_unary(im, n, "Tanh", x, NULL, 0, NULL);
  return REFUSE(im, n, "operator %s is not supported", n->op);
}

static int tr_cast(importer *im, tf_node *n) {
  tval *x;
  ST_TRY(in_value(im, n, 0, &x));
  tf_kind to = kind_of_dtype(attr_type(n, "DstT"));
  if (to != TK_FLOAT && to != TK_INT)
    return REFUSE(im, n, "casting to %s is not supported",
                  attr_type(n, "DstT") ? attr_type(n, "DstT") : "?");
  if (x->kind == TK_BOOL)
    return REFUSE(im, n, "casting a boolean tensor is not supported");
  attr_list al = {.n = 0};
  al_int(&al, "to", to == TK_FLOAT ? ST_ONNX_FLOAT : ST_ONNX_INT64);
  ST_TRY(emit_unary(im, n, "Cast", x, NULL, 0, &al));
  outv(n, 0)->kind = to;
  outv(n, 0)->len = x->len;
  return ST_OK;
}

/* ---- translation: shapes and axes --------------------------------------- */

static int tr_shape(importer *im, tf_node *n) {
  tval *x;
  ST_TRY(in_value(im, n, 0, &x));
  if (x->rank < 0)
    return REFUSE(im, n, "the shape of a value of unknown rank");
  const char *s, *y;
  if (x->nchw && !x->tf) {
    /* The NCHW extents, reordered into the NHWC shape TF code expects. */
    const char *idx;
    ST_TRY(emit(im, "Shape", n->name, &x->nchw, 1, NULL, NULL, &s));
    ST_TRY(emit_i64(im, n->name, PERM_TO_NHWC, 4, 1, &idx));
    const char *ins[2] = {s, idx};
    ST_TRY(emit(im, "Gather", n->name, ins, 2, NULL, NULL, &y));
  } else {
    ST_TRY(emit(im, "Shape", n->name, &x->tf, 1, NULL, NULL, &y));
  }
  set_out(n, 0, y, 0, 1, TK_INT);
  outv(n, 0)->len = x->rank;
  return ST_OK;
}

/* Normalises a TF axis against rank r. */
static int norm_axis(importer *im, const tf_node *n, int64_t axis, int r,
                     int *out) {
  *out = 0;
  if (axis < -r || axis >= r)
    return BAD(im, n, "axis %lld is out of range for rank %d",
               (long long)axis, r);
  *out = (int)(axis < 0 ? axis + r : axis);
  return ST_OK;
}

static int tr_concat(importer *im, tf_node *n) {
  int count = n->n_in - 1;
  if (count < 1)
    return BAD(im, n, "no values to concatenate");
  int64_t axis_v;
  size_t c;
  ST_TRY(host_ints(im, n, count, "the axis", &axis_v, 1, &c));
  if (c != 1)
    return BAD(im, n, "the axis must be one integer");
  tval *v0;
  ST_TRY(in_value(im, n, 0, &v0));
  int r = v0->rank, nchw = 0, axis;
  if (r < 0)
    return REFUSE(im, n, "concatenating values of unknown rank");
  ST_TRY(norm_axis(im, n, axis_v, r, &axis));
  const char **ins = calloc((size_t)count, sizeof *ins);
  if (!ins)
    return oom(im);
  int rc = ST_OK;
  for (int i = 0; i < count && !rc; i++) {
    tval *v;
    rc = in_value(im, n, i, &v);
    if (!rc && v->rank != r)
      rc = BAD(im, n, "inputs of ranks %d and %d", r, v->rank);
    if (!rc && r == 4 && v->nchw)
      nchw = 1;
  }
  for (int i = 0; i < count && !rc; i++) {
    tval *v = inv(im, n, i);
    rc = nchw ? as_nchw(im, n, v, &ins[i]) : as_tf(im, n, v, &ins[i]);
  }
  const char *y = NULL;
  if (!rc) {
    attr_list al = {.n = 0};
    al_int(&al, "axis", nchw ? NHWC_TO_NCHW_AXIS[axis] : axis);
    rc = emit(im, "Concat", n->name, ins, (size_t)count, &al, NULL, &y);
  }
  free(ins);
  ST_TRY(rc);
  set_out(n, 0, y, nchw, r, v0->kind);
  if (r == 1) {
    int64_t len = 0;
    for (int i = 0; i < count && len >= 0; i++)
      len = inv(im, n, i)->len < 0 ? -1 : len + inv(im, n, i)->len;
    outv(n, 0)->len = len;
  }
  return ST_OK;
}

/* Split (num_split equal parts) and SplitV (sizes, one of which may be -1:
 * the rest). */
static int tr_split(importer *im, tf_node *n) {
  int is_v = !strcmp(n->op, "SplitV");
  int xi = is_v ? 0 : 1, di = is_v ? 2 : 0;
  if (n->n_in != (is_v ? 3 : 2))
    return BAD(im, n, "%d inputs", n->n_in);
  int64_t num;
  ST_TRY(attr_int(im, n, "num_split", 1, &num));
  if (num < 1 || num > n->n_out)
    return BAD(im, n, "num_split %lld", (long long)num);
  int64_t dim_v;
  size_t c;
  ST_TRY(host_ints(im, n, di, "the split axis", &dim_v, 1, &c));
  tval *x;
  ST_TRY(in_value(im, n, xi, &x));
  if (x->rank < 0)
    return REFUSE(im, n, "splitting a value of unknown rank");
  int axis;
  ST_TRY(norm_axis(im, n, dim_v, x->rank, &axis));
  int nchw = x->rank == 4 && x->nchw;
  const char *ins[2];
  size_t n_ins = 1;
  if (nchw)
    ST_TRY(as_nchw(im, n, x, &ins[0]));
  else
    ST_TRY(as_tf(im, n, x, &ins[0]));
  if (is_v) {
    int64_t sizes[MAX_NODE_PORTS];
    size_t k;
    ST_TRY(host_ints(im, n, 1, "size_splits", sizes, MAX_NODE_PORTS, &k));
    if ((int64_t)k != num)
      return BAD(im, n, "%zu sizes for num_split %lld", k, (long long)num);
    int rest = -1;
    for (size_t i = 0; i < k; i++)
      if (sizes[i] == -1) {
        if (rest >= 0)
          return BAD(im, n, "two sizes are -1");
        rest = (int)i;
      }
    if (rest >= 0) {
      /* The -1 part is the axis extent minus the others, at plan time. */
      int64_t known = 0, ax = nchw ? NHWC_TO_NCHW_AXIS[axis] : axis;
      for (size_t i = 0; i < k; i++)
        known += i == (size_t)rest ? 0 : sizes[i];
      const char *shape, *ext, *idx, *kn, *restv, *parts[3], *vec;
      ST_TRY(emit(im, "Shape", n->name, &ins[0], 1, NULL, NULL, &shape));
      ST_TRY(emit_i64(im, n->name, &ax, 1, 1, &idx));
      const char *g[2] = {shape, idx};
      ST_TRY(emit(im, "Gather", n->name, g, 2, NULL, NULL, &ext));
      ST_TRY(emit_i64(im, n->name, &known, 1, 1, &kn));
      const char *sb[2] = {ext, kn};
      ST_TRY(emit(im, "Sub", n->name, sb, 2, NULL, NULL, &restv));
      size_t np = 0;
      if (rest > 0)
        ST_TRY(emit_i64(im, n->name, sizes, rest, 1, &parts[np++]));
      parts[np++] = restv;
      if ((size_t)rest + 1 < k)
        ST_TRY(emit_i64(im, n->name, sizes + rest + 1,
                     (int64_t)(k - (size_t)rest - 1), 1, &parts[np++]));
      attr_list al = {.n = 0};
      al_int(&al, "axis", 0);
      ST_TRY(emit(im, "Concat", n->name, parts, np, &al, NULL, &vec));
      ins[1] = vec;
    } else {
      ST_TRY(emit_i64(im, n->name, sizes, (int64_t)k, 1, &ins[1]));
    }
    n_ins = 2;
  }
  const char **outs = calloc((size_t)num, sizeof *outs);
  if (!outs)
    return oom(im);
  int rc = ST_OK;
  for (int64_t k = 0; k < num && !rc; k++)
    if (!(outs[k] = fresh_name(im, n->name, "split")))
      rc = oom(im);
  attr_list al = {.n = 0};
  al_int(&al, "axis", nchw ? NHWC_TO_NCHW_AXIS[axis] : axis);
  al_int(&al, "num_outputs", num);
  const char *node_name = rc ? NULL : fresh_name(im, n->name, "Split");
  if (!rc && !node_name)
    rc = oom(im);
  if (!rc)
    rc = st_onnx_builder_add_node(im->b, "Split", node_name, ins, n_ins, outs,
                                  (size_t)num, al.a, al.n);
  for (int64_t k = 0; k < num && !rc; k++)
    set_out(n, (int)k, outs[k], nchw, x->rank, x->kind);
  free(outs);
  return rc;
}

/* Squeeze with listed axes (TF order; an empty list squeezes every axis
 * of extent 1, leaving the rank unknown here). */
static int tr_squeeze(importer *im, tf_node *n) {
  tval *x;
  ST_TRY(in_value(im, n, 0, &x));
  int64_t dims[ST_MAX_DIMS];
  size_t count;
  ST_TRY(attr_ints(im, n, "squeeze_dims", dims, ST_MAX_DIMS, &count));
  if (!count)
    ST_TRY(attr_ints(im, n, "axis", dims, ST_MAX_DIMS, &count));
  const char *ins[2], *y;
  ST_TRY(as_tf(im, n, x, &ins[0]));
  if (count) {
    if (x->rank < 0)
      return REFUSE(im, n, "squeezing a value of unknown rank");
    ST_TRY(emit_i64(im, n->name, dims, (int64_t)count, 1, &ins[1]));
    ST_TRY(emit(im, "Squeeze", n->name, ins, 2, NULL, NULL, &y));
  } else {
    ST_TRY(emit(im, "Squeeze", n->name, ins, 1, NULL, NULL, &y));
  }
  set_out(n, 0, y, 0, count && x->rank >= 0 ? x->rank - (int)count : -1,
          x->kind);
  return ST_OK;
}

static int tr_expand_dims(importer *im, tf_node *n) {
  tval *x;
  ST_TRY(in_value(im, n, 0, &x));
  int64_t axis;
  size_t c;
  ST_TRY(host_ints(im, n, 1, "the axis", &axis, 1, &c));
  const char *ins[2], *y;
  ST_TRY(as_tf(im, n, x, &ins[0]));
  ST_TRY(emit_i64(im, n->name, &axis, 1, 1, &ins[1]));
  ST_TRY(emit(im, "Unsqueeze", n->name, ins, 2, NULL, NULL, &y));
  set_out(n, 0, y, 0, x->rank < 0 ? -1 : x->rank + 1, x->kind);
  return ST_OK;
}

static int tr_reshape(importer *im, tf_node *n) {
  tval *x, *s;
  ST_TRY(in_value(im, n, 0, &x));
  ST_TRY(in_value(im, n, 1, &s));
  const char *ins[2], *y;
  ST_TRY(as_tf(im, n, x, &ins[0]));
  ST_TRY(as_tf(im, n, s, &ins[1]));
  ST_TRY(emit(im, "Reshape", n->name, ins, 2, NULL, NULL, &y));
  set_out(n, 0, y, 0, s->len >= 0 ? (int)s->len : -1, x->kind);
  return ST_OK;
}

static int tr_transpose(importer *im, tf_node *n) {
  tval *x;
  ST_TRY(in_value(im, n, 0, &x));
  int64_t perm[ST_MAX_DIMS];
  size_t count;
  ST_TRY(host_ints(im, n, 1, "perm", perm, ST_MAX_DIMS, &count));
  const char *xin, *y;
  ST_TRY(as_tf(im, n, x, &xin));
  ST_TRY(transpose(im, n->name, xin, perm, (int)count, &y));
  set_out(n, 0, y, 0, (int)count, x->kind);
  return ST_OK;
}

/* Pack: each value gains an axis, then they are concatenated on it. */
static int tr_pack(importer *im, tf_node *n) {
  int64_t axis_v;
  ST_TRY(attr_int(im, n, "axis", 0, &axis_v));
  if (n->n_in < 1)
    return BAD(im, n, "nothing to pack");
  tval *v0 = inv(im, n, 0);
  if (v0->rank < 0)
    return REFUSE(im, n, "packing values of unknown rank");
  int r = v0->rank + 1, axis;
  ST_TRY(norm_axis(im, n, axis_v, r, &axis));
  int64_t ax = axis;
  const char *axes, **parts = calloc((size_t)n->n_in, sizeof *parts);
  if (!parts)
    return oom(im);
  int rc = emit_i64(im, n->name, &ax, 1, 1, &axes);
  tf_kind kind = TK_UNKNOWN;
  for (int i = 0; i < n->n_in && !rc; i++) {
    tval *v;
    const char *ins[2];
    rc = in_value(im, n, i, &v);
    if (!rc && v->rank != v0->rank)
      rc = BAD(im, n, "values of ranks %d and %d", v0->rank, v->rank);
    if (!rc)
      rc = as_tf(im, n, v, &ins[0]);
    ins[1] = axes;
    if (!rc)
      rc = emit(im, "Unsqueeze", n->name, ins, 2, NULL, NULL, &parts[i]);
    kind = v && v->kind ? v->kind : kind;
  }
  const char *y = NULL;
  if (!rc) {
    attr_list al = {.n = 0};
    al_int(&al, "axis", axis);
    rc = emit(im, "Concat", n->name, parts, (size_t)n->n_in, &al, NULL, &y);
  }
  free(parts);
  ST_TRY(rc);
  set_out(n, 0, y, 0, r, kind);
  if (r == 1)
    outv(n, 0)->len = n->n_in;
  return ST_OK;
}

/* BroadcastTo: Expand, on the NCHW form when the value is held so and the
 * target has rank 4 (the shape vector is reordered instead of the data). */
static int tr_broadcast_to(importer *im, tf_node *n) {
  tval *x, *s;
  ST_TRY(in_value(im, n, 0, &x));
  ST_TRY(in_value(im, n, 1, &s));
  if (s->len < 0)
    return REFUSE(im, n, "a target shape of unknown length");
  int r = (int)s->len > x->rank ? (int)s->len : x->rank;
  const char *ins[2], *y, *st;
  ST_TRY(as_tf(im, n, s, &st));
  if (r == 4 && x->rank >= 0) {
    const char *idx, *g[2];
    ST_TRY(as_bcast_nchw(im, n, x, &ins[0]));
    ST_TRY(emit_i64(im, n->name, PERM_TO_NCHW, 4, 1, &idx));
    if (s->len == 4) {
      g[0] = st;
      g[1] = idx;
      ST_TRY(emit(im, "Gather", n->name, g, 2, NULL, NULL, &ins[1]));
    } else {
      return REFUSE(im, n, "broadcasting a rank-4 value to rank %lld",
                    (long long)s->len);
    }
    ST_TRY(emit(im, "Expand", n->name, ins, 2, NULL, NULL, &y));
    set_out(n, 0, y, 1, 4, x->kind);
    return ST_OK;
  }
  ST_TRY(as_tf(im, n, x, &ins[0]));
  ins[1] = st;
  ST_TRY(emit(im, "Expand", n->name, ins, 2, NULL, NULL, &y));
  set_out(n, 0, y, 0, x->rank < 0 ? -1 : r, x->kind);
  return ST_OK;
}

/* Slice(x, begin, size): ONNX ends = begin + size, where a size of -1
 * ("to the end") becomes a huge extent, computed with integer ops the
 * executor folds: extra = (1 - min(size + 1, 1)) * 2^40. */
static int tr_slice(importer *im, tf_node *n) {
  tval *x, *bv, *sv;
  ST_TRY(in_value(im, n, 0, &x));
  ST_TRY(in_value(im, n, 1, &bv));
  ST_TRY(in_value(im, n, 2, &sv));
  if (x->rank < 0)
    return REFUSE(im, n, "slicing a value of unknown rank");
  int nchw = x->rank == 4 && x->nchw;
  const char *b, *s, *one, *big;
  ST_TRY(as_tf(im, n, bv, &b));
  ST_TRY(as_tf(im, n, sv, &s));
  if (nchw) {
    const char *idx, *g[2];
    ST_TRY(emit_i64(im, n->name, PERM_TO_NCHW, 4, 1, &idx));
    g[0] = b;
    g[1] = idx;
    ST_TRY(emit(im, "Gather", n->name, g, 2, NULL, NULL, &b));
    g[0] = s;
    ST_TRY(emit(im, "Gather", n->name, g, 2, NULL, NULL, &s));
  }
  const int64_t one_v = 1;
  ST_TRY(emit_i64(im, n->name, &one_v, 1, 1, &one));
  ST_TRY(emit_i64(im, n->name, &SLICE_TO_END_EXTRA, 1, 1, &big));
  const char *sp1, *mn, *ind, *extra, *e1, *ends;
  const char *p1[2] = {s, one};
  ST_TRY(emit(im, "Add", n->name, p1, 2, NULL, NULL, &sp1));
  const char *p2[2] = {sp1, one};
  ST_TRY(emit(im, "Min", n->name, p2, 2, NULL, NULL, &mn));
  const char *p3[2] = {one, mn};
  ST_TRY(emit(im, "Sub", n->name, p3, 2, NULL, NULL, &ind));
  const char *p4[2] = {ind, big};
  ST_TRY(emit(im, "Mul", n->name, p4, 2, NULL, NULL, &extra));
  const char *p5[2] = {b, s};
  ST_TRY(emit(im, "Add", n->name, p5, 2, NULL, NULL, &e1));
  const char *p6[2] = {e1, extra};
  ST_TRY(emit(im, "Add", n->name, p6, 2, NULL, NULL, &ends));
  const char *ins[3], *y;
  ins[0] = nchw ? x->nchw : NULL;
  if (!nchw)
    ST_TRY(as_tf(im, n, x, &ins[0]));
  ins[1] = b;
  ins[2] = ends;
  ST_TRY(emit(im, "Slice", n->name, ins, 3, NULL, NULL, &y));
  set_out(n, 0, y, nchw, x->rank, x->kind);
  return ST_OK;
}

/* StridedSlice with every mask, expanded into ONNX Slice, Squeeze (shrink
 * axes) and Unsqueeze (new axes). begin/end/strides must be constants in
 * the file. */
static int tr_strided_slice(importer *im, tf_node *n) {
  tval *x;
  ST_TRY(in_value(im, n, 0, &x));
  if (x->rank < 0)
    return REFUSE(im, n, "slicing a value of unknown rank");
  int64_t bg[ST_MAX_DIMS * 2], en[ST_MAX_DIMS * 2], st[ST_MAX_DIMS * 2];
  size_t nb, ne, ns;
  ST_TRY(host_ints(im, n, 1, "begin", bg, COUNT(bg), &nb));
  ST_TRY(host_ints(im, n, 2, "end", en, COUNT(en), &ne));
  ST_TRY(host_ints(im, n, 3, "strides", st, COUNT(st), &ns));
  if (nb != ne || nb != ns)
    return BAD(im, n, "begin, end and strides differ in length");
  int64_t m_begin, m_end, m_ell, m_new, m_shrink;
  ST_TRY(attr_int(im, n, "begin_mask", 0, &m_begin));
  ST_TRY(attr_int(im, n, "end_mask", 0, &m_end));
  ST_TRY(attr_int(im, n, "ellipsis_mask", 0, &m_ell));
  ST_TRY(attr_int(im, n, "new_axis_mask", 0, &m_new));
  ST_TRY(attr_int(im, n, "shrink_axis_mask", 0, &m_shrink));
  /* Dense spec over the input's axes. */
  int r = x->rank, consumed = 0;
  for (size_t i = 0; i < nb; i++)
    if (!((m_ell >> i) & 1) && !((m_new >> i) & 1))
      consumed++;
  int64_t starts[ST_MAX_DIMS], ends[ST_MAX_DIMS], steps[ST_MAX_DIMS];
  int shrink[ST_MAX_DIMS] = {0}, new_at[2 * ST_MAX_DIMS], n_new = 0;
  int d = 0, out_pos = 0, seen_ellipsis = 0;
  for (size_t i = 0; i <= nb; i++) {
    /* An implicit ellipsis at the end covers the axes left over. */
    int ellipsis = i == nb ? !seen_ellipsis : (int)((m_ell >> i) & 1);
    if (i == nb && !ellipsis)
      break;
    if (ellipsis) {
      if (seen_ellipsis && i < nb)
        return BAD(im, n, "two ellipses");
      seen_ellipsis = 1;
      int span = i == nb ? r - d : r - consumed;
      for (int k = 0; k < span; k++, d++, out_pos++) {
        if (d >= r)
          return BAD(im, n, "more slice axes than the rank %d", r);
        starts[d] = 0;
        ends[d] = SLICE_END_MAX;
        steps[d] = 1;
      }
      continue;
    }
    if ((m_new >> i) & 1) {
      if (n_new >= (int)COUNT(new_at))
        return REFUSE(im, n, "too many new axes");
      new_at[n_new++] = out_pos++;
      continue;
    }
    if (d >= r)
      return BAD(im, n, "more slice axes than the rank %d", r);
    int64_t s = st[i];
    if (s == 0)
      return BAD(im, n, "stride 0");
    if ((m_shrink >> i) & 1) {
      starts[d] = bg[i];
      ends[d] = bg[i] == -1 ? SLICE_END_MAX : bg[i] + 1;
      steps[d] = 1;
      shrink[d] = 1;
      d++;
      continue;
    }
    starts[d] = (m_begin >> i) & 1 ? (s > 0 ? 0 : SLICE_END_MAX) : bg[i];
    ends[d] = (m_end >> i) & 1 ? (s > 0 ? SLICE_END_MAX : SLICE_END_MIN)
                               : en[i];
    steps[d] = s;
    d++;
    out_pos++;
  }
  if (d != r)
    return BAD(im, n, "the slice covers %d of %d axes", d, r);
  int n_shrink = 0;
  for (int k = 0; k < r; k++)
    n_shrink += shrink[k];
  int r_out = r - n_shrink + n_new;
  /* An NCHW image stays NCHW when the rank does not change. */
  int nchw = r == 4 && x->nchw && !n_shrink && !n_new;
  int64_t axes[ST_MAX_DIMS];
  for (int k = 0; k < r; k++)
    axes[k] = nchw ? NHWC_TO_NCHW_AXIS[k] : k;
  const char *ins[5], *y;
  ins[0] = nchw ? x->nchw : NULL;
  if (!nchw)
    ST_TRY(as_tf(im, n, x, &ins[0]));
  ST_TRY(emit_i64(im, n->name, starts, r, 1, &ins[1]));
  ST_TRY(emit_i64(im, n->name, ends, r, 1, &ins[2]));
  ST_TRY(emit_i64(im, n->name, axes, r, 1, &ins[3]));
  ST_TRY(emit_i64(im, n->name, steps, r, 1, &ins[4]));
  ST_TRY(emit(im, "Slice", n->name, ins, 5, NULL, NULL, &y));
  int64_t len = -1;
  if (r == 1 && !n_shrink && x->len >= 0) {
    /* A slice of a vector of known length: its length, as Python's. */
    int64_t dim = x->len, s0 = starts[0], e0 = ends[0], k = steps[0];
    if (s0 < 0)
      s0 += dim;
    if (e0 < 0 && e0 != SLICE_END_MIN)
      e0 += dim;
    if (k > 0) {
      s0 = s0 < 0 ? 0 : s0 > dim ? dim : s0;
      e0 = e0 < 0 ? 0 : e0 > dim ? dim : e0;
      len = e0 > s0 ? (e0 - s0 + k - 1) / k : 0;
    } else {
      s0 = s0 < 0 ? -1 : s0 > dim - 1 ? dim - 1 : s0;
      e0 = e0 < -1 ? -1 : e0 > dim - 1 ? dim - 1 : e0;
      len = s0 > e0 ? (s0 - e0 - k - 1) / -k : 0;
    }
  }
  if (n_shrink) {
    int64_t sq[ST_MAX_DIMS];
    int q = 0;
    for (int k = 0; k < r; k++)
      if (shrink[k])
        sq[q++] = k;
    const char *s2[2] = {y, NULL};
    ST_TRY(emit_i64(im, n->name, sq, q, 1, &s2[1]));
    ST_TRY(emit(im, "Squeeze", n->name, s2, 2, NULL, NULL, &y));
  }
  if (n_new) {
    int64_t un[2 * ST_MAX_DIMS];
    for (int k = 0; k < n_new; k++)
      un[k] = new_at[k];
    const char *u2[2] = {y, NULL};
    ST_TRY(emit_i64(im, n->name, un, n_new, 1, &u2[1]));
    ST_TRY(emit(im, "Unsqueeze", n->name, u2, 2, NULL, NULL, &y));
  }
  set_out(n, 0, y, nchw, r_out, x->kind);
  outv(n, 0)->len = r_out == 1 ? len : -1;
  return ST_OK;
}

/* ONNX pads for a TF paddings tensor [r,2]: [b0..b(r-1), e0..e(r-1)], the
 * rows first reordered to NCHW for an image. */
static int onnx_pads(importer *im, const tf_node *n, tval *paddings, int r,
                     int nchw, const char **out) {
  *out = NULL;
  const char *p, *t;
  ST_TRY(as_tf(im, n, paddings, &p));
  if (nchw) {
    const char *idx, *g[2];
    ST_TRY(emit_i64(im, n->name, PERM_TO_NCHW, 4, 1, &idx));
    g[0] = p;
    g[1] = idx;
    ST_TRY(emit(im, "Gather", n->name, g, 2, NULL, NULL, &p));
  }
  static const int64_t SWAP[2] = {1, 0};
  ST_TRY(transpose(im, n->name, p, SWAP, 2, &t));
  int64_t len = 2 * r;
  const char *shape, *ins[2];
  ST_TRY(emit_i64(im, n->name, &len, 1, 1, &shape));
  ins[0] = t;
  ins[1] = shape;
  return emit(im, "Reshape", n->name, ins, 2, NULL, NULL, out);
}

/* ONNX pads of an NCHW tensor for SpaceToBatchND paddings / BatchToSpaceND
 * crops ([2,2]: H and W rows): [0, 0, h0, w0, 0, 0, h1, w1]. */
static int spatial_pads(importer *im, const tf_node *n, tval *hw,
                        const char **out) {
  *out = NULL;
  static const int64_t SWAP[2] = {1, 0};
  static const int64_t ZERO_COLUMNS[4] = {0, 2, 0, 0};
  static const int64_t FLAT = 8;
  const char *p, *t, *zc, *padded, *shape, *ins[2];
  ST_TRY(as_tf(im, n, hw, &p));
  ST_TRY(transpose(im, n->name, p, SWAP, 2, &t));
  ST_TRY(emit_i64(im, n->name, ZERO_COLUMNS, 4, 1, &zc));
  ins[0] = t;
  ins[1] = zc;
  ST_TRY(emit(im, "Pad", n->name, ins, 2, NULL, NULL, &padded));
  ST_TRY(emit_i64(im, n->name, &FLAT, 1, 1, &shape));
  ins[0] = padded;
  ins[1] = shape;
  return emit(im, "Reshape", n->name, ins, 2, NULL, NULL, out);
}

static int tr_pad(importer *im, tf_node *n) {
  tval *x, *pv;
  ST_TRY(in_value(im, n, 0, &x));
  ST_TRY(in_value(im, n, 1, &pv));
  if (x->rank < 0)
    return REFUSE(im, n, "padding a value of unknown rank");
  int nchw = x->rank == 4 && x->nchw;
  const char *ins[3], *y;
  size_t n_ins = 2;
  ins[0] = nchw ? x->nchw : NULL;
  if (!nchw)
    ST_TRY(as_tf(im, n, x, &ins[0]));
  ST_TRY(onnx_pads(im, n, pv, x->rank, nchw, &ins[1]));
  if (!strcmp(n->op, "PadV2")) {
    tval *cv;
    ST_TRY(in_value(im, n, 2, &cv));
    ST_TRY(as_tf(im, n, cv, &ins[2]));
    n_ins = 3;
  }
  ST_TRY(emit(im, "Pad", n->name, ins, n_ins, NULL, NULL, &y));
  set_out(n, 0, y, nchw, x->rank, x->kind);
  return ST_OK;
}

static int tr_mean(importer *im, tf_node *n) {
  tval *x;
  ST_TRY(in_value(im, n, 0, &x));
  int keep;
  ST_TRY(attr_bool(im, n, "keep_dims", 0, &keep));
  int64_t axes[ST_MAX_DIMS];
  size_t count;
  ST_TRY(host_ints(im, n, 1, "the reduction axes", axes, ST_MAX_DIMS, &count));
  if (x->rank < 0)
    return REFUSE(im, n, "a mean over a value of unknown rank");
  int norm[ST_MAX_DIMS];
  for (size_t i = 0; i < count; i++)
    ST_TRY(norm_axis(im, n, axes[i], x->rank, &norm[i]));
  int nchw = x->rank == 4 && x->nchw;
  const char *ins[2], *y;
  int64_t ax[ST_MAX_DIMS];
  for (size_t i = 0; i < count; i++)
    ax[i] = nchw ? NHWC_TO_NCHW_AXIS[norm[i]] : norm[i];
  ins[0] = nchw ? x->nchw : NULL;
  if (!nchw)
    ST_TRY(as_tf(im, n, x, &ins[0]));
  ST_TRY(emit_i64(im, n->name, ax, (int64_t)count, 1, &ins[1]));
  /* An image keeps its axes (and its layout); dropping them happens in TF
   * order afterwards. */
  attr_list al = {.n = 0};
  al_int(&al, "keepdims", keep || nchw);
  ST_TRY(emit(im, "ReduceMean", n->name, ins, 2, &al, NULL, &y));
  if (nchw && !keep) {
    tval kept = {.nchw = y, .rank = 4, .kind = x->kind, .len = -1};
    const char *t, *sq[2];
    ST_TRY(as_tf(im, n, &kept, &t));
    int64_t tfax[ST_MAX_DIMS];
    for (size_t i = 0; i < count; i++)
      tfax[i] = norm[i];
    sq[0] = t;
    ST_TRY(emit_i64(im, n->name, tfax, (int64_t)count, 1, &sq[1]));
    ST_TRY(emit(im, "Squeeze", n->name, sq, 2, NULL, NULL, &y));
    set_out(n, 0, y, 0, 4 - (int)count, x->kind);
    return ST_OK;
  }
  set_out(n, 0, y, nchw, keep ? x->rank : x->rank - (int)count, x->kind);
  return ST_OK;
}

/* ---- translation: spatial ops -------------------------------------------- */

/* The NHWC [1,h,w,1] entries of a TF window attribute (ksize, strides,
 * dilations) as [h, w]; `def` when absent. */
static int window_attr(importer *im, const tf_node *n, const char *name,
                       int64_t def, int64_t out[2]) {
  int64_t v[ST_MAX_DIMS];
  size_t count;
  ST_TRY(attr_ints(im, n, name, v, ST_MAX_DIMS, &count));
  if (!count) {
    out[0] = out[1] = def;
    return ST_OK;
  }
  if (count != 4 || v[0] != 1 || v[3] != 1 || v[1] < 1 || v[2] < 1 ||
      v[1] > INT_MAX || v[2] > INT_MAX)
    return REFUSE(im, n, "attribute '%s' must be [1, h, w, 1] with positive "
                  "h and w", name);
  out[0] = v[1];
  out[1] = v[2];
  return ST_OK;
}

static int check_nhwc(importer *im, const tf_node *n) {
  char fmt[16];
  ST_TRY(attr_string(im, n, "data_format", "NHWC", fmt, sizeof fmt));
  if (strcmp(fmt, "NHWC"))
    return REFUSE(im, n, "data_format %s is not supported (only NHWC)", fmt);
  return ST_OK;
}

/* Padding attributes as ONNX ones (auto_pad or explicit pads). */
static int padding_attrs(importer *im, const tf_node *n, attr_list *al,
                         int64_t pads[4]) {
  char pad[16];
  ST_TRY(attr_string(im, n, "padding", "VALID", pad, sizeof pad));
  if (!strcmp(pad, "SAME")) {
    al_str(al, "auto_pad", "SAME_UPPER"); /* TF puts the odd cell last */
  } else if (!strcmp(pad, "VALID")) {
    al_str(al, "auto_pad", "VALID");
  } else if (!strcmp(pad, "EXPLICIT")) {
    int64_t e[8];
    size_t count;
    ST_TRY(attr_ints(im, n, "explicit_paddings", e, 8, &count));
    if (count != 8 || e[0] || e[1] || e[6] || e[7])
      return REFUSE(im, n, "explicit_paddings must pad H and W only");
    pads[0] = e[2];
    pads[1] = e[4];
    pads[2] = e[3];
    pads[3] = e[5];
    al_ints(al, "pads", pads, 4);
  } else {
    return REFUSE(im, n, "padding %s is not supported", pad);
  }
  return ST_OK;
}

static int tr_pool(importer *im, tf_node *n) {
  ST_TRY(check_nhwc(im, n));
  tval *x;
  ST_TRY(in_value(im, n, 0, &x));
  int64_t k[2], s[2], pads[4];
  ST_TRY(window_attr(im, n, "ksize", 1, k));
  ST_TRY(window_attr(im, n, "strides", 1, s));
  attr_list al = {.n = 0};
  al_ints(&al, "kernel_shape", k, 2);
  al_ints(&al, "strides", s, 2);
  ST_TRY(padding_attrs(im, n, &al, pads));
  int avg = !strcmp(n->op, "AvgPool");
  if (avg)
    al_int(&al, "count_include_pad", 0); /* TF averages over real cells */
  const char *xin, *y;
  ST_TRY(as_nchw(im, n, x, &xin));
  ST_TRY(emit(im, avg ? "AveragePool" : "MaxPool", n->name, &xin, 1, &al, NULL,
           &y));
  set_out(n, 0, y, 1, 4, TK_FLOAT);
  return ST_OK;
}

static int tr_resize(importer *im, tf_node *n) {
  tval *x, *size;
  ST_TRY(in_value(im, n, 0, &x));
  ST_TRY(in_value(im, n, 1, &size));
  int align, half;
  ST_TRY(attr_bool(im, n, "align_corners", 0, &align));
  ST_TRY(attr_bool(im, n, "half_pixel_centers", 0, &half));
  if (align && half)
    return BAD(im, n, "align_corners and half_pixel_centers are both set");
  attr_list al = {.n = 0};
  static const int64_t SPATIAL[2] = {2, 3};
  al_str(&al, "mode", "linear");
  /* TF's legacy mapping (neither flag) is ONNX's asymmetric one. */
  al_str(&al, "coordinate_transformation_mode",
         half ? "half_pixel" : align ? "align_corners" : "asymmetric");
  al_ints(&al, "axes", SPATIAL, 2);
  const char *ins[4], *y;
  ST_TRY(as_nchw(im, n, x, &ins[0]));
  ins[1] = "";
  ins[2] = "";
  ST_TRY(as_tf(im, n, size, &ins[3]));
  ST_TRY(emit(im, "Resize", n->name, ins, 4, &al, NULL, &y));
  set_out(n, 0, y, 1, 4, TK_FLOAT);
  return ST_OK;
}

/* The fused ops of _FusedConv2D / FusedDepthwiseConv2dNative. */
typedef struct fused_spec {
  int bias;        /* BiasAdd: args[0] */
  int batchnorm;   /* FusedBatchNorm: args[0..3] */
  const char *act; /* NULL, "Relu", "Relu6" */
} fused_spec;

static int read_fused(importer *im, const tf_node *n, fused_spec *f) {
  memset(f, 0, sizeof *f);
  json_t *a = attr_get(n, "fused_ops");
  json_t *list = a ? json_object_get(a, "list") : NULL;
  json_t *ss = list ? json_object_get(list, "s") : NULL;
  size_t count = json_is_array(ss) ? json_array_size(ss) : 0;
  for (size_t i = 0; i < count; i++) {
    char op[64];
    json_t *s = json_array_get(ss, i);
    if (!json_is_string(s) || b64_decode(json_string_value(s), op,
                                         sizeof op) < 0)
      return BAD(im, n, "fused_ops holds a non-string");
    if (i == 0 && !strcmp(op, "BiasAdd"))
      f->bias = 1;
    else if (i == 0 && !strcmp(op, "FusedBatchNorm"))
      f->batchnorm = 1;
    else if (i == 1 && (!strcmp(op, "Relu") || !strcmp(op, "Relu6")))
      f->act = !strcmp(op, "Relu") ? "Relu" : "Relu6";
    else
      return REFUSE(im, n, "fused op %s is not supported (BiasAdd or "
                    "FusedBatchNorm, then Relu or Relu6)", op);
  }
  int64_t num_args;
  ST_TRY(attr_int(im, n, "num_args", 0, &num_args));
  int64_t want = f->bias ? 1 : f->batchnorm ? 4 : 0;
  if (num_args != want || n->n_in != 2 + want)
    return BAD(im, n, "%lld fused arguments and %d inputs for these fused "
               "ops", (long long)num_args, n->n_in);
  return ST_OK;
}

/* The convolution weights in ONNX layout, as IR nodes on the TF constant:
 * HWIO -> OIHW, or for a depthwise HWCM filter -> [C*M, 1, H, W]. */
static int conv_weights(importer *im, tf_node *n, tval *filter, int depthwise,
                        const char **out, int64_t *cout, int64_t *group) {
  *out = NULL;
  *cout = 0;
  *group = 1;
  const st_tensor *f = filter->host;
  if (!f || f->ndim != 4 || f->dtype != ST_F32)
    return REFUSE(im, n, "the filter must be a rank-4 float constant in the "
                  "file");
  const char *fname;
  ST_TRY(as_tf(im, n, filter, &fname));
  if (!depthwise) {
    static const int64_t HWIO_TO_OIHW[4] = {3, 2, 0, 1};
    *cout = f->shape[3];
    *group = 1;
    return transpose(im, n->name, fname, HWIO_TO_OIHW, 4, out);
  }
  static const int64_t HWCM_TO_CMHW[4] = {2, 3, 0, 1};
  const char *t, *shape, *ins[2];
  ST_TRY(transpose(im, n->name, fname, HWCM_TO_CMHW, 4, &t));
  int64_t target[4] = {f->shape[2] * f->shape[3], 1, f->shape[0],
                       f->shape[1]};
  ST_TRY(emit_i64(im, n->name, target, 4, 1, &shape));
  ins[0] = t;
  ins[1] = shape;
  *cout = target[0];
  *group = f->shape[2];
  return emit(im, "Reshape", n->name, ins, 2, NULL, NULL, out);
}

/* The input of node `m` holding a per-channel (or scalar) float constant
 * beside the value from node `src`, or -1. */
static int channel_const(importer *im, tf_node *m, int src, int64_t cout) {
  if (m->n_in != 2)
    return -1;
  for (int k = 0; k < 2; k++) {
    if (m->in[k].node != src)
      continue;
    tval *c = inv(im, m, 1 - k);
    if (c->host && c->host->dtype == ST_F32 && c->host->ndim <= 1 &&
        (st_tensor_numel(c->host) == cout || st_tensor_numel(c->host) == 1))
      return 1 - k;
  }
  return -1;
}

/* A rank-1 IR value of input k of m (a per-channel constant), broadcast to
 * cout. */
static int channel_vector(importer *im, tf_node *n, tf_node *m, int k,
                          int64_t cout, const char **out) {
  *out = NULL;
  const char *name, *shape, *ins[2];
  tval *c;
  ST_TRY(in_value(im, m, k, &c));
  name = c->tf;
  if (st_tensor_numel(c->host) == cout && c->host->ndim == 1) {
    *out = name;
    return ST_OK;
  }
  ST_TRY(emit_i64(im, n->name, &cout, 1, 1, &shape));
  ins[0] = name;
  ins[1] = shape;
  return emit(im, "Expand", n->name, ins, 2, NULL, NULL, out);
}

static int tr_conv(importer *im, tf_node *n) {
  ST_TRY(check_nhwc(im, n));
  int depthwise = strstr(n->op, "Depthwise") != NULL;
  int fused = !strncmp(n->op, "Fused", 5) || !strncmp(n->op, "_Fused", 6);
  fused_spec fs = {0};
  if (fused)
    ST_TRY(read_fused(im, n, &fs));
  else if (n->n_in != 2)
    return BAD(im, n, "%d inputs, expected 2", n->n_in);
  tval *x, *filter;
  ST_TRY(in_value(im, n, 1, &filter));
  int64_t stride[2], dil[2], pads[4], cout, group;
  ST_TRY(window_attr(im, n, "strides", 1, stride));
  ST_TRY(window_attr(im, n, "dilations", 1, dil));
  const char *w;
  ST_TRY(conv_weights(im, n, filter, depthwise, &w, &cout, &group));
  attr_list al = {.n = 0};
  al_ints(&al, "strides", stride, 2);
  al_int(&al, "group", group);

  /* SpaceToBatchND -> conv -> BatchToSpaceND: one dilated convolution on
   * the input padded by the paddings, cropped by the crops afterwards
   * (exactly the chain's result, whatever the paddings). */
  tf_node *s2b = &im->nodes[n->in[0].node], *tail = n, *b2s = NULL;
  const char *xin;
  int dilated = 0;
  if (!strcmp(s2b->op, "SpaceToBatchND") && s2b->absorbed) {
    b2s = sole_reader(im, (int)(n - im->nodes));
    int64_t bs1[2], bs2[2];
    size_t c1, c2;
    if (!b2s || strcmp(b2s->op, "BatchToSpaceND"))
      return REFUSE(im, n, "a SpaceToBatchND input without a "
                    "BatchToSpaceND after the convolution");
    ST_TRY(host_ints(im, s2b, 1, "block_shape", bs1, 2, &c1));
    ST_TRY(host_ints(im, b2s, 1, "block_shape", bs2, 2, &c2));
    if (c1 != 2 || c2 != 2 || bs1[0] != bs2[0] || bs1[1] != bs2[1] ||
        bs1[0] < 1 || bs1[1] < 1)
      return REFUSE(im, n, "SpaceToBatchND/BatchToSpaceND blocks differ or "
                    "are not 2-D");
    if (stride[0] != 1 || stride[1] != 1 || dil[0] != 1 || dil[1] != 1)
      return REFUSE(im, n, "a strided or dilated convolution inside "
                    "SpaceToBatchND");
    char pad[16];
    ST_TRY(attr_string(im, n, "padding", "VALID", pad, sizeof pad));
    if (strcmp(pad, "VALID"))
      return REFUSE(im, n, "padding %s inside SpaceToBatchND", pad);
    tval *sx, *sp;
    ST_TRY(in_value(im, s2b, 0, &sx));
    ST_TRY(in_value(im, s2b, 2, &sp));
    const char *pv, *ins[2];
    ST_TRY(as_nchw(im, n, sx, &ins[0]));
    ST_TRY(spatial_pads(im, s2b, sp, &pv));
    /* The paddings have no batch or channel rows: put zeros there. */
    ins[1] = pv;
    ST_TRY(emit(im, "Pad", n->name, ins, 2, NULL, NULL, &xin));
    dil[0] = bs1[0];
    dil[1] = bs1[1];
    al_str(&al, "auto_pad", "VALID");
    tail = b2s;
    absorb(im, (int)(b2s - im->nodes));
    dilated = 1;
  } else {
    ST_TRY(in_value(im, n, 0, &x));
    ST_TRY(as_nchw(im, n, x, &xin));
    ST_TRY(padding_attrs(im, n, &al, pads));
  }
  al_ints(&al, "dilations", dil, 2);

  /* A per-channel Mul then Add after a convolution without activation
   * (batch norm left unfolded by the converter) goes into its weights. */
  const char *bias = NULL;
  if (fs.bias) {
    tval *bv;
    ST_TRY(in_value(im, n, 2, &bv));
    if (!bv->host || bv->host->dtype != ST_F32 ||
        st_tensor_numel(bv->host) != cout)
      return REFUSE(im, n, "the bias must be a float constant of %lld values",
                    (long long)cout);
    bias = bv->tf;
  }
  if (!fs.act && !fs.batchnorm) {
    tf_node *m = sole_reader(im, (int)(tail - im->nodes));
    int sk = m && !m->absorbed && op_is(m, "Mul", NULL)
                 ? channel_const(im, m, (int)(tail - im->nodes), cout)
                 : -1;
    if (sk >= 0) {
      const char *sv, *shape, *r, *ins[2];
      int64_t s4[4] = {cout, 1, 1, 1};
      ST_TRY(channel_vector(im, n, m, sk, cout, &sv));
      ST_TRY(emit_i64(im, n->name, s4, 4, 1, &shape));
      ins[0] = sv;
      ins[1] = shape;
      ST_TRY(emit(im, "Reshape", n->name, ins, 2, NULL, NULL, &r));
      ins[0] = w;
      ins[1] = r;
      ST_TRY(emit(im, "Mul", n->name, ins, 2, NULL, NULL, &w));
      if (bias) {
        ins[0] = bias;
        ins[1] = sv;
        ST_TRY(emit(im, "Mul", n->name, ins, 2, NULL, NULL, &bias));
      }
      absorb(im, (int)(m - im->nodes));
      tail = m;
      tf_node *a = sole_reader(im, (int)(m - im->nodes));
      int ok = a && !a->absorbed && op_is(a, "Add", "AddV2")
                   ? channel_const(im, a, (int)(m - im->nodes), cout)
                   : -1;
      if (ok >= 0) {
        const char *ov;
        ST_TRY(channel_vector(im, n, a, ok, cout, &ov));
        if (bias) {
          ins[0] = bias;
          ins[1] = ov;
          ST_TRY(emit(im, "Add", n->name, ins, 2, NULL, NULL, &bias));
        } else {
          bias = ov;
        }
        absorb(im, (int)(a - im->nodes));
        tail = a;
      }
    }
  }
  const char *ins[3] = {xin, w, bias ? bias : ""}, *y;
  ST_TRY(emit(im, "Conv", n->name, ins, bias ? 3 : 2, &al, NULL, &y));
  if (fs.batchnorm) {
    const char *bn[5] = {y};
    for (int k = 0; k < 4; k++) {
      tval *p;
      ST_TRY(in_value(im, n, 2 + k, &p));
      ST_TRY(as_tf(im, n, p, &bn[1 + k]));
    }
    double eps = 0.0;
    json_t *e = attr_get(n, "epsilon");
    if (e && json_is_number(json_object_get(e, "f")))
      eps = json_number_value(json_object_get(e, "f"));
    attr_list bl = {.n = 0};
    al_float(&bl, "epsilon", (float)eps);
    ST_TRY(emit(im, "BatchNormalization", n->name, bn, 5, &bl, NULL, &y));
  }
  if (dilated) {
    tval *crops;
    const char *cv, *neg, *minus1, *ins2[2];
    ST_TRY(in_value(im, b2s, 2, &crops));
    ST_TRY(spatial_pads(im, b2s, crops, &cv));
    const int64_t m1 = -1;
    ST_TRY(emit_i64(im, n->name, &m1, 1, 1, &minus1));
    ins2[0] = cv;
    ins2[1] = minus1;
    ST_TRY(emit(im, "Mul", n->name, ins2, 2, NULL, NULL, &neg));
    ins2[0] = y;
    ins2[1] = neg;
    ST_TRY(emit(im, "Pad", n->name, ins2, 2, NULL, NULL, &y));
  }
  tval conv_out = {.nchw = y, .rank = 4, .kind = TK_FLOAT, .len = -1};
  if (fs.act) {
    *outv(n, 0) = conv_out;
    if (!strcmp(fs.act, "Relu"))
      ST_TRY(emit_unary(im, n, "Relu", &conv_out, NULL, 0, NULL));
    else
      ST_TRY(emit_clip(im, n, &conv_out, 0.0f, 6.0f));
    conv_out = *outv(n, 0);
  }
  set_out(tail, 0, conv_out.nchw, 1, 4, TK_FLOAT);
  if (tail != n)
    set_out(n, 0, conv_out.nchw, 1, 4, TK_FLOAT);
  return ST_OK;
}

/* Conv2DBackpropInput(input_sizes, filter, out_backprop): a transposed
 * convolution producing input_sizes (a constant in the file). */
static int tr_conv_backprop_input(importer *im, tf_node *n) {
  ST_TRY(check_nhwc(im, n));
  if (n->n_in != 3)
    return BAD(im, n, "%d inputs, expected 3", n->n_in);
  int64_t sizes[4], stride[2], dil[2];
  size_t c;
  ST_TRY(host_ints(im, n, 0, "input_sizes", sizes, 4, &c));
  if (c != 4)
    return BAD(im, n, "input_sizes has %zu values", c);
  tval *filter, *dy;
  ST_TRY(in_value(im, n, 1, &filter));
  ST_TRY(in_value(im, n, 2, &dy));
  const st_tensor *f = filter->host;
  if (!f || f->ndim != 4 || f->dtype != ST_F32)
    return REFUSE(im, n, "the filter must be a rank-4 float constant in the "
                  "file");
  ST_TRY(window_attr(im, n, "strides", 1, stride));
  ST_TRY(window_attr(im, n, "dilations", 1, dil));
  char pad[16];
  ST_TRY(attr_string(im, n, "padding", "VALID", pad, sizeof pad));
  if (strcmp(pad, "SAME") && strcmp(pad, "VALID"))
    return REFUSE(im, n, "padding %s is not supported", pad);
  /* TF's filter is [h, w, out channels of this op, channels of dy]; ONNX's
   * ConvTranspose weight is [channels of dy, out channels, h, w]. */
  static const int64_t HWOI_TO_IOHW[4] = {3, 2, 0, 1};
  const char *fname, *w, *ins[2], *y;
  ST_TRY(as_tf(im, n, filter, &fname));
  ST_TRY(transpose(im, n->name, fname, HWOI_TO_IOHW, 4, &w));
  ST_TRY(as_nchw(im, n, dy, &ins[0]));
  ins[1] = w;
  attr_list al = {.n = 0};
  int64_t oshape[2] = {sizes[1], sizes[2]};
  al_ints(&al, "strides", stride, 2);
  al_ints(&al, "dilations", dil, 2);
  al_ints(&al, "output_shape", oshape, 2);
  al_str(&al, "auto_pad", !strcmp(pad, "SAME") ? "SAME_UPPER" : "VALID");
  ST_TRY(emit(im, "ConvTranspose", n->name, ins, 2, &al, NULL, &y));
  set_out(n, 0, y, 1, 4, TK_FLOAT);
  return ST_OK;
}

/* ---- driving the translation -------------------------------------------- */

/* Marks SpaceToBatchND nodes that a dilated-convolution chain absorbs. */
static void find_space_to_batch(importer *im) {
  for (int i = 0; i < im->n_nodes; i++) {
    tf_node *s = &im->nodes[i];
    if (!s->needed || !s->live || strcmp(s->op, "SpaceToBatchND"))
      continue;
    tf_node *c = sole_reader(im, i);
    if (!c || (!strstr(c->op, "Conv2D") && !strstr(c->op, "Conv2d")) ||
        c->in[0].node != i)
      continue;
    tf_node *b = sole_reader(im, (int)(c - im->nodes));
    if (b && !strcmp(b->op, "BatchToSpaceND"))
      s->absorbed = 1;
  }
}

static int add_placeholder(importer *im, tf_node *n) {
  tval *v = outv(n, 0);
  if (v->host)
    return ST_OK; /* bound */
  const st_tfjs_input *o = input_option(im, n->name);
  tf_kind kind = kind_of_dtype(attr_type(n, "dtype"));
  if (kind != TK_FLOAT)
    return REFUSE(im, n, "a %s input is not supported (only DT_FLOAT)",
                  attr_type(n, "dtype") ? attr_type(n, "dtype") : "?");
  int64_t dims[ST_MAX_DIMS];
  int rank = -1;
  json_t *sa = attr_get(n, "shape");
  json_t *sh = sa ? json_object_get(sa, "shape") : NULL;
  json_t *dl = sh ? json_object_get(sh, "dim") : NULL;
  if (json_is_array(dl) && json_array_size(dl) <= ST_MAX_DIMS) {
    rank = (int)json_array_size(dl);
    for (int d = 0; d < rank; d++)
      if (!json_int64(json_object_get(json_array_get(dl, (size_t)d), "size"),
                      &dims[d]))
        dims[d] = -1;
  } else if (sh && json_is_object(sh) && !json_object_get(sh, "unknownRank")) {
    rank = 0; /* a scalar: no dims */
  }
  if (o && o->rank > 0) {
    if (rank >= 0 && rank != o->rank)
      return BAD(im, n, "declared with rank %d, asked for rank %d", rank,
                 o->rank);
    if (o->rank > ST_MAX_DIMS)
      return REFUSE(im, n, "rank %d", o->rank);
    if (rank < 0)
      for (int d = 0; d < o->rank; d++)
        dims[d] = -1;
    rank = o->rank;
  }
  if (rank < 0)
    return REFUSE(im, n, "the input has an unknown rank: bind it to a value "
                  "or give its rank");
  int64_t ir_dims[ST_MAX_DIMS];
  for (int d = 0; d < rank; d++)
    ir_dims[d] = rank == 4 ? dims[PERM_TO_NCHW[d]] : dims[d];
  for (int d = 0; d < rank; d++)
    if (ir_dims[d] < -1)
      ir_dims[d] = -1;
  ST_TRY(st_onnx_builder_add_input(im->b, n->name, ST_ONNX_FLOAT, rank,
                                ir_dims));
  const char *nm = str_keep(im, n->name);
  if (!nm)
    return oom(im);
  set_out(n, 0, nm, rank == 4, rank, TK_FLOAT);
  return ST_OK;
}

/* Aliases share the translated value of their (live) data input. */
static int tr_alias(importer *im, tf_node *n) {
  if (!strcmp(n->op, "Switch") && n->merge_from == -2)
    return REFUSE(im, n, "the predicate depends on values known only at run "
                  "time (bind the inputs it reads)");
  if (!strcmp(n->op, "Merge") && n->merge_from == -2)
    return REFUSE(im, n, "more than one input is live (a tf.cond whose "
                  "predicate is not constant)");
  int first, count;
  data_inputs(n, &first, &count);
  if (count < 1)
    return BAD(im, n, "no live input");
  tval *src;
  ST_TRY(in_value(im, n, first, &src));
  for (int k = 0; k < n->n_out; k++) {
    n->out[k] = *src;
    n->out[k].translated = 1;
  }
  if (!strcmp(n->op, "Merge") && n->n_out > 1) {
    /* value_index: which input was taken, an int32 scalar. */
    n->out[1] = (tval){.rank = 0, .kind = TK_INT, .len = -1};
  }
  return ST_OK;
}

typedef int (*translate_fn)(importer *im, tf_node *n);
typedef struct tr_entry {
  const char *op;
  translate_fn fn;
} tr_entry;

static const tr_entry TRANSLATORS[] = {
    {"Add", tr_binary},
    {"AddV2", tr_binary},
    {"BiasAdd", tr_binary},
    {"Sub", tr_binary},
    {"Mul", tr_binary},
    {"RealDiv", tr_binary},
    {"Maximum", tr_binary},
    {"Minimum", tr_binary},
    {"FloorMod", tr_binary},
    {"Square", tr_square},
    {"AddN", tr_addn},
    {"Cast", tr_cast},
    {"Shape", tr_shape},
    {"ConcatV2", tr_concat},
    {"Split", tr_split},
    {"SplitV", tr_split},
    {"Squeeze", tr_squeeze},
    {"ExpandDims", tr_expand_dims},
    {"Reshape", tr_reshape},
    {"Transpose", tr_transpose},
    {"Pack", tr_pack},
    {"BroadcastTo", tr_broadcast_to},
    {"Slice", tr_slice},
    {"StridedSlice", tr_strided_slice},
    {"Pad", tr_pad},
    {"PadV2", tr_pad},
    {"Mean", tr_mean},
    {"AvgPool", tr_pool},
    {"MaxPool", tr_pool},
    {"ResizeBilinear", tr_resize},
    {"Conv2D", tr_conv},
    {"_FusedConv2D", tr_conv},
    {"DepthwiseConv2dNative", tr_conv},
    {"FusedDepthwiseConv2dNative", tr_conv},
    {"Conv2DBackpropInput", tr_conv_backprop_input},
};

static int translate_node(importer *im, tf_node *n, const fusion *fu) {
  if (!strcmp(n->op, "Placeholder"))
    return add_placeholder(im, n);
  if (!strcmp(n->op, "Const")) {
    if (!outv(n, 0)->host)
      return BAD(im, n, "the constant has no entry in weightsManifest");
    return ST_OK; /* named on first use */
  }
  if (!strcmp(n->op, "NoOp"))
    return ST_OK;
  if (is_alias_op(n->op))
    return tr_alias(im, n);
  if (fu->kind != FUSE_NONE || !strcmp(n->op, "Relu") ||
      !strcmp(n->op, "Relu6") || !strcmp(n->op, "Sigmoid") ||
      !strcmp(n->op, "Tanh"))
    return tr_unary(im, n, fu);
  if (!strcmp(n->op, "SpaceToBatchND") || !strcmp(n->op, "BatchToSpaceND"))
    return REFUSE(im, n, "%s is supported only around a convolution (a "
                  "dilated convolution)", n->op);
  for (size_t i = 0; i < COUNT(TRANSLATORS); i++)
    if (!strcmp(TRANSLATORS[i].op, n->op))
      return TRANSLATORS[i].fn(im, n);
  return REFUSE(im, n, "operator %s is not supported", n->op);
}

static int add_outputs(importer *im, const out_req *reqs, size_t n_reqs) {
  for (size_t i = 0; i < n_reqs; i++) {
    tf_node *n = &im->nodes[reqs[i].ref.node];
    tval *v = &n->out[reqs[i].ref.out];
    if (v->host && !v->tf)
      ST_TRY(host_name(im, n, reqs[i].ref.out, v));
    const char *name;
    if (v->rank == 4)
      ST_TRY(as_nchw(im, n, v, &name));
    else
      ST_TRY(as_tf(im, n, v, &name));
    if (strcmp(name, reqs[i].key)) {
      if (st_onnx_builder_has(im->b, reqs[i].key))
        return st_error_set(ST_EFORMAT, "%s: output name '%s' is already a "
                            "value of the graph", im->label, reqs[i].key);
      const char *id;
      ST_TRY(emit(im, "Identity", reqs[i].key, &name, 1, NULL, reqs[i].key,
               &id));
    }
    ST_TRY(st_onnx_builder_add_output(im->b, reqs[i].key));
  }
  return ST_OK;
}

static void importer_free(importer *im) {
  if (im->nodes)
    for (int i = 0; i < im->n_nodes; i++) {
      free(im->nodes[i].in);
      free(im->nodes[i].ctrl);
      free(im->nodes[i].out);
    }
  free(im->nodes);
  free(im->slots);
  free(im->topo);
  for (size_t i = 0; i < im->n_weights; i++)
    st_tensor_free(&im->weights[i].t);
  free(im->weights);
  for (size_t i = 0; i < im->n_bound; i++)
    st_tensor_free(&im->bound[i]);
  free(im->bound);
  while (im->strings) {
    str_chunk *next = im->strings->next;
    free(im->strings);
    im->strings = next;
  }
  st_onnx_builder_free(im->b);
  if (im->root)
    json_decref(im->root);
}

static int import_graph(importer *im, const char *dir) {
  json_t *fmt = json_object_get(im->root, "format");
  if (json_is_string(fmt) && strcmp(json_string_value(fmt), "graph-model"))
    return st_error_set(ST_ENOTSUP, "%s: format '%s' is not supported (only "
                        "TF.js graph models)", im->label,
                        json_string_value(fmt));
  out_req *reqs = NULL;
  size_t n_reqs = 0;
  fusion *fu = NULL;
  int rc = ST_OK;
  if ((rc = read_nodes(im)) || (rc = sort_nodes(im)) ||
      (rc = read_weights(im, dir)) || (rc = setup_constants(im)) ||
      (rc = propagate_liveness(im)) ||
      (rc = resolve_outputs(im, &reqs, &n_reqs)) ||
      (rc = mark_needed(im, reqs, n_reqs)))
    goto done;
  fu = calloc((size_t)im->n_nodes + 1, sizeof *fu);
  if (!fu) {
    rc = oom(im);
    goto done;
  }
  find_space_to_batch(im);
  if ((rc = find_hard_activations(im, fu)) ||
      (rc = st_onnx_builder_new(im->label, TFJS_IR_OPSET, &im->b)))
    goto done;
  for (int t = 0; t < im->n_topo && !rc; t++) {
    int i = im->topo[t];
    tf_node *n = &im->nodes[i];
    if (n->needed && n->live && !n->absorbed)
      rc = translate_node(im, n, &fu[i]);
  }
  if (!rc)
    rc = add_outputs(im, reqs, n_reqs);
done:
  free(reqs);
  free(fu);
  return rc;
}

int st_tfjs_load(const char *model_json, const st_tfjs_options *opts,
                 st_onnx_model **out) {
  if (!model_json || !out)
    return st_error_set(ST_EINVAL, "tfjs: NULL argument");
  *out = NULL;
  importer im = {.label = model_json, .opts = opts};
  char dir[4096];
  const char *slash = strrchr(model_json, '/');
  size_t dlen = slash ? (size_t)(slash - model_json) : 0;
  if (dlen >= sizeof dir)
    return st_error_set(ST_EINVAL, "%s: path too long", model_json);
  memcpy(dir, model_json, dlen);
  dir[dlen] = '\0';
  if (slash && !dlen)
    snprintf(dir, sizeof dir, "/");
  int rc = st_json_load(model_json, &im.root);
  if (!rc && !json_is_object(im.root))
    rc = st_error_set(ST_EFORMAT, "%s: not a TF.js model (the top level is "
                      "not an object)", model_json);
  if (!rc)
    rc = import_graph(&im, dir);
  if (!rc) {
    st_onnx_builder *b = im.b;
    im.b = NULL;
    rc = st_onnx_builder_finish(b, out);
  }
  importer_free(&im);
  return rc;
}

int st_tfjs_is_model_path(const char *path) {
  static const char EXT[] = ".json";
  size_t n = path ? strlen(path) : 0;
  return n > sizeof EXT - 1 && !strcmp(path + n - (sizeof EXT - 1), EXT);
}

int st_tfjs_list_inputs(const char *model_json, st_tfjs_input_info *out,
                        size_t cap, size_t *count) {
  if (!model_json || !count || (!out && cap))
    return st_error_set(ST_EINVAL, "tfjs: NULL argument");
  *count = 0;
  json_t *root;
  int rc = st_json_load(model_json, &root);
  if (rc)
    return rc;
  json_t *topo = json_is_object(root) ? json_object_get(root, "modelTopology")
                                      : NULL;
  json_t *nodes = topo ? json_object_get(topo, "node") : NULL;
  if (!json_is_array(nodes))
    rc = st_error_set(ST_EFORMAT, "%s: not a TF.js graph model: no "
                      "modelTopology.node array", model_json);
  for (size_t i = 0; !rc && i < json_array_size(nodes); i++) {
    json_t *n = json_array_get(nodes, i);
    json_t *op = json_object_get(n, "op"), *name = json_object_get(n, "name");
    if (!json_is_string(op) || strcmp(json_string_value(op), "Placeholder") ||
        !json_is_string(name))
      continue;
    if (*count >= cap) {
      rc = st_error_set(ST_ERANGE, "%s: more than %zu inputs", model_json,
                        cap);
      break;
    }
    st_tfjs_input_info *info = &out[(*count)++];
    if ((size_t)snprintf(info->name, sizeof info->name, "%s",
                         json_string_value(name)) >= sizeof info->name) {
      rc = st_error_set(ST_EINVAL, "%s: input name '%.40s...' is too long",
                        model_json, json_string_value(name));
      break;
    }
    info->rank = -1;
    json_t *attr = json_object_get(n, "attr");
    json_t *sa = attr ? json_object_get(attr, "shape") : NULL;
    json_t *sh = sa ? json_object_get(sa, "shape") : NULL;
    json_t *dl = sh ? json_object_get(sh, "dim") : NULL;
    if (json_is_array(dl))
      info->rank = (int)json_array_size(dl);
    else if (json_is_object(sh) && !json_object_get(sh, "unknownRank"))
      info->rank = 0;
  }
  json_decref(root);
  return rc;
}
