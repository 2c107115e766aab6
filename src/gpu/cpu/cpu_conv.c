/* Convolutions of the CPU backend, computed by oneDNN.
 *
 * Callers hand us contiguous F32 NCHW host tensors, while oneDNN computes
 * fastest in blocked layouts of its own choosing. So every distinct
 * convolution (kind, shapes, stride, padding, dilation, groups, and the fused
 * bias / ReLU / residual add) gets one cache entry holding the primitive that
 * oneDNN built with format "any", and, for each argument whose chosen layout
 * differs from ours, a reorder primitive between the two. The entry is built
 * on the first call; later calls with the same shapes only bind pointers and
 * execute, so the student's steady state allocates nothing.
 *
 * Reordered copies and scratchpads live in a few buffers shared by every
 * entry of the context: one per argument slot (input-shaped, weight-shaped,
 * bias-shaped, output-shaped) plus one scratchpad, each grown to the largest
 * need when an entry is built. Sharing is safe because a context runs one op
 * at a time and a reordered copy is always rewritten before it is read;
 * oneDNN keeps the padded channels of every output it writes at zero, so a
 * blocked layout never sees stale padding.
 *
 * The cache (engine, stream, entries, buffers) belongs to one st_cpu_backend:
 * its first convolution creates it, st__cpu_conv_cache_free releases it with
 * the context. Like the context, it is not thread-safe.
 *
 * oneDNN 2.x (Debian) and 3.x differ in how memory descriptors are held and
 * how primitive descriptors are made; the few helpers under "version layer"
 * hide that, everything else is common.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <oneapi/dnnl/dnnl_version.h>

#include "base/error.h"
#include "gpu/conv_cache.h"
#include "gpu/cpu/cpu_impl.h"

/* Entries kept per context. The student needs about 30 forward and 20
 * backward convolutions; past this bound the least recently used entry is
 * dropped (and rebuilt if it is needed again). */
#define ST_CPU_CONV_CACHE_MAX_ENTRIES 96

/* Argument slots, named by the geometry of the tensor they hold:
 *            fwd         bwd_data      bwd_weights
 *   SRC      x (in)      dx (out)      x (in)
 *   WEI      w (in)      w (in)        dw (out)
 *   BIA      bias (in)   -             db (out)
 *   DST      y (out)     dy (in)       dy (in)
 * With beta = 1 the forward also reads y (the residual it adds). */
enum { SLOT_SRC, SLOT_WEI, SLOT_BIA, SLOT_DST, SLOT_COUNT };

/* A memory object with the data pointer it is currently bound to, so that
 * binding the same pointer again costs nothing. */
typedef struct bound_mem {
  dnnl_memory_t mem; /* NULL when unused */
  void *ptr;         /* handle last set */
} bound_mem;

/* One primitive and the memory object through which it sees the shared
 * scratchpad buffer. */
typedef struct conv_exec {
  dnnl_primitive_t prim; /* NULL when unused */
  bound_mem scratch;     /* .mem NULL when the primitive needs none */
} conv_exec;

/* One argument of the convolution. */
typedef struct conv_port {
  int arg;              /* DNNL_ARG_* of the convolution; 0: slot unused */
  int reads, writes;    /* the convolution reads / writes the tensor */
  bound_mem user;       /* the caller's tensor, plain layout */
  bound_mem compute;    /* oneDNN's layout in the slot buffer; .mem NULL
                           when that layout is the plain one */
  conv_exec to_compute; /* reorder user -> compute, before the convolution */
  conv_exec to_user;    /* reorder compute -> user, after it */
} conv_port;

typedef struct conv_entry {
  st__conv_cached cached;        /* key and last use: first, for the cache */
  dnnl_primitive_desc_t hint_pd; /* forward hint of a backward pd, kept
                                    alive as long as the pd refers to it */
  dnnl_primitive_desc_t pd;      /* the convolution's primitive desc */
  conv_exec conv;                /* the convolution */
  conv_port port[SLOT_COUNT];    /* its arguments */
} conv_entry;

/* A growable host buffer shared by all entries. */
typedef struct conv_buffer {
  void *ptr;    /* ST_HOST_ALIGN_BYTES aligned, or NULL */
  size_t bytes; /* capacity */
} conv_buffer;

struct st_cpu_conv_cache {
  dnnl_engine_t engine;                                  /* the CPU engine */
  dnnl_stream_t stream;                                  /* in-order stream */
  dnnl_primitive_attr_t reorder_attr;                    /* user scratchpad */
  st__conv_cached *entry[ST_CPU_CONV_CACHE_MAX_ENTRIES]; /* built ones */
  int count;                                             /* entries in use */
  uint64_t tick;                                         /* calls so far */
  conv_buffer slot_buf[SLOT_COUNT]; /* reordered copies, one per slot */
  conv_buffer scratch;              /* scratchpad of every primitive */
};

/* ---- error reporting ---------------------------------------------------- */

static int dnnl_fail(const char *call, dnnl_status_t s) {
  return st_error_set(ST_EBACKEND, "cpu conv: %s failed: %s", call,
                      dnnl_status2str(s));
}

/* Calls a oneDNN function; on failure records its name and status in rc and
 * jumps to the function's `err` label. */
#define ST__DNNL(fn, ...)                                                      \
  do {                                                                         \
    dnnl_status_t st__s = fn(__VA_ARGS__);                                     \
    if (st__s != dnnl_success) {                                               \
      rc = dnnl_fail(#fn, st__s);                                              \
      goto err;                                                                \
    }                                                                          \
  } while (0)

#define ST__CHECK(expr)                                                        \
  do {                                                                         \
    rc = (expr);                                                               \
    if (rc != ST_OK)                                                           \
      goto err;                                                                \
  } while (0)

/* ---- version layer ------------------------------------------------------ */

#if DNNL_VERSION_MAJOR >= 3
/* 3.x: memory descriptors are handles created and destroyed explicitly. */
typedef dnnl_memory_desc_t md_owned;
typedef const_dnnl_memory_desc_t md_ref;
#define MD_REF(m) (m)
#else
/* 2.x: memory descriptors are plain structs passed by address. */
typedef dnnl_memory_desc_t md_owned;
typedef const dnnl_memory_desc_t *md_ref;
#define MD_REF(m) (&(m))
#endif

static int md_make(md_owned *md, int ndims, const dnnl_dims_t dims,
                   dnnl_format_tag_t tag) {
  int rc = ST_OK;
#if DNNL_VERSION_MAJOR >= 3
  ST__DNNL(dnnl_memory_desc_create_with_tag, md, ndims, dims, dnnl_f32, tag);
#else
  ST__DNNL(dnnl_memory_desc_init_by_tag, md, ndims, dims, dnnl_f32, tag);
#endif
err:
  return rc;
}

static void md_release(md_owned *md) {
#if DNNL_VERSION_MAJOR >= 3
  if (*md)
    dnnl_memory_desc_destroy(*md);
  *md = NULL;
#else
  (void)md;
#endif
}

static int mem_bind(struct st_cpu_conv_cache *c, bound_mem *m, void *ptr) {
  int rc = ST_OK;
  if (!m->mem || m->ptr == ptr)
    return ST_OK;
#if DNNL_VERSION_MAJOR >= 3
  (void)c;
  ST__DNNL(dnnl_memory_set_data_handle, m->mem, ptr);
#else
  /* With our stream, so that zero-padding of a blocked layout (2.x pads on
   * every new handle) runs on it rather than on a service stream. */
  ST__DNNL(dnnl_memory_set_data_handle_v2, m->mem, ptr, c->stream);
#endif
  m->ptr = ptr;
err:
  return rc;
}

static int post_ops_append(dnnl_post_ops_t ops, const st__conv_key *k) {
  int rc = ST_OK;
  /* Order matters: y = act(conv + bias + beta * y). */
#if DNNL_VERSION_MAJOR >= 3
  if (k->beta)
    ST__DNNL(dnnl_post_ops_append_sum, ops, 1.0f, 0, dnnl_data_type_undef);
  if (k->act == ST_ACT_RELU)
    ST__DNNL(dnnl_post_ops_append_eltwise, ops, dnnl_eltwise_relu, 0.0f, 0.0f);
#else
  if (k->beta)
    ST__DNNL(dnnl_post_ops_append_sum, ops, 1.0f);
  if (k->act == ST_ACT_RELU)
    ST__DNNL(dnnl_post_ops_append_eltwise, ops, 1.0f, dnnl_eltwise_relu, 0.0f,
             0.0f);
#endif
err:
  return rc;
}

/* Geometry of a convolution in oneDNN's terms. */
typedef struct conv_geom {
  dnnl_dims_t strides;
  dnnl_dims_t dilates; /* oneDNN counts skipped taps: ours - 1 */
  dnnl_dims_t pad;     /* symmetric: used for both padding_l and padding_r */
} conv_geom;

/* Creates a convolution primitive descriptor of the given kind and
 * algorithm, and gives oneDNN's status (dnnl_unimplemented: no
 * implementation of that algorithm for these shapes here). md[] are the
 * slot descriptors (md[SLOT_BIA] NULL when there is no bias); for the
 * backward kinds `hint` is the forward pd oneDNN wants as a hint; `prop`
 * matters to the forward kind only. */
static dnnl_status_t
conv_pd_create(struct st_cpu_conv_cache *c, dnnl_primitive_desc_t *pd,
               st__conv_kind kind, dnnl_alg_kind_t alg, dnnl_prop_kind_t prop,
               const md_ref md[SLOT_COUNT], const conv_geom *g,
               const_dnnl_primitive_attr_t attr,
               const_dnnl_primitive_desc_t hint) {
#if DNNL_VERSION_MAJOR >= 3
  switch (kind) {
  case ST__CONV_FWD:
    return dnnl_convolution_forward_primitive_desc_create(
        pd, c->engine, prop, alg, md[SLOT_SRC], md[SLOT_WEI], md[SLOT_BIA],
        md[SLOT_DST], g->strides, g->dilates, g->pad, g->pad, attr);
  case ST__CONV_BWD_DATA:
    return dnnl_convolution_backward_data_primitive_desc_create(
        pd, c->engine, alg, md[SLOT_SRC], md[SLOT_WEI], md[SLOT_DST],
        g->strides, g->dilates, g->pad, g->pad, hint, attr);
  case ST__CONV_BWD_WEIGHTS:
    return dnnl_convolution_backward_weights_primitive_desc_create(
        pd, c->engine, alg, md[SLOT_SRC], md[SLOT_WEI], md[SLOT_BIA],
        md[SLOT_DST], g->strides, g->dilates, g->pad, g->pad, hint, attr);
  }
  return dnnl_invalid_arguments;
#else
  dnnl_convolution_desc_t cd;
  dnnl_status_t s = dnnl_invalid_arguments;
  switch (kind) {
  case ST__CONV_FWD:
    s = dnnl_dilated_convolution_forward_desc_init(
        &cd, prop, alg, md[SLOT_SRC], md[SLOT_WEI], md[SLOT_BIA], md[SLOT_DST],
        g->strides, g->dilates, g->pad, g->pad);
    break;
  case ST__CONV_BWD_DATA:
    s = dnnl_dilated_convolution_backward_data_desc_init(
        &cd, alg, md[SLOT_SRC], md[SLOT_WEI], md[SLOT_DST], g->strides,
        g->dilates, g->pad, g->pad);
    break;
  case ST__CONV_BWD_WEIGHTS:
    s = dnnl_dilated_convolution_backward_weights_desc_init(
        &cd, alg, md[SLOT_SRC], md[SLOT_WEI], md[SLOT_BIA], md[SLOT_DST],
        g->strides, g->dilates, g->pad, g->pad);
    break;
  }
  if (s != dnnl_success)
    return s;
  return dnnl_primitive_desc_create(pd, &cd, attr, c->engine, hint);
#endif
}

/* ---- shared buffers ----------------------------------------------------- */

static int buffer_reserve(conv_buffer *b, size_t bytes) {
  if (bytes <= b->bytes)
    return ST_OK;
  size_t rounded = (bytes + ST_HOST_ALIGN_BYTES - 1) / ST_HOST_ALIGN_BYTES *
                   ST_HOST_ALIGN_BYTES;
  void *p = aligned_alloc(ST_HOST_ALIGN_BYTES, rounded);
  if (!p)
    return st_error_set(ST_ENOMEM, "cpu conv: cannot allocate %zu bytes",
                        rounded);
  /* Zeroed once so that padding of a blocked layout starts out clean. */
  memset(p, 0, rounded);
  free(b->ptr);
  b->ptr = p;
  b->bytes = rounded;
  return ST_OK;
}

/* ---- entries ------------------------------------------------------------ */

static void exec_release(conv_exec *x) {
  if (x->prim)
    dnnl_primitive_destroy(x->prim);
  if (x->scratch.mem)
    dnnl_memory_destroy(x->scratch.mem);
  memset(x, 0, sizeof *x);
}

static void entry_free(conv_entry *e) {
  if (!e)
    return;
  for (int s = 0; s < SLOT_COUNT; s++) {
    conv_port *p = &e->port[s];
    exec_release(&p->to_compute);
    exec_release(&p->to_user);
    if (p->user.mem)
      dnnl_memory_destroy(p->user.mem);
    if (p->compute.mem)
      dnnl_memory_destroy(p->compute.mem);
  }
  exec_release(&e->conv);
  if (e->pd)
    dnnl_primitive_desc_destroy(e->pd);
  if (e->hint_pd)
    dnnl_primitive_desc_destroy(e->hint_pd);
  free(e);
}

/* Creates the primitive of pd and, when it needs a scratchpad, a memory
 * object for it backed by the shared scratch buffer (grown to fit). */
static int exec_create(struct st_cpu_conv_cache *c,
                       const_dnnl_primitive_desc_t pd, conv_exec *x) {
  int rc = ST_OK;
  ST__DNNL(dnnl_primitive_create, &x->prim, pd);
  md_ref smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
  if (!smd)
    return st_error_set(ST_EBACKEND, "cpu conv: scratchpad query failed");
  size_t bytes = dnnl_memory_desc_get_size(smd);
  if (bytes) {
    ST__CHECK(buffer_reserve(&c->scratch, bytes));
    ST__DNNL(dnnl_memory_create, &x->scratch.mem, smd, c->engine,
             DNNL_MEMORY_NONE);
  }
err:
  return rc;
}

static int reorder_create(struct st_cpu_conv_cache *c, md_ref from, md_ref to,
                          conv_exec *x) {
  int rc = ST_OK;
  dnnl_primitive_desc_t rpd = NULL;
  ST__DNNL(dnnl_reorder_primitive_desc_create, &rpd, from, c->engine, to,
           c->engine, c->reorder_attr);
  ST__CHECK(exec_create(c, rpd, x));
err:
  if (rpd)
    dnnl_primitive_desc_destroy(rpd);
  return rc;
}

/* The DNNL_ARG_* of each slot for a kind (0: slot unused). */
static int slot_arg(st__conv_kind kind, int slot, int has_bias) {
  static const int args[3][SLOT_COUNT] = {
      [ST__CONV_FWD] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_BIAS,
                        DNNL_ARG_DST},
      [ST__CONV_BWD_DATA] = {DNNL_ARG_DIFF_SRC, DNNL_ARG_WEIGHTS, 0,
                             DNNL_ARG_DIFF_DST},
      [ST__CONV_BWD_WEIGHTS] = {DNNL_ARG_SRC, DNNL_ARG_DIFF_WEIGHTS,
                                DNNL_ARG_DIFF_BIAS, DNNL_ARG_DIFF_DST},
  };
  if (slot == SLOT_BIA && !has_bias)
    return 0;
  return args[kind][slot];
}

/* Whether the convolution writes the tensor of a slot (otherwise it reads
 * it; the forward output with beta = 1 is both). */
static int slot_is_output(st__conv_kind kind, int slot) {
  switch (kind) {
  case ST__CONV_FWD:
    return slot == SLOT_DST;
  case ST__CONV_BWD_DATA:
    return slot == SLOT_SRC;
  case ST__CONV_BWD_WEIGHTS:
    return slot == SLOT_WEI || slot == SLOT_BIA;
  }
  return 0;
}

static _Atomic int winograd_allowed = 1; /* test hook, cpu_impl.h */

void st__cpu_conv_allow_winograd(int allowed) { winograd_allowed = allowed; }

/* Output pixels (per image and channel) from which the forward and the
 * data gradient ask for Winograd. Its fixed cost per call (transforming
 * the weights) only pays on large planes: measured per shape with oneDNN
 * 2.6 on AVX-512, reorders included, the student's forwards gain from
 * 27,648 pixels up (1.4 against 1.6 ms at 144x192, 9.8 against 14.0 ms
 * at 360x640), are even at 14,400 and lose below (1.9 against 0.4 ms at
 * 23x40 with 128 to 64 channels); its data gradients gain from 1,728
 * pixels up and are even at 432. */
#define ST_CPU_WINOGRAD_FWD_PIXELS 16384
#define ST_CPU_WINOGRAD_BWD_DATA_PIXELS 1024

/* The algorithm of a convolution (docs/performance.md). The forward and
 * the data gradient ask for Winograd on planes of at least the pixels
 * above; oneDNN implements it for 3x3 stride-1 convolutions with enough
 * channels, with errors as small as the direct one's. The weight gradient
 * lets oneDNN choose (it takes Winograd for the student's 360x640 layers);
 * asking for Winograd in every weight gradient moved partial distillation
 * outside the reference's tolerance. */
static dnnl_alg_kind_t conv_alg(const st__conv_key *k) {
  if (!winograd_allowed)
    return dnnl_convolution_direct;
  switch ((st__conv_kind)k->kind) {
  case ST__CONV_FWD:
    return k->oh * k->ow >= ST_CPU_WINOGRAD_FWD_PIXELS
               ? dnnl_convolution_winograd
               : dnnl_convolution_direct;
  case ST__CONV_BWD_DATA:
    return k->h * k->w >= ST_CPU_WINOGRAD_BWD_DATA_PIXELS
               ? dnnl_convolution_winograd
               : dnnl_convolution_direct;
  case ST__CONV_BWD_WEIGHTS:
    break;
  }
  return dnnl_convolution_auto;
}

/* conv_pd_create with `alg`, or direct where oneDNN has no implementation
 * of that algorithm for these shapes. */
static int conv_pd_pick(struct st_cpu_conv_cache *c, dnnl_primitive_desc_t *pd,
                        st__conv_kind kind, dnnl_alg_kind_t alg,
                        dnnl_prop_kind_t prop, const md_ref md[SLOT_COUNT],
                        const conv_geom *g, const_dnnl_primitive_attr_t attr,
                        const_dnnl_primitive_desc_t hint) {
  dnnl_status_t s = conv_pd_create(c, pd, kind, alg, prop, md, g, attr, hint);
  if (s == dnnl_unimplemented && alg != dnnl_convolution_direct)
    s = conv_pd_create(c, pd, kind, dnnl_convolution_direct, prop, md, g, attr,
                       hint);
  return s == dnnl_success
             ? ST_OK
             : dnnl_fail("creating the convolution primitive descriptor", s);
}

/* Creates e->pd (and, for the backward kinds, the forward hint it needs,
 * of the same algorithm) for the requested slot layouts. */
static int entry_make_pd(struct st_cpu_conv_cache *c, conv_entry *e,
                         const st__conv_key *k, const md_ref want[SLOT_COUNT],
                         const conv_geom *g, const_dnnl_primitive_attr_t attr) {
  int rc = ST_OK;
  const st__conv_kind kind = (st__conv_kind)k->kind;
  const dnnl_alg_kind_t alg = conv_alg(k);
  if (kind == ST__CONV_FWD)
    return conv_pd_pick(c, &e->pd, kind, alg, dnnl_forward_inference, want, g,
                        attr, NULL);
  /* The backward passes want the forward pd they belong to as a hint. */
  md_ref fwd[SLOT_COUNT] = {
      want[SLOT_SRC], want[SLOT_WEI],
      kind == ST__CONV_BWD_WEIGHTS ? want[SLOT_BIA] : NULL, want[SLOT_DST]};
  ST__CHECK(conv_pd_pick(c, &e->hint_pd, ST__CONV_FWD, alg,
                         dnnl_forward_training, fwd, g, NULL, NULL));
  ST__CHECK(conv_pd_pick(c, &e->pd, kind, alg, dnnl_forward_training, want, g,
                         attr, e->hint_pd));
err:
  return rc;
}

/* 1 when oneDNN could only offer its naive reference implementation. */
static int pd_is_reference(const_dnnl_primitive_desc_t pd) {
  const char *impl = NULL;
  if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) !=
          dnnl_success ||
      !impl)
    return 0;
  return strncmp(impl, "ref", strlen("ref")) == 0;
}

/* Builds every primitive and memory object of one convolution. */
static int entry_build(struct st_cpu_conv_cache *c, const st__conv_key *k,
                       conv_entry *e) {
  int rc = ST_OK;
  st__conv_kind kind = (st__conv_kind)k->kind;
  int has_bias = (int)k->has_bias;
  md_owned plain[SLOT_COUNT], any[SLOT_COUNT];
  memset(plain, 0, sizeof plain);
  memset(any, 0, sizeof any);
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t ops = NULL;

  /* Our layouts: NCHW activations, [Cout, Cin/g, KH, KW] weights, which is
   * exactly goihw once the group is split out of Cout. */
  const dnnl_dims_t src_dims = {k->n, k->cin, k->h, k->w};
  const dnnl_dims_t dst_dims = {k->n, k->cout, k->oh, k->ow};
  const dnnl_dims_t bia_dims = {k->cout};
  dnnl_dims_t wei_dims;
  int wei_ndims;
  dnnl_format_tag_t wei_tag;
  if (k->groups > 1) {
    wei_ndims = 5;
    wei_dims[0] = k->groups;
    wei_dims[1] = k->cout / k->groups;
    wei_dims[2] = k->cin / k->groups;
    wei_dims[3] = k->kh;
    wei_dims[4] = k->kw;
    wei_tag = dnnl_goihw;
  } else {
    wei_ndims = 4;
    wei_dims[0] = k->cout;
    wei_dims[1] = k->cin;
    wei_dims[2] = k->kh;
    wei_dims[3] = k->kw;
    wei_tag = dnnl_oihw;
  }
  ST__CHECK(md_make(&plain[SLOT_SRC], 4, src_dims, dnnl_nchw));
  ST__CHECK(md_make(&plain[SLOT_WEI], wei_ndims, wei_dims, wei_tag));
  ST__CHECK(md_make(&plain[SLOT_BIA], 1, bia_dims, dnnl_x));
  ST__CHECK(md_make(&plain[SLOT_DST], 4, dst_dims, dnnl_nchw));
  /* oneDNN picks the compute layouts; the bias is a vector either way. */
  ST__CHECK(md_make(&any[SLOT_SRC], 4, src_dims, dnnl_format_tag_any));
  ST__CHECK(md_make(&any[SLOT_WEI], wei_ndims, wei_dims, dnnl_format_tag_any));
  ST__CHECK(md_make(&any[SLOT_BIA], 1, bia_dims, dnnl_x));
  ST__CHECK(md_make(&any[SLOT_DST], 4, dst_dims, dnnl_format_tag_any));

  conv_geom g;
  memset(&g, 0, sizeof g);
  for (int i = 0; i < 2; i++) {
    g.strides[i] = k->stride[i];
    g.dilates[i] = k->dilation[i] - 1;
    g.pad[i] = k->pad[i];
  }

  ST__DNNL(dnnl_primitive_attr_create, &attr);
  ST__DNNL(dnnl_primitive_attr_set_scratchpad_mode, attr,
           dnnl_scratchpad_mode_user);
  if (kind == ST__CONV_FWD && (k->beta || k->act != ST_ACT_NONE)) {
    ST__DNNL(dnnl_post_ops_create, &ops);
    ST__CHECK(post_ops_append(ops, k));
    ST__DNNL(dnnl_primitive_attr_set_post_ops, attr, ops);
  }

  /* A dense 1x1 convolution is one GEMM over NCHW as it lies: measured at
   * the student's shapes, oneDNN's plain-layout GEMM beats its blocked
   * kernels plus the two activation reorders by 1.5-4x. Every other
   * convolution computes in the layout oneDNN prefers. Should the plain
   * request only find oneDNN's slow reference code, fall back as well. */
  int plain_io = k->kh == 1 && k->kw == 1 && k->groups == 1;
  md_ref want[SLOT_COUNT] = {
      plain_io ? MD_REF(plain[SLOT_SRC]) : MD_REF(any[SLOT_SRC]),
      MD_REF(any[SLOT_WEI]), has_bias ? MD_REF(any[SLOT_BIA]) : NULL,
      plain_io ? MD_REF(plain[SLOT_DST]) : MD_REF(any[SLOT_DST])};
  ST__CHECK(entry_make_pd(c, e, k, want, &g, attr));
  if (plain_io && pd_is_reference(e->pd)) {
    dnnl_primitive_desc_destroy(e->pd);
    e->pd = NULL;
    if (e->hint_pd)
      dnnl_primitive_desc_destroy(e->hint_pd);
    e->hint_pd = NULL;
    want[SLOT_SRC] = MD_REF(any[SLOT_SRC]);
    want[SLOT_DST] = MD_REF(any[SLOT_DST]);
    ST__CHECK(entry_make_pd(c, e, k, want, &g, attr));
  }
  ST__CHECK(exec_create(c, e->pd, &e->conv));

  for (int s = 0; s < SLOT_COUNT; s++) {
    conv_port *p = &e->port[s];
    p->arg = slot_arg(kind, s, has_bias);
    if (!p->arg)
      continue;
    p->writes = slot_is_output(kind, s);
    p->reads = !p->writes || (kind == ST__CONV_FWD && k->beta);
    md_ref chosen =
        dnnl_primitive_desc_query_md(e->pd, dnnl_query_exec_arg_md, p->arg);
    if (!chosen)
      ST__CHECK(st_error_set(
          ST_EBACKEND, "cpu conv: no memory desc for argument %d", p->arg));
    ST__DNNL(dnnl_memory_create, &p->user.mem, MD_REF(plain[s]), c->engine,
             DNNL_MEMORY_NONE);
    if (dnnl_memory_desc_equal(chosen, MD_REF(plain[s])))
      continue;
    ST__CHECK(
        buffer_reserve(&c->slot_buf[s], dnnl_memory_desc_get_size(chosen)));
    ST__DNNL(dnnl_memory_create, &p->compute.mem, chosen, c->engine,
             DNNL_MEMORY_NONE);
    if (p->reads)
      ST__CHECK(reorder_create(c, MD_REF(plain[s]), chosen, &p->to_compute));
    if (p->writes)
      ST__CHECK(reorder_create(c, chosen, MD_REF(plain[s]), &p->to_user));
  }
  e->cached.key = *k;

err:
  if (ops)
    dnnl_post_ops_destroy(ops);
  if (attr)
    dnnl_primitive_attr_destroy(attr);
  for (int s = 0; s < SLOT_COUNT; s++) {
    md_release(&plain[s]);
    md_release(&any[s]);
  }
  return rc;
}

static int exec_run(struct st_cpu_conv_cache *c, conv_exec *x,
                    dnnl_exec_arg_t *args, int nargs) {
  int rc = ST_OK;
  if (x->scratch.mem) {
    ST__CHECK(mem_bind(c, &x->scratch, c->scratch.ptr));
    args[nargs].arg = DNNL_ARG_SCRATCHPAD;
    args[nargs].memory = x->scratch.mem;
    nargs++;
  }
  ST__DNNL(dnnl_primitive_execute, x->prim, c->stream, nargs, args);
err:
  return rc;
}

static int reorder_run(struct st_cpu_conv_cache *c, conv_exec *x,
                       dnnl_memory_t from, dnnl_memory_t to) {
  dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
  return exec_run(c, x, args, 2);
}

/* Runs an entry on the caller's tensors (ptr[slot], NULL for unused slots). */
static int entry_run(struct st_cpu_conv_cache *c, conv_entry *e,
                     void *const ptr[SLOT_COUNT]) {
  int rc = ST_OK;
  dnnl_exec_arg_t args[SLOT_COUNT + 1];
  int nargs = 0;
  for (int s = 0; s < SLOT_COUNT; s++) {
    conv_port *p = &e->port[s];
    if (!p->arg)
      continue;
    ST__CHECK(mem_bind(c, &p->user, ptr[s]));
    ST__CHECK(mem_bind(c, &p->compute, c->slot_buf[s].ptr));
    args[nargs].arg = p->arg;
    args[nargs].memory = p->compute.mem ? p->compute.mem : p->user.mem;
    nargs++;
  }
  for (int s = 0; s < SLOT_COUNT; s++) {
    conv_port *p = &e->port[s];
    if (p->to_compute.prim)
      ST__CHECK(reorder_run(c, &p->to_compute, p->user.mem, p->compute.mem));
  }
  ST__CHECK(exec_run(c, &e->conv, args, nargs));
  for (int s = 0; s < SLOT_COUNT; s++) {
    conv_port *p = &e->port[s];
    if (p->to_user.prim)
      ST__CHECK(reorder_run(c, &p->to_user, p->compute.mem, p->user.mem));
  }
  ST__DNNL(dnnl_stream_wait, c->stream);
err:
  return rc;
}

/* ---- the cache ---------------------------------------------------------- */

void st__cpu_conv_cache_free(st_cpu_backend *cpu) {
  if (!cpu || !cpu->conv)
    return;
  struct st_cpu_conv_cache *c = cpu->conv;
  for (int i = 0; i < c->count; i++)
    entry_free((conv_entry *)c->entry[i]);
  if (c->reorder_attr)
    dnnl_primitive_attr_destroy(c->reorder_attr);
  if (c->stream)
    dnnl_stream_destroy(c->stream);
  if (c->engine)
    dnnl_engine_destroy(c->engine);
  for (int s = 0; s < SLOT_COUNT; s++)
    free(c->slot_buf[s].ptr);
  free(c->scratch.ptr);
  free(c);
  cpu->conv = NULL;
}

static int cache_open(st_cpu_backend *cpu, struct st_cpu_conv_cache **out) {
  int rc = ST_OK;
  if (cpu->conv) {
    *out = cpu->conv;
    return ST_OK;
  }
  struct st_cpu_conv_cache *c = calloc(1, sizeof *c);
  if (!c)
    return st_error_set(ST_ENOMEM, "cpu conv: out of memory");
  cpu->conv = c; /* so that the error path frees whatever was made */
  ST__DNNL(dnnl_engine_create, &c->engine, dnnl_cpu, 0);
  ST__DNNL(dnnl_stream_create, &c->stream, c->engine,
           dnnl_stream_default_flags);
  ST__DNNL(dnnl_primitive_attr_create, &c->reorder_attr);
  ST__DNNL(dnnl_primitive_attr_set_scratchpad_mode, c->reorder_attr,
           dnnl_scratchpad_mode_user);
  *out = c;
  return ST_OK;
err:
  st__cpu_conv_cache_free(cpu);
  return rc;
}

/* Finds the entry for k, building it (and evicting the least recently used
 * one when the cache is full) on a miss. */
static int cache_get(struct st_cpu_conv_cache *c, const st__conv_key *k,
                     conv_entry **out) {
  st__conv_cached *hit = st__conv_cache_find(c->entry, c->count, k);
  if (hit) {
    *out = (conv_entry *)hit;
    return ST_OK;
  }
  conv_entry *e = calloc(1, sizeof *e);
  if (!e)
    return st_error_set(ST_ENOMEM, "cpu conv: out of memory");
  int rc = entry_build(c, k, e);
  if (rc) {
    entry_free(e);
    return rc;
  }
  int slot =
      st__conv_cache_slot(c->entry, c->count, ST_CPU_CONV_CACHE_MAX_ENTRIES);
  if (slot < c->count)
    entry_free((conv_entry *)c->entry[slot]);
  else
    c->count++;
  c->entry[slot] = &e->cached;
  *out = e;
  return ST_OK;
}

static int conv_run(st_backend *be, const st__conv_key *k,
                    void *const ptr[SLOT_COUNT]) {
  st_cpu_backend *cpu = st__cpu(be);
  /* oneDNN's OpenMP runtime sizes its team from the calling thread's
   * max-threads setting, which another library may have changed. */
  if (omp_get_max_threads() != cpu->threads)
    omp_set_num_threads(cpu->threads);
  struct st_cpu_conv_cache *c = NULL;
  int rc = cache_open(cpu, &c);
  if (rc)
    return rc;
  conv_entry *e = NULL;
  rc = cache_get(c, k, &e);
  if (rc)
    return rc;
  e->cached.last_use = ++c->tick;
  return entry_run(c, e, ptr);
}

/* ---- the ops ------------------------------------------------------------ */

int st__cpu_conv2d_fwd(st_backend *be, const st_conv2d_params *p,
                       const st_tensor *x, const st_tensor *w,
                       const st_tensor *bias, st_activation act, float beta,
                       st_tensor *y) {
  st__conv_key k;
  st__conv_key_init(&k, ST__CONV_FWD, p, x, w, y);
  k.has_bias = bias != NULL;
  k.act = act;
  k.beta = beta != 0.0f;
  void *const ptr[SLOT_COUNT] = {x->data, w->data, bias ? bias->data : NULL,
                                 y->data};
  return conv_run(be, &k, ptr);
}

int st__cpu_conv2d_bwd_data(st_backend *be, const st_conv2d_params *p,
                            const st_tensor *dy, const st_tensor *w,
                            st_tensor *dx) {
  st__conv_key k;
  st__conv_key_init(&k, ST__CONV_BWD_DATA, p, dx, w, dy);
  void *const ptr[SLOT_COUNT] = {dx->data, w->data, NULL, dy->data};
  return conv_run(be, &k, ptr);
}

int st__cpu_conv2d_bwd_weights(st_backend *be, const st_conv2d_params *p,
                               const st_tensor *x, const st_tensor *dy,
                               st_tensor *dw, st_tensor *db) {
  st__conv_key k;
  st__conv_key_init(&k, ST__CONV_BWD_WEIGHTS, p, x, dw, dy);
  k.has_bias = db != NULL;
  void *const ptr[SLOT_COUNT] = {x->data, dw->data, db ? db->data : NULL,
                                 dy->data};
  return conv_run(be, &k, ptr);
}
