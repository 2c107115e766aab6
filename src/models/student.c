/* The student network: parameters, planned activations, forward, and the
 * backward pass of the trainable part (see student.h). */
#include "models/student.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

/* Tensors of the network: 11 modules, at most 10 tensors each. */
enum { STUDENT_MAX_TENSORS = 96, STUDENT_NAME_BYTES = 64 };
/* Owned activation and gradient buffers of one frame-size plan. */
enum { PLAN_MAX_BUFFERS = 160 };
/* Channel widths of the architecture (the reference's Student). */
enum { IN_CH = 3, STEM_CH = 8, OUT_CONV_CH = 32 };


typedef struct student_param {
  char name[STUDENT_NAME_BYTES]; /* state-dict name */
  st_student_module module;      /* module the tensor belongs to */
  st_tensor value;               /* the weights */
  st_tensor grad;                /* gradient (trainable only) */
  st_tensor m, v;                /* Adam moments (trainable only) */
  st_tensor best;                /* Algorithm 1 snapshot (trainable only) */
} student_param;

typedef struct conv_layer {
  int weight;          /* parameter index of the weight; bias follows it */
  st_conv2d_params p;  /* stride, padding */
} conv_layer;

/* Activations of one pre-activation residual block at the planned size. */
typedef struct block_acts {
  st_tensor p;              /* relu(bn(x)), [cin, H, W] */
  st_tensor mean, invstd;   /* BN statistics of x, [cin] */
  st_tensor t;              /* relu(conv3x3(p)), [cout, H', W'] */
  st_tensor u;              /* conv1x3(t) */
  st_tensor out;            /* shortcut + conv3x1(u) (may be a view) */
  st_tensor gout, gu, gt;   /* gradients of out, u, t */
  st_tensor gp, gtmp;       /* gradient of p, and a scratch of p's shape */
} block_acts;

typedef struct block {
  st_student_module module;
  int cin, cout, stride;
  int bn;                      /* parameter index of BN scale; shift follows */
  int has_short;               /* 1: 1x1 conv shortcut; 0: strided identity */
  conv_layer c_short, c3x3, c1x3, c3x1;
  block_acts a;
} block;

enum { B_ENC1, B_ENC2, B_ENC3, B_DEC1, B_DEC2, B_DEC3, BLOCK_COUNT };

/* One op sequence of a plan that the backend may record (CUDA graphs):
 * the same ops on the same buffers every time it runs. */
typedef struct recording {
  st_graph *graph; /* the recording, or NULL */
  int eager_runs;  /* runs without one so far */
  int refused;     /* recording failed: this plan runs it directly */
} recording;

typedef struct plan {
  int64_t h, w;                /* planned frame size; 0 = none */
  int grads;                   /* 1: gradient buffers are allocated too */
  st_tensor owned[PLAN_MAX_BUFFERS];
  int owned_count;
  st_tensor image;             /* U8 [H,W,3] in backend memory */
  st_tensor label, weight;     /* example maps [1,H,W] */
  st_tensor pred;              /* argmax U8 [1,H,W] */
  st_tensor confusion;         /* I64 confusion result of pred vs label */
  st_tensor ce_result;         /* F32 loss result of the last step */
  st_tensor x;                 /* normalised input [1,3,H,W] */
  st_tensor x1, x2;            /* stem outputs */
  st_tensor c1;                /* cat(d1, e2), e2 lives in its tail */
  st_tensor c2;                /* cat(d2, e1), e1 lives in its tail */
  st_tensor e1, e2;            /* views into c2 / c1 */
  st_tensor e3;
  st_tensor d1, d2;            /* views into c1 / c2 */
  st_tensor d3;                /* upsampled dec3 output at x1's size */
  st_tensor o1, o2;            /* out_conv1/2 outputs */
  st_tensor small_logits;      /* out_conv3(o2), [1,C,H1,W1] */
  st_tensor logits;            /* upsampled to the frame, [1,C,H,W]; made
                                  only where needed (plan_logits) */
  /* gradients */
  st_tensor g_small, g_o2, g_o1, g_d3;
  st_tensor g_c1, g_c2, g_e3, g_x2, g_x1, g_tmp_e;
  st_tensor scratch_p, scratch_t, scratch_u; /* shared by frozen blocks */
  /* Recorded sequences: the whole forward, the forward of the trainable
   * part alone, the mIoU counts, and the step's loss and backward pass. */
  recording rec_full, rec_trainable, rec_miou, rec_step;
} plan;

struct st_student {
  st_backend *be;               /* borrowed */
  st_student_options opts;
  student_param params[STUDENT_MAX_TENSORS];
  int param_count;
  conv_layer in_conv1, in_conv2, out_conv1, out_conv2, out_conv3;
  block blocks[BLOCK_COUNT];
  int trainable[ST_MOD_COUNT];  /* 1 per trainable module */
  int first_trainable;          /* lowest trainable module, ST_MOD_COUNT: none */
  int64_t adam_step;            /* Adam steps taken */
  int has_best;                 /* a snapshot exists */
  plan plan;
  int example_set;              /* set_example was called for this plan */
  int forward_valid;            /* activations match the current weights */
  /* The outputs of the frozen modules (those before first_trainable) match
   * the current image and frozen weights, so a forward may start at the
   * first trainable module: only the trainable part changes between the
   * steps of one key frame. */
  int prefix_valid;
  int recompute_frozen;         /* 1: never reuse them (the reference's way) */
  int graphs_off;               /* 1: the context records nothing */
  double forward_miou;          /* mIoU of that forward, < 0 when unknown */
};

static const char *const module_names[ST_MOD_COUNT] = {
#define ST__MOD_NAME(name) #name,
    ST_STUDENT_MODULES(ST__MOD_NAME)
#undef ST__MOD_NAME
};

static const st_student_module default_trainable[] = {
    ST_MOD_dec2, ST_MOD_dec3, ST_MOD_out_conv1, ST_MOD_out_conv2,
    ST_MOD_out_conv3};

void st_student_options_default(st_student_options *o) {
  memset(o, 0, sizeof *o);
  o->num_classes = 9;
  /* BGR order with Detectron2's pixel means, as the paper's student. */
  o->channel_order[0] = 2;
  o->channel_order[1] = 1;
  o->channel_order[2] = 0;
  o->mean[0] = 103.530f;
  o->mean[1] = 116.280f;
  o->mean[2] = 123.675f;
  o->std_[0] = o->std_[1] = o->std_[2] = 1.0f;
  o->seed = 0;
  o->adam.lr = 0.01;
  o->adam.beta1 = 0.9;
  o->adam.beta2 = 0.999;
  o->adam.eps = 1e-8;
}

const char *st_student_module_name(st_student_module m) {
  return (unsigned)m < ST_MOD_COUNT ? module_names[m] : "?";
}

int st_student_module_from_name(const char *name, st_student_module *out) {
  for (int i = 0; i < ST_MOD_COUNT; i++)
    if (strcmp(name, module_names[i]) == 0) {
      *out = (st_student_module)i;
      return ST_OK;
    }
  return st_error_set(ST_EINVAL, "unknown student module '%s'", name);
}

/* ---- parameters ---------------------------------------------------------- */

static int add_param(st_student *s, st_student_module mod, const char *name,
                     int ndim, const int64_t *shape) {
  if (s->param_count >= STUDENT_MAX_TENSORS)
    return st_error_set(ST_ERANGE, "student: too many tensors");
  student_param *p = &s->params[s->param_count];
  snprintf(p->name, sizeof p->name, "%s", name);
  p->module = mod;
  ST_TRY(st_tensor_alloc(s->be, &p->value, ST_F32, ndim, shape));
  return s->param_count++;
}

/* Adds `<prefix>.weight` [cout, cin, kh, kw] and `<prefix>.bias` [cout]. */
static int add_conv(st_student *s, st_student_module mod, const char *prefix,
                    int cin, int cout, int kh, int kw, int stride, int pad_h,
                    int pad_w, conv_layer *out) {
  char name[STUDENT_NAME_BYTES];
  const int64_t wshape[4] = {cout, cin, kh, kw};
  const int64_t bshape[1] = {cout};
  snprintf(name, sizeof name, "%s.weight", prefix);
  int w = add_param(s, mod, name, 4, wshape);
  if (w < 0)
    return w;
  snprintf(name, sizeof name, "%s.bias", prefix);
  int b = add_param(s, mod, name, 1, bshape);
  if (b < 0)
    return b;
  out->weight = w;
  out->p = (st_conv2d_params){.stride = {stride, stride},
                              .pad = {pad_h, pad_w},
                              .dilation = {1, 1},
                              .groups = 1};
  return ST_OK;
}

static int add_block(st_student *s, block *b, st_student_module mod, int cin,
                     int cout, int stride) {
  const char *m = module_names[mod];
  char name[STUDENT_NAME_BYTES];
  b->module = mod;
  b->cin = cin;
  b->cout = cout;
  b->stride = stride;
  b->has_short = cin != cout;
  const int64_t cshape[1] = {cin};
  snprintf(name, sizeof name, "%s.preact_path.0.weight", m);
  int g = add_param(s, mod, name, 1, cshape);
  if (g < 0)
    return g;
  snprintf(name, sizeof name, "%s.preact_path.0.bias", m);
  int bb = add_param(s, mod, name, 1, cshape);
  if (bb < 0)
    return bb;
  b->bn = g;
  if (b->has_short) {
    snprintf(name, sizeof name, "%s.short_path", m);
    ST_TRY(add_conv(s, mod, name, cin, cout, 1, 1, stride, 0, 0, &b->c_short));
  }
  snprintf(name, sizeof name, "%s.long_path.0", m);
  ST_TRY(add_conv(s, mod, name, cin, cout, 3, 3, stride, 1, 1, &b->c3x3));
  snprintf(name, sizeof name, "%s.long_path.2", m);
  ST_TRY(add_conv(s, mod, name, cout, cout, 1, 3, 1, 0, 1, &b->c1x3));
  snprintf(name, sizeof name, "%s.long_path.3", m);
  ST_TRY(add_conv(s, mod, name, cout, cout, 3, 1, 1, 1, 0, &b->c3x1));
  return ST_OK;
}

static int build_params(st_student *s) {
  int nc = s->opts.num_classes;
  ST_TRY(add_conv(s, ST_MOD_in_conv1, "in_conv1", IN_CH, STEM_CH, 3, 3, 2, 1, 1,
               &s->in_conv1));
  ST_TRY(add_conv(s, ST_MOD_in_conv2, "in_conv2", STEM_CH, STEM_CH, 3, 3, 2, 1,
               1, &s->in_conv2));
  static const struct {
    st_student_module mod;
    int cin, cout, stride;
  } defs[BLOCK_COUNT] = {
      [B_ENC1] = {ST_MOD_enc1, 8, 64, 2},    [B_ENC2] = {ST_MOD_enc2, 64, 64, 2},
      [B_ENC3] = {ST_MOD_enc3, 64, 128, 2},  [B_DEC1] = {ST_MOD_dec1, 128, 64, 1},
      [B_DEC2] = {ST_MOD_dec2, 128, 32, 1},  [B_DEC3] = {ST_MOD_dec3, 96, 32, 1},
  };
  for (int i = 0; i < BLOCK_COUNT; i++)
    ST_TRY(add_block(s, &s->blocks[i], defs[i].mod, defs[i].cin, defs[i].cout,
                  defs[i].stride));
  ST_TRY(add_conv(s, ST_MOD_out_conv1, "out_conv1", OUT_CONV_CH, OUT_CONV_CH, 3,
               3, 1, 1, 1, &s->out_conv1));
  ST_TRY(add_conv(s, ST_MOD_out_conv2, "out_conv2", OUT_CONV_CH, OUT_CONV_CH, 3,
               3, 1, 1, 1, &s->out_conv2));
  ST_TRY(add_conv(s, ST_MOD_out_conv3, "out_conv3", OUT_CONV_CH, nc, 1, 1, 1, 0,
               0, &s->out_conv3));
  return ST_OK;
}

/* splitmix64: a small, well-mixed seeded generator for initialisation. */
static uint64_t rng_next(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *state) {
  return ((double)(rng_next(state) >> 11) + 0.5) / 9007199254740992.0;
}

/* Kaiming-normal (fan_out, ReLU gain) conv weights, zero biases, unit BN
 * scales: the initialisation of a student that has no weight file. */
static int init_params(st_student *s) {
  uint64_t state = s->opts.seed;
  const double two_pi = 6.283185307179586;
  for (int i = 0; i < s->param_count; i++) {
    student_param *p = &s->params[i];
    int64_t n = st_tensor_numel(&p->value);
    float *host = malloc((size_t)n * sizeof *host);
    if (!host)
      return st_error_set(ST_ENOMEM, "student: init buffer");
    const char *suffix = strrchr(p->name, '.');
    int is_bn = strstr(p->name, "preact_path") != NULL;
    if (p->value.ndim == 4) {
      double fan_out =
          (double)p->value.shape[0] * p->value.shape[2] * p->value.shape[3];
      double sd = sqrt(2.0 / fan_out);
      for (int64_t k = 0; k < n; k++) {
        double u1 = rng_uniform(&state), u2 = rng_uniform(&state);
        host[k] = (float)(sd * sqrt(-2.0 * log(u1)) * cos(two_pi * u2));
      }
    } else {
      float v = (is_bn && strcmp(suffix, ".weight") == 0) ? 1.0f : 0.0f;
      for (int64_t k = 0; k < n; k++)
        host[k] = v;
    }
    int rc = st_tensor_upload(s->be, &p->value, host,
                              (size_t)n * sizeof *host);
    free(host);
    ST_TRY(rc);
  }
  return ST_OK;
}

/* ---- plans ----------------------------------------------------------------- */

/* No activation matches any more: new buffers, a new image, or weights
 * that may all have changed (a load, a state, a caller's write). Changes
 * of the trainable weights alone clear forward_valid only. */
static void forget_activations(st_student *s) {
  s->forward_valid = 0;
  s->prefix_valid = 0;
}

static void plan_free(st_student *s) {
  plan *pl = &s->plan;
  recording *recs[] = {&pl->rec_full, &pl->rec_trainable, &pl->rec_miou,
                       &pl->rec_step};
  for (size_t i = 0; i < sizeof recs / sizeof recs[0]; i++)
    st_graph_free(s->be, recs[i]->graph);
  for (int i = 0; i < pl->owned_count; i++)
    st_tensor_free(&pl->owned[i]);
  memset(pl, 0, sizeof *pl);
}

/* Runs `ops`, which enqueue the same ops on the same plan buffers every
 * time: directly the first time (buffers, algorithm choices and lazy
 * initialisation happen there), recorded the second time where the
 * backend records, and from then on as one launch of the recording, which
 * saves the per-op launch cost (dozens of small kernels in the student's
 * low-resolution blocks). A recording that fails (a call the backend
 * cannot record) or goes stale is dropped, and the ops run directly. */
static int run_recorded(st_student *s, recording *r,
                        int (*ops)(st_student *)) {
  st_backend *be = s->be;
  if (r->graph && !st_graph_valid(be, r->graph)) {
    st_graph_free(be, r->graph);
    r->graph = NULL;
  }
  if (r->graph)
    return st_graph_launch(be, r->graph);
  if (s->graphs_off || r->refused || r->eager_runs++ == 0)
    return ops(s);
  int rc = st_graph_begin(be);
  if (rc) {
    if (rc == ST_ENOTSUP)
      s->graphs_off = 1; /* this backend records nothing */
    else
      r->refused = 1;
    st_error_clear();
    return ops(s);
  }
  rc = ops(s);
  st_graph *g = NULL;
  int end_rc = st_graph_end(be, &g);
  if (rc || end_rc) {
    /* Nothing ran while recording: run the ops for real. */
    st_graph_free(be, g);
    r->refused = 1;
    st_error_clear();
    return ops(s);
  }
  r->graph = g;
  return st_graph_launch(be, g);
}

static int plan_alloc(st_student *s, st_tensor *t, st_dtype dt, int ndim,
                      const int64_t *shape) {
  plan *pl = &s->plan;
  if (pl->owned_count >= PLAN_MAX_BUFFERS)
    return st_error_set(ST_ERANGE, "student: plan buffer table full");
  st_tensor *o = &pl->owned[pl->owned_count];
  ST_TRY(st_tensor_alloc(s->be, o, dt, ndim, shape));
  pl->owned_count++;
  *t = st_tensor_view(o->data, dt, ndim, shape);
  return ST_OK;
}

static int plan_act(st_student *s, st_tensor *t, int64_t c, int64_t h,
                    int64_t w) {
  const int64_t shape[4] = {1, c, h, w};
  return plan_alloc(s, t, ST_F32, 4, shape);
}

static int plan_vec(st_student *s, st_tensor *t, int64_t c) {
  const int64_t shape[1] = {c};
  return plan_alloc(s, t, ST_F32, 1, shape);
}

/* View of channels [c0, c0+count) of an [1,C,H,W] tensor (contiguous
 * because the batch is 1). */
static st_tensor channel_view(const st_tensor *t, int64_t c0, int64_t count) {
  size_t plane = (size_t)(t->shape[2] * t->shape[3]);
  return st_tensor_view4((float *)t->data + (size_t)c0 * plane, ST_F32, 1,
                         count, t->shape[2], t->shape[3]);
}

static st_tensor vec_view(const st_tensor *t, int64_t c0, int64_t count) {
  const int64_t shape[1] = {count};
  return st_tensor_view((float *)t->data + c0, ST_F32, 1, shape);
}

static st_tensor shaped_view(const st_tensor *storage, int64_t c, int64_t h,
                             int64_t w) {
  return st_tensor_view4(storage->data, ST_F32, 1, c, h, w);
}

static int64_t conv_out(int64_t in, int k, int stride, int pad) {
  return st_conv2d_out_size(in, k, stride, pad, 1);
}

/* Whether block activations must survive until the backward pass. */
static int module_kept(const st_student *s, st_student_module m) {
  return (int)m >= s->first_trainable;
}

static int plan_block(st_student *s, block *b, int64_t h, int64_t w,
                      const st_tensor *out_storage) {
  plan *pl = &s->plan;
  block_acts *a = &b->a;
  int64_t oh = conv_out(h, 3, b->stride, 1), ow = conv_out(w, 3, b->stride, 1);
  ST_TRY(plan_vec(s, &a->mean, b->cin));
  ST_TRY(plan_vec(s, &a->invstd, b->cin));
  if (module_kept(s, b->module)) {
    ST_TRY(plan_act(s, &a->p, b->cin, h, w));
    ST_TRY(plan_act(s, &a->t, b->cout, oh, ow));
    ST_TRY(plan_act(s, &a->u, b->cout, oh, ow));
  } else {
    /* Frozen blocks before the trainable part share one scratch set: their
     * temporaries are dead once the block's output exists. */
    a->p = shaped_view(&pl->scratch_p, b->cin, h, w);
    a->t = shaped_view(&pl->scratch_t, b->cout, oh, ow);
    a->u = shaped_view(&pl->scratch_u, b->cout, oh, ow);
  }
  if (out_storage)
    a->out = *out_storage;
  else
    ST_TRY(plan_act(s, &a->out, b->cout, oh, ow));
  return ST_OK;
}

static int plan_block_grads(st_student *s, block *b) {
  block_acts *a = &b->a;
  ST_TRY(plan_act(s, &a->gout, b->cout, a->out.shape[2], a->out.shape[3]));
  ST_TRY(plan_act(s, &a->gu, b->cout, a->u.shape[2], a->u.shape[3]));
  ST_TRY(plan_act(s, &a->gt, b->cout, a->t.shape[2], a->t.shape[3]));
  ST_TRY(plan_act(s, &a->gp, b->cin, a->p.shape[2], a->p.shape[3]));
  ST_TRY(plan_act(s, &a->gtmp, b->cin, a->p.shape[2], a->p.shape[3]));
  return ST_OK;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Plans every activation for an HxW frame. */
static int plan_make(st_student *s, int64_t h, int64_t w) {
  plan_free(s);
  forget_activations(s);
  s->example_set = 0;
  plan *pl = &s->plan;
  int nc = s->opts.num_classes;
  const int64_t img_shape[3] = {h, w, 3};
  const int64_t map_shape[3] = {1, h, w};
  ST_TRY(plan_alloc(s, &pl->image, ST_U8, 3, img_shape));
  ST_TRY(plan_alloc(s, &pl->pred, ST_U8, 3, map_shape));
  const int64_t confusion_shape[1] = {(int64_t)nc * nc + ST_CONFUSION_EXTRA};
  ST_TRY(plan_alloc(s, &pl->confusion, ST_I64, 1, confusion_shape));
  const int64_t ce_shape[1] = {ST_CE_RESULT_LEN};
  ST_TRY(plan_alloc(s, &pl->ce_result, ST_F32, 1, ce_shape));
  ST_TRY(plan_act(s, &pl->x, IN_CH, h, w));
  int64_t h1 = conv_out(h, 3, 2, 1), w1 = conv_out(w, 3, 2, 1);
  int64_t h2 = conv_out(h1, 3, 2, 1), w2 = conv_out(w1, 3, 2, 1);
  int64_t he1 = conv_out(h2, 3, 2, 1), we1 = conv_out(w2, 3, 2, 1);
  int64_t he2 = conv_out(he1, 3, 2, 1), we2 = conv_out(we1, 3, 2, 1);
  int64_t he3 = conv_out(he2, 3, 2, 1), we3 = conv_out(we2, 3, 2, 1);
  ST_TRY(plan_act(s, &pl->x1, STEM_CH, h1, w1));
  ST_TRY(plan_act(s, &pl->x2, STEM_CH, h2, w2));

  /* Shared scratch for frozen blocks, sized to the largest user. */
  const int64_t bh[BLOCK_COUNT] = {h2, he1, he2, he3, he2, he1};
  const int64_t bw[BLOCK_COUNT] = {w2, we1, we2, we3, we2, we1};
  int64_t sp = 1, stt = 1;
  for (int i = 0; i < BLOCK_COUNT; i++) {
    block *b = &s->blocks[i];
    if (module_kept(s, b->module))
      continue;
    int64_t oh = conv_out(bh[i], 3, b->stride, 1);
    int64_t ow = conv_out(bw[i], 3, b->stride, 1);
    sp = max64(sp, b->cin * bh[i] * bw[i]);
    stt = max64(stt, b->cout * oh * ow);
  }
  ST_TRY(plan_act(s, &pl->scratch_p, 1, 1, sp));
  ST_TRY(plan_act(s, &pl->scratch_t, 1, 1, stt));
  ST_TRY(plan_act(s, &pl->scratch_u, 1, 1, stt));

  /* Skip tensors are written straight into the tails of the concat buffers
   * so the concatenations cost nothing. */
  const block *dec1 = &s->blocks[B_DEC1], *dec2 = &s->blocks[B_DEC2];
  ST_TRY(plan_act(s, &pl->c2, dec2->cout + s->blocks[B_ENC1].cout, he1, we1));
  ST_TRY(plan_act(s, &pl->c1, dec1->cout + s->blocks[B_ENC2].cout, he2, we2));
  pl->e1 = channel_view(&pl->c2, dec2->cout, s->blocks[B_ENC1].cout);
  pl->d2 = channel_view(&pl->c2, 0, dec2->cout);
  pl->e2 = channel_view(&pl->c1, dec1->cout, s->blocks[B_ENC2].cout);
  pl->d1 = channel_view(&pl->c1, 0, dec1->cout);

  ST_TRY(plan_block(s, &s->blocks[B_ENC1], h2, w2, &pl->e1));
  ST_TRY(plan_block(s, &s->blocks[B_ENC2], he1, we1, &pl->e2));
  ST_TRY(plan_block(s, &s->blocks[B_ENC3], he2, we2, NULL));
  pl->e3 = s->blocks[B_ENC3].a.out;
  ST_TRY(plan_block(s, &s->blocks[B_DEC1], he3, we3, NULL));
  ST_TRY(plan_block(s, &s->blocks[B_DEC2], he2, we2, NULL));
  ST_TRY(plan_block(s, &s->blocks[B_DEC3], he1, we1, NULL));
  ST_TRY(plan_act(s, &pl->d3, OUT_CONV_CH, h1, w1));
  ST_TRY(plan_act(s, &pl->o1, OUT_CONV_CH, h1, w1));
  ST_TRY(plan_act(s, &pl->o2, OUT_CONV_CH, h1, w1));
  ST_TRY(plan_act(s, &pl->small_logits, nc, h1, w1));
  pl->h = h;
  pl->w = w;
  return ST_OK;
}

/* The frame-sized logits, planned on first use: st_student_forward returns
 * them; the class map (st_argmax_resized) and the loss
 * (st_weighted_ce_resized_into) work from the small logits, so neither a
 * device nor a training step holds them. */
static int plan_logits(st_student *s) {
  plan *pl = &s->plan;
  if (pl->logits.data)
    return ST_OK;
  return plan_act(s, &pl->logits, s->opts.num_classes, pl->h, pl->w);
}

/* Gradient buffers, planned on the first training step at a size. Only
 * the tensors the backward pass of the trainable part touches. */
static int plan_grads(st_student *s) {
  plan *pl = &s->plan;
  int f = s->first_trainable;
  int nc = s->opts.num_classes;
  const st_tensor *sl = &pl->small_logits;
  ST_TRY(plan_act(s, &pl->g_small, nc, sl->shape[2], sl->shape[3]));
  ST_TRY(plan_act(s, &pl->g_o2, OUT_CONV_CH, sl->shape[2], sl->shape[3]));
  ST_TRY(plan_act(s, &pl->g_o1, OUT_CONV_CH, sl->shape[2], sl->shape[3]));
  ST_TRY(plan_act(s, &pl->g_d3, OUT_CONV_CH, sl->shape[2], sl->shape[3]));
  ST_TRY(plan_act(s, &pl->g_c2, pl->c2.shape[1], pl->c2.shape[2],
               pl->c2.shape[3]));
  ST_TRY(plan_act(s, &pl->g_c1, pl->c1.shape[1], pl->c1.shape[2],
               pl->c1.shape[3]));
  ST_TRY(plan_act(s, &pl->g_e3, pl->e3.shape[1], pl->e3.shape[2],
               pl->e3.shape[3]));
  ST_TRY(plan_act(s, &pl->g_tmp_e, pl->c2.shape[1], pl->c2.shape[2],
               pl->c2.shape[3]));
  ST_TRY(plan_act(s, &pl->g_x2, STEM_CH, pl->x2.shape[2], pl->x2.shape[3]));
  ST_TRY(plan_act(s, &pl->g_x1, STEM_CH, pl->x1.shape[2], pl->x1.shape[3]));
  for (int i = 0; i < BLOCK_COUNT; i++)
    if ((int)s->blocks[i].module >= f)
      ST_TRY(plan_block_grads(s, &s->blocks[i]));
  pl->grads = 1;
  return ST_OK;
}

static int plan_ensure(st_student *s, int64_t h, int64_t w) {
  if (h < 1 || w < 1)
    return st_error_set(ST_ESHAPE, "student: empty frame %lldx%lld",
                        (long long)h, (long long)w);
  if (s->plan.h == h && s->plan.w == w)
    return ST_OK;
  int rc = plan_make(s, h, w);
  if (rc)
    plan_free(s);
  return rc;
}

/* ---- forward --------------------------------------------------------------- */

static st_tensor *param(st_student *s, int i) { return &s->params[i].value; }

static int conv_fwd(st_student *s, const conv_layer *c, const st_tensor *x,
                    st_activation act, float beta, st_tensor *y) {
  return st_conv2d_fwd(s->be, &c->p, x, param(s, c->weight),
                       param(s, c->weight + 1), act, beta, y);
}

static int block_fwd(st_student *s, block *b, const st_tensor *x) {
  block_acts *a = &b->a;
  st_backend *be = s->be;
  ST_TRY(st_batchnorm_fwd(be, x, param(s, b->bn), param(s, b->bn + 1),
                       ST_STUDENT_BN_EPS, ST_ACT_RELU, &a->p, &a->mean,
                       &a->invstd));
  if (b->has_short)
    ST_TRY(conv_fwd(s, &b->c_short, &a->p, ST_ACT_NONE, 0.0f, &a->out));
  else
    ST_TRY(st_subsample(be, x, b->stride, &a->out));
  ST_TRY(conv_fwd(s, &b->c3x3, &a->p, ST_ACT_RELU, 0.0f, &a->t));
  ST_TRY(conv_fwd(s, &b->c1x3, &a->t, ST_ACT_NONE, 0.0f, &a->u));
  /* The residual sum is fused into the last convolution (beta = 1). */
  return conv_fwd(s, &b->c3x1, &a->u, ST_ACT_NONE, 1.0f, &a->out);
}

/* The forward's ops from module `from` on. */
static int forward_from(st_student *s, int from) {
  plan *pl = &s->plan;
  st_backend *be = s->be;
#define RUN(m) (from <= (int)ST_MOD_##m)
  if (RUN(in_conv1)) {
    ST_TRY(st_image_to_tensor(be, &pl->image, s->opts.channel_order,
                           s->opts.mean, s->opts.std_, &pl->x));
    ST_TRY(conv_fwd(s, &s->in_conv1, &pl->x, ST_ACT_NONE, 0.0f, &pl->x1));
  }
  if (RUN(in_conv2))
    ST_TRY(conv_fwd(s, &s->in_conv2, &pl->x1, ST_ACT_NONE, 0.0f, &pl->x2));
  if (RUN(enc1))
    ST_TRY(block_fwd(s, &s->blocks[B_ENC1], &pl->x2));
  if (RUN(enc2))
    ST_TRY(block_fwd(s, &s->blocks[B_ENC2], &pl->e1));
  if (RUN(enc3))
    ST_TRY(block_fwd(s, &s->blocks[B_ENC3], &pl->e2));
  if (RUN(dec1)) {
    ST_TRY(block_fwd(s, &s->blocks[B_DEC1], &pl->e3));
    ST_TRY(st_resize_bilinear_fwd(be, &s->blocks[B_DEC1].a.out, &pl->d1));
  }
  if (RUN(dec2)) {
    ST_TRY(block_fwd(s, &s->blocks[B_DEC2], &pl->c1));
    ST_TRY(st_resize_bilinear_fwd(be, &s->blocks[B_DEC2].a.out, &pl->d2));
  }
  if (RUN(dec3)) {
    ST_TRY(block_fwd(s, &s->blocks[B_DEC3], &pl->c2));
    ST_TRY(st_resize_bilinear_fwd(be, &s->blocks[B_DEC3].a.out, &pl->d3));
  }
  if (RUN(out_conv1))
    ST_TRY(conv_fwd(s, &s->out_conv1, &pl->d3, ST_ACT_NONE, 0.0f, &pl->o1));
  if (RUN(out_conv2))
    ST_TRY(conv_fwd(s, &s->out_conv2, &pl->o1, ST_ACT_NONE, 0.0f, &pl->o2));
  /* A 1x1 convolution commutes with bilinear resizing (the interpolation
   * weights sum to one, so the bias passes through unchanged): run the
   * classifier at the low resolution, and upsample C channels instead of 32
   * where the frame's size is needed: in the class map and the loss
   * (interpolated on the fly), in st_student_forward (resized). */
  if (RUN(out_conv3))
    ST_TRY(conv_fwd(s, &s->out_conv3, &pl->o2, ST_ACT_NONE, 0.0f,
                    &pl->small_logits));
#undef RUN
  return ST_OK;
}

static int forward_full_ops(st_student *s) { return forward_from(s, 0); }

static int forward_trainable_ops(st_student *s) {
  return forward_from(s, s->first_trainable);
}

/* Forward on the planned image. Frozen modules depend only on the image
 * and their own (unchanging) weights, and batch norm normalises with the
 * statistics of its input alone, so when their outputs from an earlier
 * forward of this image are still valid the pass starts at the first
 * trainable module: Algorithm 1's forwards of one key frame differ only
 * there. The result is the same as a full pass. */
static int forward_planned(st_student *s) {
  plan *pl = &s->plan;
  int from = s->prefix_valid && !s->recompute_frozen ? s->first_trainable : 0;
  ST_TRY(from == 0 ? run_recorded(s, &pl->rec_full, forward_full_ops)
                   : run_recorded(s, &pl->rec_trainable,
                                  forward_trainable_ops));
  s->forward_valid = 1;
  s->prefix_valid = 1;
  s->forward_miou = -1.0;
  return ST_OK;
}

static int check_image(const st_tensor *image) {
  if (!image || !image->data || image->dtype != ST_U8 || image->ndim != 3 ||
      image->shape[2] != 3)
    return st_error_set(ST_ESHAPE, "student: the frame must be U8 [H,W,3]");
  return ST_OK;
}

static int load_image(st_student *s, const st_tensor *image) {
  ST_TRY(check_image(image));
  ST_TRY(plan_ensure(s, image->shape[0], image->shape[1]));
  s->example_set = 0;
  forget_activations(s);
  return st_tensor_upload(s->be, &s->plan.image, image->data,
                          st_tensor_nbytes(image));
}

int st_student_forward(st_student *s, const st_tensor *image,
                       const st_tensor **logits) {
  ST_TRY(load_image(s, image));
  ST_TRY(plan_logits(s));
  ST_TRY(forward_planned(s));
  ST_TRY(st_resize_bilinear_fwd(s->be, &s->plan.small_logits, &s->plan.logits));
  *logits = &s->plan.logits;
  return ST_OK;
}

int st_student_predict(st_student *s, const st_tensor *image,
                       st_tensor *labels) {
  ST_TRY(check_image(image));
  if (!labels || labels->dtype != ST_U8 ||
      st_tensor_numel(labels) != image->shape[0] * image->shape[1])
    return st_error_set(ST_ESHAPE, "student: labels must be U8 [H,W]");
  ST_TRY(load_image(s, image));
  ST_TRY(forward_planned(s));
  ST_TRY(st_argmax_resized(s->be, &s->plan.small_logits, &s->plan.pred));
  ST_TRY(st_backend_sync(s->be));
  return st_tensor_download(s->be, &s->plan.pred, labels->data,
                            st_tensor_nbytes(labels));
}

/* ---- training ----------------------------------------------------------------- */

int st_student_set_example(st_student *s, const st_tensor *image,
                           const st_tensor *label, const st_tensor *weight) {
  ST_TRY(check_image(image));
  int64_t h = image->shape[0], w = image->shape[1];
  if (!label || label->dtype != ST_U8 || st_tensor_numel(label) != h * w)
    return st_error_set(ST_ESHAPE, "student: label must be U8 [%lld,%lld]",
                        (long long)h, (long long)w);
  if (!weight || weight->dtype != ST_F32 || st_tensor_numel(weight) != h * w)
    return st_error_set(ST_ESHAPE, "student: weight must be F32 [%lld,%lld]",
                        (long long)h, (long long)w);
  const uint8_t *lab = label->data;
  for (int64_t i = 0; i < h * w; i++)
    if (lab[i] >= s->opts.num_classes)
      return st_error_set(ST_ERANGE,
                          "student: label value %u at pixel %lld is not a "
                          "class (%d classes)",
                          lab[i], (long long)i, s->opts.num_classes);
  ST_TRY(load_image(s, image));
  plan *pl = &s->plan;
  if (!pl->label.data) {
    const int64_t map_shape[3] = {1, h, w};
    ST_TRY(plan_alloc(s, &pl->label, ST_U8, 3, map_shape));
    ST_TRY(plan_alloc(s, &pl->weight, ST_F32, 3, map_shape));
  }
  ST_TRY(st_tensor_upload(s->be, &pl->label, label->data,
                       st_tensor_nbytes(label)));
  ST_TRY(st_tensor_upload(s->be, &pl->weight, weight->data,
                       st_tensor_nbytes(weight)));
  s->example_set = 1;
  return ST_OK;
}

/* The class map of the logits and its confusion counts against the label,
 * left in the plan's result tensor. */
static int miou_ops(st_student *s) {
  plan *pl = &s->plan;
  ST_TRY(st_argmax_resized(s->be, &pl->small_logits, &pl->pred));
  return st_confusion_counts_into(s->be, &pl->pred, &pl->label,
                                  s->opts.num_classes, &pl->confusion);
}

static int forward_miou(st_student *s, double *miou) {
  plan *pl = &s->plan;
  int nc = s->opts.num_classes;
  int64_t counts[256 * 256 / 64]; /* enough for up to 32 classes on stack */
  int64_t *c = counts;
  int64_t *heap = NULL;
  if ((size_t)nc * nc > sizeof counts / sizeof counts[0]) {
    heap = malloc((size_t)nc * nc * sizeof *heap);
    if (!heap)
      return st_error_set(ST_ENOMEM, "student: confusion matrix");
    c = heap;
  }
  int rc = run_recorded(s, &pl->rec_miou, miou_ops);
  if (!rc)
    rc = st_confusion_counts_result(s->be, &pl->confusion, nc, c);
  if (!rc)
    *miou = st_miou_from_counts(c, nc);
  free(heap);
  return rc;
}

int st_student_score(st_student *s, double *miou) {
  if (!s->example_set)
    return st_error_set(ST_EINVAL, "student: score without an example");
  if (!s->forward_valid)
    ST_TRY(forward_planned(s));
  if (s->forward_miou < 0.0)
    ST_TRY(forward_miou(s, &s->forward_miou));
  *miou = s->forward_miou;
  return ST_OK;
}

static int conv_bwd(st_student *s, const conv_layer *c, const st_tensor *x,
                    const st_tensor *dy, st_tensor *dx) {
  if (s->trainable[s->params[c->weight].module])
    ST_TRY(st_conv2d_bwd_weights(s->be, &c->p, x, dy, &s->params[c->weight].grad,
                              &s->params[c->weight + 1].grad));
  if (dx)
    ST_TRY(st_conv2d_bwd_data(s->be, &c->p, dy, param(s, c->weight), dx));
  return ST_OK;
}

/* Backward of one block given the gradient of its output in a->gout. The
 * input gradient is written to `dx` channels [0, dx_head) and
 * [dx_head, cin) independently (either part NULL when not needed), so a
 * decoder block computes only the part of its concatenated input whose
 * producer needs it. */
static int block_bwd(st_student *s, block *b, const st_tensor *x,
                     st_tensor *dx_head, int64_t head_channels,
                     st_tensor *dx_tail) {
  block_acts *a = &b->a;
  st_backend *be = s->be;
  int train = s->trainable[b->module];
  ST_TRY(conv_bwd(s, &b->c3x1, &a->u, &a->gout, &a->gu));
  ST_TRY(conv_bwd(s, &b->c1x3, &a->t, &a->gu, &a->gt));
  ST_TRY(st_relu_bwd(be, &a->t, &a->gt, &a->gt));
  ST_TRY(conv_bwd(s, &b->c3x3, &a->p, &a->gt, &a->gp));
  if (b->has_short) {
    ST_TRY(conv_bwd(s, &b->c_short, &a->p, &a->gout, &a->gtmp));
    ST_TRY(st_add(be, &a->gp, &a->gtmp, &a->gp));
  }
  /* BN backward, split by channel range. */
  st_tensor *gamma = param(s, b->bn);
  st_tensor *dgamma = train ? &s->params[b->bn].grad : NULL;
  st_tensor *dbeta = train ? &s->params[b->bn + 1].grad : NULL;
  int64_t ranges[2][2] = {{0, head_channels}, {head_channels, b->cin}};
  st_tensor *dxs[2] = {dx_head, dx_tail};
  for (int r = 0; r < 2; r++) {
    int64_t c0 = ranges[r][0], n = ranges[r][1] - ranges[r][0];
    if (n <= 0 || (!dxs[r] && !train))
      continue;
    st_tensor xv = channel_view(x, c0, n), pv = channel_view(&a->p, c0, n);
    st_tensor gv = channel_view(&a->gp, c0, n);
    st_tensor gam = vec_view(gamma, c0, n), mu = vec_view(&a->mean, c0, n);
    st_tensor is = vec_view(&a->invstd, c0, n);
    st_tensor dg, db;
    if (train) {
      dg = vec_view(dgamma, c0, n);
      db = vec_view(dbeta, c0, n);
    }
    ST_TRY(st_batchnorm_bwd(be, &xv, &pv, &gv, &gam, &mu, &is, ST_ACT_RELU,
                         dxs[r], train ? &dg : NULL, train ? &db : NULL));
  }
  if (!b->has_short) {
    /* Identity shortcut x[::s, ::s]: its gradient adds into dx. */
    if (dx_head || dx_tail) {
      st_tensor tmp = shaped_view(&a->gtmp, b->cin, x->shape[2], x->shape[3]);
      ST_TRY(st_subsample_bwd(be, &a->gout, b->stride, &tmp));
      for (int r = 0; r < 2; r++) {
        int64_t c0 = ranges[r][0], n = ranges[r][1] - ranges[r][0];
        if (n <= 0 || !dxs[r])
          continue;
        st_tensor tv = channel_view(&tmp, c0, n);
        ST_TRY(st_add(be, dxs[r], &tv, dxs[r]));
      }
    }
  }
  return ST_OK;
}

/* dx views for a block whose input is the whole tensor `dx_full` (or NULL). */
static int block_bwd_simple(st_student *s, block *b, const st_tensor *x,
                            st_tensor *dx_full) {
  return block_bwd(s, b, x, dx_full, b->cin, NULL);
}

static int backward(st_student *s) {
  plan *pl = &s->plan;
  st_backend *be = s->be;
  int f = s->first_trainable;
  /* The gradient of module m's input is needed when an earlier module
   * trains; that of its output when m itself or an earlier one does. */
#define NEED_DX(m) (f < (int)(m))
#define NEED_OUT(m) (f <= (int)(m))
  block *enc1 = &s->blocks[B_ENC1], *enc2 = &s->blocks[B_ENC2];
  block *enc3 = &s->blocks[B_ENC3], *dec1 = &s->blocks[B_DEC1];
  block *dec2 = &s->blocks[B_DEC2], *dec3 = &s->blocks[B_DEC3];

  ST_TRY(conv_bwd(s, &s->out_conv3, &pl->o2, &pl->g_small,
               NEED_DX(ST_MOD_out_conv3) ? &pl->g_o2 : NULL));
  if (!NEED_DX(ST_MOD_out_conv3))
    return ST_OK;
  ST_TRY(conv_bwd(s, &s->out_conv2, &pl->o1, &pl->g_o2,
               NEED_DX(ST_MOD_out_conv2) ? &pl->g_o1 : NULL));
  if (!NEED_DX(ST_MOD_out_conv2))
    return ST_OK;
  ST_TRY(conv_bwd(s, &s->out_conv1, &pl->d3, &pl->g_o1,
               NEED_DX(ST_MOD_out_conv1) ? &pl->g_d3 : NULL));
  if (!NEED_DX(ST_MOD_out_conv1))
    return ST_OK;

  /* dec3: input c2 = cat(d2, e1). d2's producer is dec2, e1's is enc1. */
  ST_TRY(st_resize_bilinear_bwd(be, &pl->g_d3, &dec3->a.gout));
  st_tensor g_d2 = channel_view(&pl->g_c2, 0, dec2->cout);
  st_tensor g_e1 = channel_view(&pl->g_c2, dec2->cout, enc1->cout);
  ST_TRY(block_bwd(s, dec3, &pl->c2, NEED_OUT(ST_MOD_dec2) ? &g_d2 : NULL,
                dec2->cout, NEED_OUT(ST_MOD_enc1) ? &g_e1 : NULL));
  if (!NEED_DX(ST_MOD_dec3))
    return ST_OK;

  /* dec2: input c1 = cat(d1, e2). */
  ST_TRY(st_resize_bilinear_bwd(be, &g_d2, &dec2->a.gout));
  st_tensor g_d1 = channel_view(&pl->g_c1, 0, dec1->cout);
  st_tensor g_e2 = channel_view(&pl->g_c1, dec1->cout, enc2->cout);
  ST_TRY(block_bwd(s, dec2, &pl->c1, NEED_OUT(ST_MOD_dec1) ? &g_d1 : NULL,
                dec1->cout, NEED_OUT(ST_MOD_enc2) ? &g_e2 : NULL));
  if (!NEED_DX(ST_MOD_dec2))
    return ST_OK;

  ST_TRY(st_resize_bilinear_bwd(be, &g_d1, &dec1->a.gout));
  ST_TRY(block_bwd_simple(s, dec1, &pl->e3,
                       NEED_DX(ST_MOD_dec1) ? &enc3->a.gout : NULL));
  if (!NEED_DX(ST_MOD_dec1))
    return ST_OK;

  /* enc3's output e3 feeds only dec1; its input e2 also feeds dec2. */
  st_tensor tmp_e2 = shaped_view(&pl->g_tmp_e, enc2->cout, pl->e2.shape[2],
                                 pl->e2.shape[3]);
  ST_TRY(block_bwd_simple(s, enc3, &pl->e2,
                       NEED_DX(ST_MOD_enc3) ? &tmp_e2 : NULL));
  if (!NEED_DX(ST_MOD_enc3))
    return ST_OK;
  ST_TRY(st_add(be, &g_e2, &tmp_e2, &enc2->a.gout));

  st_tensor tmp_e1 = shaped_view(&pl->g_tmp_e, enc1->cout, pl->e1.shape[2],
                                 pl->e1.shape[3]);
  ST_TRY(block_bwd_simple(s, enc2, &pl->e1,
                       NEED_DX(ST_MOD_enc2) ? &tmp_e1 : NULL));
  if (!NEED_DX(ST_MOD_enc2))
    return ST_OK;
  ST_TRY(st_add(be, &g_e1, &tmp_e1, &enc1->a.gout));

  ST_TRY(block_bwd_simple(s, enc1, &pl->x2,
                       NEED_DX(ST_MOD_enc1) ? &pl->g_x2 : NULL));
  if (!NEED_DX(ST_MOD_enc1))
    return ST_OK;
  ST_TRY(conv_bwd(s, &s->in_conv2, &pl->x1, &pl->g_x2,
               NEED_DX(ST_MOD_in_conv2) ? &pl->g_x1 : NULL));
  if (!NEED_DX(ST_MOD_in_conv2))
    return ST_OK;
  return conv_bwd(s, &s->in_conv1, &pl->x, &pl->g_x1, NULL);
#undef NEED_DX
#undef NEED_OUT
}

/* The step's loss on the logits upsampled to the frame, its gradient fused
 * down to the small logits, and the backward pass. */
static int step_ops(st_student *s) {
  plan *pl = &s->plan;
  ST_TRY(st_weighted_ce_resized_into(s->be, &pl->small_logits, &pl->label,
                                     &pl->weight, &pl->ce_result,
                                     &pl->g_small));
  return backward(s);
}

int st_student_train_step(st_student *s, float *loss, double *miou) {
  if (!s->example_set)
    return st_error_set(ST_EINVAL, "student: train step without an example");
  if (s->first_trainable >= ST_MOD_COUNT)
    return st_error_set(ST_EINVAL, "student: no trainable module");
  if (!s->plan.grads)
    ST_TRY(plan_grads(s));
  if (!s->forward_valid)
    ST_TRY(forward_planned(s));
  if (miou) {
    if (s->forward_miou < 0.0)
      ST_TRY(forward_miou(s, &s->forward_miou));
    *miou = s->forward_miou;
  }
  plan *pl = &s->plan;
  /* The step enqueues everything before it reads the loss: no wait in its
   * middle, and the backward pass is queued while the device computes.
   * Adam stays outside the recording: its scalars change every step. */
  ST_TRY(run_recorded(s, &pl->rec_step, step_ops));
  s->adam_step++;
  st_tensor *values[STUDENT_MAX_TENSORS], *ms[STUDENT_MAX_TENSORS],
      *vs[STUDENT_MAX_TENSORS];
  const st_tensor *grads[STUDENT_MAX_TENSORS];
  int count = 0;
  for (int i = 0; i < s->param_count; i++) {
    student_param *p = &s->params[i];
    if (!s->trainable[p->module])
      continue;
    values[count] = &p->value;
    grads[count] = &p->grad;
    ms[count] = &p->m;
    vs[count++] = &p->v;
  }
  ST_TRY(st_adam_steps(s->be, &s->opts.adam, s->adam_step, count, values,
                       grads, ms, vs));
  s->forward_valid = 0;
  return st_weighted_ce_result(s->be, &pl->ce_result, s->opts.num_classes,
                               loss);
}

int st_student_save_best(st_student *s) {
  for (int i = 0; i < s->param_count; i++) {
    student_param *p = &s->params[i];
    if (s->trainable[p->module])
      ST_TRY(st_copy(s->be, &p->value, &p->best));
  }
  s->has_best = 1;
  return ST_OK;
}

int st_student_restore_best(st_student *s) {
  if (!s->has_best)
    return st_error_set(ST_EINVAL, "student: no snapshot to restore");
  for (int i = 0; i < s->param_count; i++) {
    student_param *p = &s->params[i];
    if (s->trainable[p->module])
      ST_TRY(st_copy(s->be, &p->best, &p->value));
  }
  s->forward_valid = 0;
  return ST_OK;
}

void st_student_reset_optimizer(st_student *s) {
  s->adam_step = 0;
  for (int i = 0; i < s->param_count; i++) {
    student_param *p = &s->params[i];
    if (p->m.data) {
      st_fill(s->be, &p->m, 0.0f);
      st_fill(s->be, &p->v, 0.0f);
    }
  }
}

static int learner_score(void *ctx, double *metric) {
  return st_student_score(ctx, metric);
}

static int learner_step(void *ctx, float *loss) {
  return st_student_train_step(ctx, loss, NULL);
}

static int learner_save_best(void *ctx) { return st_student_save_best(ctx); }

static int learner_restore_best(void *ctx) {
  return st_student_restore_best(ctx);
}

st_distill_learner st_student_learner(st_student *s) {
  return (st_distill_learner){.ctx = s,
                              .score = learner_score,
                              .step = learner_step,
                              .save_best = learner_save_best,
                              .restore_best = learner_restore_best};
}

int st_student_set_trainable(st_student *s, const st_student_module *mods,
                             int count, int full) {
  int want[ST_MOD_COUNT] = {0};
  for (int i = 0; i < ST_MOD_COUNT; i++)
    want[i] = full;
  for (int i = 0; i < count && !full; i++) {
    if ((unsigned)mods[i] >= ST_MOD_COUNT)
      return st_error_set(ST_EINVAL, "student: bad module %d", (int)mods[i]);
    want[mods[i]] = 1;
  }
  /* Free optimizer state of modules leaving the set, allocate for new ones. */
  for (int i = 0; i < s->param_count; i++) {
    student_param *p = &s->params[i];
    if (!want[p->module]) {
      st_tensor_free(&p->grad);
      st_tensor_free(&p->m);
      st_tensor_free(&p->v);
      st_tensor_free(&p->best);
      continue;
    }
    st_tensor *bufs[4] = {&p->grad, &p->m, &p->v, &p->best};
    for (int k = 0; k < 4; k++)
      if (!bufs[k]->data)
        ST_TRY(st_tensor_alloc(s->be, bufs[k], ST_F32, p->value.ndim,
                            p->value.shape));
  }
  memcpy(s->trainable, want, sizeof want);
  s->first_trainable = ST_MOD_COUNT;
  for (int i = ST_MOD_COUNT - 1; i >= 0; i--)
    if (want[i])
      s->first_trainable = i;
  s->has_best = 0;
  st_student_reset_optimizer(s);
  /* What is kept for backward depends on the set: plan again lazily. */
  plan_free(s);
  forget_activations(s);
  s->example_set = 0;
  return ST_OK;
}

int st_student_is_trainable(const st_student *s, st_student_module m) {
  return (unsigned)m < ST_MOD_COUNT && s->trainable[m];
}

/* ---- lifecycle, names, files ----------------------------------------------- */

int st_student_new(st_backend *be, const st_student_options *o,
                   st_student **out) {
  *out = NULL;
  if (o->num_classes < 2 || o->num_classes > 256)
    return st_error_set(ST_EINVAL, "student: %d classes (2..256)",
                        o->num_classes);
  st_student *s = calloc(1, sizeof *s);
  if (!s)
    return st_error_set(ST_ENOMEM, "student: out of memory");
  s->be = be;
  s->opts = *o;
  int rc = build_params(s);
  if (!rc)
    rc = init_params(s);
  if (!rc)
    rc = st_student_set_trainable(
        s, default_trainable,
        (int)(sizeof default_trainable / sizeof default_trainable[0]), 0);
  if (rc) {
    st_student_free(s);
    return rc;
  }
  *out = s;
  return ST_OK;
}

int st_student_new_from_config(st_backend *be, const st_student_config *c,
                               st_student **out) {
  st_student_options o;
  st_student_options_default(&o);
  o.num_classes = c->num_classes;
  for (int i = 0; i < 3; i++) {
    o.channel_order[i] = c->channel_order[i];
    o.mean[i] = c->mean[i];
    o.std_[i] = c->std[i];
  }
  o.seed = (uint64_t)c->seed;
  o.adam.lr = c->lr;
  st_student_module mods[ST_MOD_COUNT];
  int count = 0;
  for (int i = 0; i < c->trainable_count && count < ST_MOD_COUNT; i++)
    ST_TRY(st_student_module_from_name(c->trainable[i], &mods[count++]));
  ST_TRY(st_student_new(be, &o, out));
  int rc = st_student_set_trainable(*out, mods, count, c->trainable_full);
  if (rc) {
    st_student_free(*out);
    *out = NULL;
  }
  return rc;
}

void st_student_free(st_student *s) {
  if (!s)
    return;
  plan_free(s);
  for (int i = 0; i < s->param_count; i++) {
    student_param *p = &s->params[i];
    st_tensor_free(&p->value);
    st_tensor_free(&p->grad);
    st_tensor_free(&p->m);
    st_tensor_free(&p->v);
    st_tensor_free(&p->best);
  }
  free(s);
}

size_t st_student_tensor_count(const st_student *s) {
  return (size_t)s->param_count;
}

const char *st_student_tensor_name(const st_student *s, size_t i) {
  return i < (size_t)s->param_count ? s->params[i].name : NULL;
}

st_tensor *st_student_tensor(st_student *s, size_t i) {
  if (i >= (size_t)s->param_count)
    return NULL;
  /* The caller may write through the pointer. */
  forget_activations(s);
  return &s->params[i].value;
}

void st_student_recompute_frozen(st_student *s, int on) {
  s->recompute_frozen = on;
}

long st_student_tensor_index(const st_student *s, const char *name) {
  for (int i = 0; i < s->param_count; i++)
    if (strcmp(s->params[i].name, name) == 0)
      return i;
  return -1;
}

int64_t st_student_param_count(const st_student *s, int trainable_only) {
  int64_t n = 0;
  for (int i = 0; i < s->param_count; i++)
    if (!trainable_only || s->trainable[s->params[i].module])
      n += st_tensor_numel(&s->params[i].value);
  return n;
}

int st_student_num_classes(const st_student *s) { return s->opts.num_classes; }

int st_student_load(st_student *s, const st_safetensors *file,
                    const char *label) {
  size_t n = st_safetensors_count(file);
  for (size_t i = 0; i < n; i++) {
    const char *name = st_safetensors_name(file, i);
    if (st_student_tensor_index(s, name) < 0)
      return st_error_set(ST_EFORMAT, "%s: tensor '%s' is not a student tensor",
                          label, name);
  }
  for (int i = 0; i < s->param_count; i++) {
    student_param *p = &s->params[i];
    st_tensor host;
    int rc = st_safetensors_read(file, p->name, &host);
    if (rc == ST_ENOENT)
      return st_error_set(ST_EFORMAT, "%s: student tensor '%s' is missing",
                          label, p->name);
    ST_TRY(rc);
    char want[96], got[96];
    if (host.dtype != ST_F32 || !st_tensor_same_shape(&host, &p->value)) {
      rc = st_error_set(ST_ESHAPE, "%s: tensor '%s' is %s %s, expected F32 %s",
                        label, p->name, st_dtype_name(host.dtype),
                        st_tensor_shape_str(&host, got, sizeof got),
                        st_tensor_shape_str(&p->value, want, sizeof want));
    } else {
      rc = st_tensor_upload(s->be, &p->value, host.data,
                            st_tensor_nbytes(&host));
    }
    st_tensor_free(&host);
    ST_TRY(rc);
  }
  forget_activations(s);
  return ST_OK;
}

int st_student_save(st_student *s, const char *path) {
  st_tensor host[STUDENT_MAX_TENSORS];
  st_named_tensor named[STUDENT_MAX_TENSORS];
  int made = 0, rc = ST_OK;
  memset(host, 0, sizeof host);
  ST_TRY(st_backend_sync(s->be));
  for (; made < s->param_count; made++) {
    student_param *p = &s->params[made];
    rc = st_tensor_alloc(NULL, &host[made], ST_F32, p->value.ndim,
                         p->value.shape);
    if (!rc)
      rc = st_tensor_download(s->be, &p->value, host[made].data,
                              st_tensor_nbytes(&p->value));
    if (rc) {
      made++;
      goto done;
    }
    named[made] = (st_named_tensor){.name = p->name, .tensor = &host[made]};
  }
  rc = st_safetensors_write(path, named, (size_t)made, NULL);
done:
  for (int i = 0; i < made; i++)
    st_tensor_free(&host[i]);
  return rc;
}

/* ---- learner state ---------------------------------------------------------- */

struct st_student_state {
  int count;                         /* tensors, == the student's */
  size_t numel[STUDENT_MAX_TENSORS]; /* elements of tensor i */
  float *value[STUDENT_MAX_TENSORS]; /* host weights of tensor i */
  /* Adam moments of tensor i; NULL until the tensor was trained (a NULL
   * moment loads as zeros). */
  float *m[STUDENT_MAX_TENSORS], *v[STUDENT_MAX_TENSORS];
  int64_t adam_step;                 /* Adam steps taken */
};

void st_student_state_free(st_student_state *st) {
  if (!st)
    return;
  for (int i = 0; i < st->count; i++) {
    free(st->value[i]);
    free(st->m[i]);
    free(st->v[i]);
  }
  free(st);
}

static int state_alloc(int count, const size_t *numel,
                       st_student_state **out) {
  st_student_state *st = calloc(1, sizeof *st);
  if (!st)
    return st_error_set(ST_ENOMEM, "student state: out of memory");
  st->count = count;
  for (int i = 0; i < count; i++) {
    st->numel[i] = numel[i];
    st->value[i] = malloc(numel[i] * sizeof(float));
    if (!st->value[i]) {
      st_student_state_free(st);
      return st_error_set(ST_ENOMEM, "student state: out of memory");
    }
  }
  *out = st;
  return ST_OK;
}

int st_student_state_new(st_student *s, st_student_state **out) {
  *out = NULL;
  size_t numel[STUDENT_MAX_TENSORS];
  for (int i = 0; i < s->param_count; i++)
    numel[i] = (size_t)st_tensor_numel(&s->params[i].value);
  st_student_state *st = NULL;
  ST_TRY(state_alloc(s->param_count, numel, &st));
  for (int i = 0; i < s->param_count; i++) {
    int rc = st_tensor_download(s->be, &s->params[i].value, st->value[i],
                                numel[i] * sizeof(float));
    if (rc) {
      st_student_state_free(st);
      return rc;
    }
  }
  *out = st;
  return ST_OK;
}

int st_student_state_clone(const st_student_state *src,
                           st_student_state **out) {
  *out = NULL;
  st_student_state *st = NULL;
  ST_TRY(state_alloc(src->count, src->numel, &st));
  for (int i = 0; i < src->count; i++) {
    memcpy(st->value[i], src->value[i], src->numel[i] * sizeof(float));
    if (src->m[i]) {
      st->m[i] = malloc(src->numel[i] * sizeof(float));
      st->v[i] = malloc(src->numel[i] * sizeof(float));
      if (!st->m[i] || !st->v[i]) {
        st_student_state_free(st);
        return st_error_set(ST_ENOMEM, "student state: out of memory");
      }
      memcpy(st->m[i], src->m[i], src->numel[i] * sizeof(float));
      memcpy(st->v[i], src->v[i], src->numel[i] * sizeof(float));
    }
  }
  st->adam_step = src->adam_step;
  *out = st;
  return ST_OK;
}

static int state_check(const st_student *s, const st_student_state *st) {
  if (st->count != s->param_count)
    return st_error_set(ST_ESHAPE, "student state: %d tensors, student has %d",
                        st->count, s->param_count);
  for (int i = 0; i < s->param_count; i++)
    if (st->numel[i] != (size_t)st_tensor_numel(&s->params[i].value))
      return st_error_set(ST_ESHAPE, "student state: tensor '%s' size differs",
                          s->params[i].name);
  return ST_OK;
}

int st_student_state_load(st_student *s, const st_student_state *st) {
  ST_TRY(state_check(s, st));
  for (int i = 0; i < s->param_count; i++) {
    student_param *p = &s->params[i];
    size_t bytes = st->numel[i] * sizeof(float);
    ST_TRY(st_tensor_upload(s->be, &p->value, st->value[i], bytes));
    if (!s->trainable[p->module])
      continue;
    if (st->m[i]) {
      ST_TRY(st_tensor_upload(s->be, &p->m, st->m[i], bytes));
      ST_TRY(st_tensor_upload(s->be, &p->v, st->v[i], bytes));
    } else {
      ST_TRY(st_fill(s->be, &p->m, 0.0f));
      ST_TRY(st_fill(s->be, &p->v, 0.0f));
    }
  }
  s->adam_step = st->adam_step;
  s->has_best = 0;
  forget_activations(s);
  return ST_OK;
}

int st_student_state_save(st_student *s, st_student_state *st) {
  ST_TRY(state_check(s, st));
  for (int i = 0; i < s->param_count; i++) {
    student_param *p = &s->params[i];
    if (!s->trainable[p->module])
      continue; /* frozen tensors are exactly what load put there */
    size_t bytes = st->numel[i] * sizeof(float);
    if (!st->m[i]) {
      st->m[i] = malloc(bytes);
      st->v[i] = malloc(bytes);
      if (!st->m[i] || !st->v[i]) {
        free(st->m[i]);
        free(st->v[i]);
        st->m[i] = st->v[i] = NULL;
        return st_error_set(ST_ENOMEM, "student state: out of memory");
      }
    }
    ST_TRY(st_tensor_download(s->be, &p->value, st->value[i], bytes));
    ST_TRY(st_tensor_download(s->be, &p->m, st->m[i], bytes));
    ST_TRY(st_tensor_download(s->be, &p->v, st->v[i], bytes));
  }
  st->adam_step = s->adam_step;
  return ST_OK;
}

void st_student_state_reset_optimizer(st_student_state *st) {
  for (int i = 0; i < st->count; i++) {
    free(st->m[i]);
    free(st->v[i]);
    st->m[i] = st->v[i] = NULL;
  }
  st->adam_step = 0;
}

size_t st_student_state_count(const st_student_state *st) {
  return (size_t)st->count;
}

float *st_student_state_values(st_student_state *st, size_t i,
                               size_t *numel) {
  if (i >= (size_t)st->count)
    return NULL;
  if (numel)
    *numel = st->numel[i];
  return st->value[i];
}

int64_t st_student_state_adam_step(const st_student_state *st) {
  return st->adam_step;
}

size_t st_student_state_bytes(const st_student_state *st) {
  size_t total = sizeof *st;
  for (int i = 0; i < st->count; i++)
    total += st->numel[i] * sizeof(float) * (st->m[i] ? 3 : 1);
  return total;
}
