/* Public op wrappers: argument checks shared by every backend, then one
 * dispatch through the context's op table. */
#include "gpu/backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/error.h"
#include "gpu/backend_impl.h"

int st_backend_kind_from_name(const char *name, st_backend_kind *out) {
  if (strcmp(name, "cpu") == 0)
    *out = ST_BACKEND_CPU;
  else if (strcmp(name, "cuda") == 0)
    *out = ST_BACKEND_CUDA;
  else if (strcmp(name, "auto") == 0)
    *out = ST_BACKEND_AUTO;
  else
    return st_error_set(ST_EINVAL,
                        "unknown backend '%s' (expected cpu, cuda or auto)",
                        name);
  return ST_OK;
}

/* Fault injection, for testing what a server does when its device dies:
 * with ST_TEST_LOSE_DEVICE=PATH in the environment, every context of the
 * process behaves as one whose device is lost from the moment a file PATH
 * exists: each op, copy and wait fails with ST_EBACKEND, as a CUDA call
 * after a kernel fault does, and st_backend_check says ST_ENODEV. Read once
 * per process, when the first context is made; unset (always, outside
 * tests), it costs one branch per op. */
static pthread_once_t lose_device_once = PTHREAD_ONCE_INIT;
static const char *lose_device_path;

static void lose_device_init(void) {
  const char *p = getenv("ST_TEST_LOSE_DEVICE");
  lose_device_path = p && *p ? p : NULL;
}

static int injected_loss(const st_backend *be) {
  struct stat sb;
  if (!lose_device_path || stat(lose_device_path, &sb) != 0)
    return ST_OK;
  return st_error_set(ST_EBACKEND, "%s: injected device fault (%s exists)",
                      be->ops->name, lose_device_path);
}

static int backend_cuda_new(const st_backend_options *opts, st_backend **out) {
#ifdef ST_HAVE_CUDA
  return st__backend_cuda_new(opts, out);
#else
  (void)opts;
  *out = NULL;
  return st_error_set(ST_ENODEV, "this build has no CUDA backend (ST_CUDA)");
#endif
}

int st_backend_new(const st_backend_options *opts, st_backend **out) {
  *out = NULL;
  pthread_once(&lose_device_once, lose_device_init);
  switch (opts->kind) {
  case ST_BACKEND_CPU:
    return st__backend_cpu_new(opts, out);
  case ST_BACKEND_CUDA:
    return backend_cuda_new(opts, out);
  case ST_BACKEND_AUTO: {
    int rc = backend_cuda_new(opts, out);
    if (rc == ST_OK)
      return rc;
    fprintf(stderr, "shadowtutor: CUDA backend unavailable (%s), using the CPU\n",
            st_error_detail());
    return st__backend_cpu_new(opts, out);
  }
  }
  return st_error_set(ST_EINVAL, "unknown backend kind %d", (int)opts->kind);
}

void st_backend_free(st_backend *be) {
  if (be)
    be->ops->free(be);
}

const char *st_backend_name(const st_backend *be) { return be->ops->name; }
st_backend_kind st_backend_get_kind(const st_backend *be) {
  return be->ops->kind;
}
int st_backend_is_host(const st_backend *be) { return be->ops->host_memory; }

/* Points the calling thread at the context's device (see the bind slot). */
static int backend_bind(st_backend *be) {
  ST_TRY(injected_loss(be));
  return be->ops->bind ? be->ops->bind(be) : ST_OK;
}

int st_backend_alloc(st_backend *be, size_t bytes, void **out) {
  int rc = backend_bind(be);
  return rc ? rc : be->ops->alloc(be, bytes, out);
}

void st_backend_release(st_backend *be, void *ptr) {
  if (ptr)
    be->ops->release(be, ptr);
}

int st_tensor_upload(st_backend *be, st_tensor *dst, const void *host,
                     size_t bytes) {
  if (bytes != st_tensor_nbytes(dst))
    return st_error_set(ST_ESHAPE, "upload: %zu bytes into a %zu-byte tensor",
                        bytes, st_tensor_nbytes(dst));
  int rc = backend_bind(be);
  return rc ? rc : be->ops->upload(be, dst->data, host, bytes);
}

int st_tensor_download(st_backend *be, const st_tensor *src, void *host,
                       size_t bytes) {
  if (bytes != st_tensor_nbytes(src))
    return st_error_set(ST_ESHAPE,
                        "download: %zu bytes from a %zu-byte tensor", bytes,
                        st_tensor_nbytes(src));
  int rc = backend_bind(be);
  return rc ? rc : be->ops->download(be, host, src->data, bytes);
}

int st_backend_sync(st_backend *be) {
  int rc = backend_bind(be);
  return rc || !be->ops->sync ? rc : be->ops->sync(be);
}

int st_backend_check(st_backend *be) {
  if (backend_bind(be)) {
    /* The detail line is the buffer st_error_set writes: copy it first. */
    char why[256];
    snprintf(why, sizeof why, "%s", st_error_detail());
    return st_error_set(ST_ENODEV, "%s: device lost: %s", be->ops->name, why);
  }
  return be->ops->check ? be->ops->check(be) : ST_OK;
}

void st_backend_flush_subnormals(st_backend *be) {
  if (be->ops->flush_subnormals)
    be->ops->flush_subnormals(be);
}

void st_backend_get_stats(const st_backend *be, st_backend_stats *out) {
  memset(out, 0, sizeof *out);
  if (be->ops->stats)
    be->ops->stats(be, out);
}

int st_event_new(st_backend *be, st_event **out) {
  *out = NULL;
  if (be->ops->event_new)
    return be->ops->event_new(be, out);
  st_event *ev = calloc(1, sizeof *ev);
  if (!ev)
    return st_error_set(ST_ENOMEM, "event: out of memory");
  *out = ev;
  return ST_OK;
}

int st_event_record(st_backend *be, st_event *ev) {
  int rc = backend_bind(be);
  return rc || !be->ops->event_record ? rc : be->ops->event_record(be, ev);
}

int st_backend_wait_event(st_backend *waiter, st_event *ev) {
  int rc = backend_bind(waiter);
  return rc || !waiter->ops->event_wait ? rc
                                        : waiter->ops->event_wait(waiter, ev);
}

void st_event_free(st_event *ev) {
  if (!ev)
    return;
  if (ev->ops && ev->ops->event_free)
    ev->ops->event_free(ev);
  else
    free(ev);
}

/* ST_ENOTSUP where this context records nothing. */
static int graphs_supported(const st_backend *be) {
  if (!be->ops->graph_begin)
    return st_error_set(ST_ENOTSUP, "%s backend records no op sequences",
                        be->ops->name);
  if (be->opts.graphs_off)
    return st_error_set(ST_ENOTSUP, "%s context: op recordings are off",
                        be->ops->name);
  return ST_OK;
}

int st_graph_begin(st_backend *be) {
  ST_TRY(graphs_supported(be));
  int rc = backend_bind(be);
  return rc ? rc : be->ops->graph_begin(be);
}

/* The recording is always ended, even when the bind fails (an injected
 * fault): a context left recording would record every later op and run
 * none. */
int st_graph_end(st_backend *be, st_graph **out) {
  *out = NULL;
  ST_TRY(graphs_supported(be));
  int rc = backend_bind(be);
  int end_rc = be->ops->graph_end(be, out);
  if (rc && *out && be->ops->graph_free) {
    be->ops->graph_free(be, *out);
    *out = NULL;
  }
  return rc ? rc : end_rc;
}

int st_graph_valid(st_backend *be, const st_graph *g) {
  return g && be->ops->graph_valid && be->ops->graph_valid(be, g);
}

int st_graph_launch(st_backend *be, st_graph *g) {
  if (!g || !be->ops->graph_launch)
    return st_error_set(ST_EINVAL, "graph_launch: no graph");
  int rc = backend_bind(be);
  return rc ? rc : be->ops->graph_launch(be, g);
}

void st_graph_free(st_backend *be, st_graph *g) {
  if (g && be->ops->graph_free)
    be->ops->graph_free(be, g);
}

/* ---- argument checks ---------------------------------------------------- */

static int check_tensor(const char *op, const char *what, const st_tensor *t,
                        st_dtype dt, int ndim) {
  if (!t || !t->data)
    return st_error_set(ST_EINVAL, "%s: %s is missing", op, what);
  if (t->dtype != dt)
    return st_error_set(ST_EDTYPE, "%s: %s is %s, expected %s", op, what,
                        st_dtype_name(t->dtype), st_dtype_name(dt));
  if (t->ndim != ndim)
    return st_error_set(ST_ESHAPE, "%s: %s has rank %d, expected %d", op, what,
                        t->ndim, ndim);
  return ST_OK;
}

static int check_same(const char *op, const char *what, const st_tensor *a,
                      const st_tensor *b) {
  if (st_tensor_same_shape(a, b))
    return ST_OK;
  char sa[96], sb[96];
  return st_error_set(ST_ESHAPE, "%s: %s shapes %s and %s differ", op, what,
                      st_tensor_shape_str(a, sa, sizeof sa),
                      st_tensor_shape_str(b, sb, sizeof sb));
}

static int check_shape4(const char *op, const char *what, const st_tensor *t,
                        int64_t n, int64_t c, int64_t h, int64_t w) {
  if (t->shape[0] == n && t->shape[1] == c && t->shape[2] == h &&
      t->shape[3] == w)
    return ST_OK;
  char s[96];
  return st_error_set(ST_ESHAPE, "%s: %s is %s, expected [%lld,%lld,%lld,%lld]",
                      op, what, st_tensor_shape_str(t, s, sizeof s),
                      (long long)n, (long long)c, (long long)h, (long long)w);
}

static int check_vec(const char *op, const char *what, const st_tensor *t,
                     int64_t n) {
  int rc = check_tensor(op, what, t, ST_F32, 1);
  if (rc)
    return rc;
  if (t->shape[0] != n)
    return st_error_set(ST_ESHAPE, "%s: %s has %lld entries, expected %lld",
                        op, what, (long long)t->shape[0], (long long)n);
  return ST_OK;
}

#define ST__TRY(expr)                                                          \
  do {                                                                         \
    int st__rc = (expr);                                                       \
    if (st__rc)                                                                \
      return st__rc;                                                           \
  } while (0)

/* ---- op profile ----------------------------------------------------------
 * With ST_PROFILE=1 in the environment every op's wall time is summed per
 * op name (after a backend sync, so asynchronous backends are charged
 * correctly) and a table is printed on stderr at exit. Off by default: the
 * only cost then is one branch per op. */
enum { PROFILE_MAX_OPS = 64 };

typedef struct op_profile {
  const char *name; /* op slot name */
  long calls;       /* number of calls */
  double total_ms;  /* summed wall time */
} op_profile;

static pthread_mutex_t profile_lock = PTHREAD_MUTEX_INITIALIZER;
static op_profile profile[PROFILE_MAX_OPS];
static int profile_count;
static int profile_state = -1; /* -1 unknown, 0 off, 1 on */

static int cmp_profile(const void *a, const void *b) {
  double x = ((const op_profile *)a)->total_ms;
  double y = ((const op_profile *)b)->total_ms;
  return (x < y) - (x > y);
}

static void profile_report(void) {
  pthread_mutex_lock(&profile_lock);
  qsort(profile, (size_t)profile_count, sizeof profile[0], cmp_profile);
  double all = 0.0;
  for (int i = 0; i < profile_count; i++)
    all += profile[i].total_ms;
  fprintf(stderr, "%-22s %8s %11s %9s %6s\n", "op", "calls", "total ms",
          "ms/call", "share");
  for (int i = 0; i < profile_count; i++)
    fprintf(stderr, "%-22s %8ld %11.1f %9.3f %5.1f%%\n", profile[i].name,
            profile[i].calls, profile[i].total_ms,
            profile[i].total_ms / (double)profile[i].calls,
            all > 0.0 ? 100.0 * profile[i].total_ms / all : 0.0);
  pthread_mutex_unlock(&profile_lock);
}

static int profile_enabled(void) {
  if (profile_state < 0) {
    pthread_mutex_lock(&profile_lock);
    if (profile_state < 0) {
      const char *v = getenv("ST_PROFILE");
      profile_state = v && *v && strcmp(v, "0") != 0;
      if (profile_state)
        atexit(profile_report);
    }
    pthread_mutex_unlock(&profile_lock);
  }
  return profile_state;
}

static double profile_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void profile_add(const char *name, double ms) {
  pthread_mutex_lock(&profile_lock);
  int i = 0;
  while (i < profile_count && strcmp(profile[i].name, name) != 0)
    i++;
  if (i == profile_count && profile_count < PROFILE_MAX_OPS)
    profile[profile_count++] = (op_profile){.name = name};
  if (i < profile_count) {
    profile[i].calls++;
    profile[i].total_ms += ms;
  }
  pthread_mutex_unlock(&profile_lock);
}

/* Ops never call other public ops, so one start time per thread is enough. */
static _Thread_local double op_started_ms;
/* Status of the bind before the current op (lets ST__SLOT stay an
 * expression). */
static _Thread_local int begin_rc;

static int profile_begin(st_backend *be) {
  if (profile_enabled())
    op_started_ms = profile_now_ms();
  return backend_bind(be);
}

static int profile_end(st_backend *be, const char *name, int rc) {
  if (!profile_enabled())
    return rc;
  if (!rc && be->ops->sync)
    rc = be->ops->sync(be);
  profile_add(name, profile_now_ms() - op_started_ms);
  return rc;
}

/* Dispatch to a slot: bind the context's device (and start the profile
 * clock), call the slot, stop the clock. The conditional operator orders
 * the three. */
#define ST__SLOT(be, slot, ...)                                                \
  (!(be)->ops->slot                                                            \
       ? st_error_set(ST_ENOTSUP, "%s backend has no op '%s'",                 \
                      (be)->ops->name, #slot)                                  \
   : (begin_rc = profile_begin(be))                                          \
       ? begin_rc                                                              \
       : profile_end((be), #slot, (be)->ops->slot(__VA_ARGS__)))

int64_t st_conv2d_out_size(int64_t in, int64_t kernel, int stride, int pad,
                           int dilation) {
  int64_t span = (kernel - 1) * dilation + 1;
  return (in + 2 * (int64_t)pad - span) / stride + 1;
}

static int check_conv(const char *op, const st_conv2d_params *p,
                      const st_tensor *x, const st_tensor *w,
                      const st_tensor *y) {
  ST__TRY(check_tensor(op, "x", x, ST_F32, 4));
  ST__TRY(check_tensor(op, "w", w, ST_F32, 4));
  ST__TRY(check_tensor(op, "y", y, ST_F32, 4));
  for (int i = 0; i < 2; i++)
    if (p->stride[i] < 1 || p->pad[i] < 0 || p->dilation[i] < 1)
      return st_error_set(ST_EINVAL, "%s: bad stride/pad/dilation", op);
  int64_t cin = x->shape[1], cout = w->shape[0];
  if (p->groups < 1 || cin % p->groups || cout % p->groups ||
      w->shape[1] * p->groups != cin)
    return st_error_set(ST_ESHAPE,
                        "%s: %lld input channels, %lld output channels, "
                        "weight in-channels %lld, groups %d do not fit",
                        op, (long long)cin, (long long)cout,
                        (long long)w->shape[1], p->groups);
  int64_t oh = st_conv2d_out_size(x->shape[2], w->shape[2], p->stride[0],
                                  p->pad[0], p->dilation[0]);
  int64_t ow = st_conv2d_out_size(x->shape[3], w->shape[3], p->stride[1],
                                  p->pad[1], p->dilation[1]);
  if (oh < 1 || ow < 1)
    return st_error_set(ST_ESHAPE, "%s: kernel larger than padded input", op);
  return check_shape4(op, "y", y, x->shape[0], cout, oh, ow);
}

int st_conv2d_fwd(st_backend *be, const st_conv2d_params *p,
                  const st_tensor *x, const st_tensor *w,
                  const st_tensor *bias, st_activation act, float beta,
                  st_tensor *y) {
  ST__TRY(check_conv("conv2d_fwd", p, x, w, y));
  if (bias)
    ST__TRY(check_vec("conv2d_fwd", "bias", bias, w->shape[0]));
  if (beta != 0.0f && beta != 1.0f)
    return st_error_set(ST_EINVAL, "conv2d_fwd: beta must be 0 or 1");
  return ST__SLOT(be, conv2d_fwd, be, p, x, w, bias, act, beta, y);
}

int st_conv2d_bwd_data(st_backend *be, const st_conv2d_params *p,
                       const st_tensor *dy, const st_tensor *w,
                       st_tensor *dx) {
  ST__TRY(check_conv("conv2d_bwd_data", p, dx, w, dy));
  return ST__SLOT(be, conv2d_bwd_data, be, p, dy, w, dx);
}

int st_conv2d_bwd_weights(st_backend *be, const st_conv2d_params *p,
                          const st_tensor *x, const st_tensor *dy,
                          st_tensor *dw, st_tensor *db) {
  ST__TRY(check_conv("conv2d_bwd_weights", p, x, dw, dy));
  if (db)
    ST__TRY(check_vec("conv2d_bwd_weights", "db", db, dw->shape[0]));
  return ST__SLOT(be, conv2d_bwd_weights, be, p, x, dy, dw, db);
}

int st_batchnorm_fwd(st_backend *be, const st_tensor *x, const st_tensor *gamma,
                     const st_tensor *beta_, double eps, st_activation act,
                     st_tensor *y, st_tensor *mean, st_tensor *invstd) {
  const char *op = "batchnorm_fwd";
  ST__TRY(check_tensor(op, "x", x, ST_F32, 4));
  ST__TRY(check_tensor(op, "y", y, ST_F32, 4));
  ST__TRY(check_same(op, "x/y", x, y));
  int64_t c = x->shape[1];
  ST__TRY(check_vec(op, "gamma", gamma, c));
  ST__TRY(check_vec(op, "beta", beta_, c));
  ST__TRY(check_vec(op, "mean", mean, c));
  ST__TRY(check_vec(op, "invstd", invstd, c));
  if (!(eps > 0.0))
    return st_error_set(ST_EINVAL, "%s: eps must be positive", op);
  return ST__SLOT(be, batchnorm_fwd, be, x, gamma, beta_, eps, act, y, mean,
                  invstd);
}

int st_batchnorm_bwd(st_backend *be, const st_tensor *x, const st_tensor *y,
                     const st_tensor *dy, const st_tensor *gamma,
                     const st_tensor *mean, const st_tensor *invstd,
                     st_activation act, st_tensor *dx, st_tensor *dgamma,
                     st_tensor *dbeta) {
  const char *op = "batchnorm_bwd";
  ST__TRY(check_tensor(op, "x", x, ST_F32, 4));
  ST__TRY(check_tensor(op, "y", y, ST_F32, 4));
  ST__TRY(check_tensor(op, "dy", dy, ST_F32, 4));
  ST__TRY(check_same(op, "x/y", x, y));
  ST__TRY(check_same(op, "x/dy", x, dy));
  int64_t c = x->shape[1];
  ST__TRY(check_vec(op, "gamma", gamma, c));
  ST__TRY(check_vec(op, "mean", mean, c));
  ST__TRY(check_vec(op, "invstd", invstd, c));
  if (dx) {
    ST__TRY(check_tensor(op, "dx", dx, ST_F32, 4));
    ST__TRY(check_same(op, "x/dx", x, dx));
  }
  if (dgamma)
    ST__TRY(check_vec(op, "dgamma", dgamma, c));
  if (dbeta)
    ST__TRY(check_vec(op, "dbeta", dbeta, c));
  return ST__SLOT(be, batchnorm_bwd, be, x, y, dy, gamma, mean, invstd, act,
                  dx, dgamma, dbeta);
}

static int check_unary(const char *op, const st_tensor *a, const st_tensor *b) {
  if (!a || !b || !a->data || !b->data)
    return st_error_set(ST_EINVAL, "%s: missing tensor", op);
  if (a->dtype != ST_F32 || b->dtype != ST_F32)
    return st_error_set(ST_EDTYPE, "%s: tensors must be F32", op);
  return check_same(op, "operand", a, b);
}

int st_relu_fwd(st_backend *be, const st_tensor *x, st_tensor *y) {
  ST__TRY(check_unary("relu_fwd", x, y));
  return ST__SLOT(be, relu_fwd, be, x, y);
}

int st_relu_bwd(st_backend *be, const st_tensor *y, const st_tensor *dy,
                st_tensor *dx) {
  ST__TRY(check_unary("relu_bwd", y, dy));
  ST__TRY(check_unary("relu_bwd", y, dx));
  return ST__SLOT(be, relu_bwd, be, y, dy, dx);
}

int st_add(st_backend *be, const st_tensor *a, const st_tensor *b,
           st_tensor *y) {
  ST__TRY(check_unary("add", a, b));
  ST__TRY(check_unary("add", a, y));
  return ST__SLOT(be, add, be, a, b, y);
}

int st_concat_channels(st_backend *be, const st_tensor *a, const st_tensor *b,
                       st_tensor *y) {
  const char *op = "concat_channels";
  ST__TRY(check_tensor(op, "a", a, ST_F32, 4));
  ST__TRY(check_tensor(op, "b", b, ST_F32, 4));
  ST__TRY(check_tensor(op, "y", y, ST_F32, 4));
  ST__TRY(check_shape4(op, "b", b, a->shape[0], b->shape[1], a->shape[2],
                       a->shape[3]));
  ST__TRY(check_shape4(op, "y", y, a->shape[0], a->shape[1] + b->shape[1],
                       a->shape[2], a->shape[3]));
  return ST__SLOT(be, concat_channels, be, a, b, y);
}

int st_split_channels(st_backend *be, const st_tensor *dy, st_tensor *da,
                      st_tensor *db) {
  const char *op = "split_channels";
  ST__TRY(check_tensor(op, "dy", dy, ST_F32, 4));
  if (!da && !db)
    return ST_OK;
  int64_t ca = -1, cb = -1;
  if (da) {
    ST__TRY(check_tensor(op, "da", da, ST_F32, 4));
    ca = da->shape[1];
  }
  if (db) {
    ST__TRY(check_tensor(op, "db", db, ST_F32, 4));
    cb = db->shape[1];
  }
  if (ca < 0)
    ca = dy->shape[1] - cb;
  if (cb < 0)
    cb = dy->shape[1] - ca;
  if (ca < 0 || cb < 0 || ca + cb != dy->shape[1])
    return st_error_set(ST_ESHAPE, "%s: channel counts do not add up", op);
  if (da)
    ST__TRY(check_shape4(op, "da", da, dy->shape[0], ca, dy->shape[2],
                         dy->shape[3]));
  if (db)
    ST__TRY(check_shape4(op, "db", db, dy->shape[0], cb, dy->shape[2],
                         dy->shape[3]));
  return ST__SLOT(be, split_channels, be, dy, da, db);
}

static int check_subsample(const char *op, const st_tensor *big,
                           const st_tensor *small, int stride) {
  ST__TRY(check_tensor(op, "input", big, ST_F32, 4));
  ST__TRY(check_tensor(op, "output", small, ST_F32, 4));
  if (stride < 1)
    return st_error_set(ST_EINVAL, "%s: stride %d", op, stride);
  return check_shape4(op, "subsampled", small, big->shape[0], big->shape[1],
                      (big->shape[2] + stride - 1) / stride,
                      (big->shape[3] + stride - 1) / stride);
}

int st_subsample(st_backend *be, const st_tensor *x, int stride,
                 st_tensor *y) {
  ST__TRY(check_subsample("subsample", x, y, stride));
  return ST__SLOT(be, subsample, be, x, stride, y);
}

int st_subsample_bwd(st_backend *be, const st_tensor *dy, int stride,
                     st_tensor *dx) {
  ST__TRY(check_subsample("subsample_bwd", dx, dy, stride));
  return ST__SLOT(be, subsample_bwd, be, dy, stride, dx);
}

static int check_resize(const char *op, const st_tensor *small_or_in,
                        const st_tensor *out) {
  ST__TRY(check_tensor(op, "input", small_or_in, ST_F32, 4));
  ST__TRY(check_tensor(op, "output", out, ST_F32, 4));
  if (small_or_in->shape[0] != out->shape[0] ||
      small_or_in->shape[1] != out->shape[1])
    return st_error_set(ST_ESHAPE, "%s: batch or channels differ", op);
  if (st_tensor_numel(small_or_in) == 0 || st_tensor_numel(out) == 0)
    return st_error_set(ST_ESHAPE, "%s: empty tensor", op);
  return ST_OK;
}

int st_resize_bilinear_fwd(st_backend *be, const st_tensor *x, st_tensor *y) {
  ST__TRY(check_resize("resize_bilinear_fwd", x, y));
  return ST__SLOT(be, resize_bilinear_fwd, be, x, y);
}

int st_resize_bilinear_bwd(st_backend *be, const st_tensor *dy,
                           st_tensor *dx) {
  ST__TRY(check_resize("resize_bilinear_bwd", dx, dy));
  return ST__SLOT(be, resize_bilinear_bwd, be, dy, dx);
}

static int check_label_map(const char *op, const char *what,
                           const st_tensor *map, st_dtype dt,
                           const st_tensor *logits) {
  ST__TRY(check_tensor(op, what, map, dt, 3));
  if (map->shape[0] != logits->shape[0] || map->shape[1] != logits->shape[2] ||
      map->shape[2] != logits->shape[3])
    return st_error_set(ST_ESHAPE, "%s: %s does not match the logits' N,H,W",
                        op, what);
  return ST_OK;
}

/* Logits over 1..256 classes (a class index fits a U8 label). */
static int check_classes(const char *op, const st_tensor *logits) {
  if (logits->shape[1] < 1 || logits->shape[1] > 256)
    return st_error_set(ST_ESHAPE, "%s: %lld classes (1..256 supported)", op,
                        (long long)logits->shape[1]);
  return ST_OK;
}

/* A cross-entropy's result tensor, and its gradient shaped like the logits
 * when there is one. */
static int check_ce_outputs(const char *op, const st_tensor *logits,
                            const st_tensor *result, const st_tensor *dlogits) {
  if (dlogits) {
    ST__TRY(check_tensor(op, "dlogits", dlogits, ST_F32, 4));
    ST__TRY(check_same(op, "logits/dlogits", logits, dlogits));
  }
  ST__TRY(check_tensor(op, "result", result, ST_F32, 1));
  if (result->shape[0] != ST_CE_RESULT_LEN)
    return st_error_set(ST_ESHAPE, "%s: result must be F32 [%d]", op,
                        ST_CE_RESULT_LEN);
  return ST_OK;
}

int st_weighted_ce_into(st_backend *be, const st_tensor *logits,
                        const st_tensor *label, const st_tensor *weight,
                        st_tensor *result, st_tensor *dlogits) {
  const char *op = "weighted_ce";
  ST__TRY(check_tensor(op, "logits", logits, ST_F32, 4));
  ST__TRY(check_label_map(op, "label", label, ST_U8, logits));
  ST__TRY(check_label_map(op, "weight", weight, ST_F32, logits));
  ST__TRY(check_classes(op, logits));
  ST__TRY(check_ce_outputs(op, logits, result, dlogits));
  return ST__SLOT(be, weighted_ce, be, logits, label, weight, result, dlogits);
}

int st_weighted_ce_resized_into(st_backend *be, const st_tensor *logits,
                                const st_tensor *label, const st_tensor *weight,
                                st_tensor *result, st_tensor *dlogits) {
  const char *op = "weighted_ce_resized";
  ST__TRY(check_tensor(op, "logits", logits, ST_F32, 4));
  ST__TRY(check_tensor(op, "label", label, ST_U8, 3));
  ST__TRY(check_tensor(op, "weight", weight, ST_F32, 3));
  if (!st_tensor_same_shape(label, weight))
    return st_error_set(ST_ESHAPE, "%s: label and weight differ in shape", op);
  if (label->shape[0] != logits->shape[0])
    return st_error_set(ST_ESHAPE, "%s: label and logits differ in N", op);
  ST__TRY(check_classes(op, logits));
  if (st_tensor_numel(logits) == 0 || st_tensor_numel(label) == 0)
    return st_error_set(ST_ESHAPE, "%s: empty tensor", op);
  ST__TRY(check_ce_outputs(op, logits, result, dlogits));
  return ST__SLOT(be, weighted_ce_resized, be, logits, label, weight, result,
                  dlogits);
}

int st_weighted_ce_result(st_backend *be, const st_tensor *result,
                          int num_classes, float *loss) {
  const char *op = "weighted_ce";
  ST__TRY(check_tensor(op, "result", result, ST_F32, 1));
  if (result->shape[0] != ST_CE_RESULT_LEN || !loss)
    return st_error_set(ST_EINVAL, "%s: result must be F32 [%d], loss set",
                        op, ST_CE_RESULT_LEN);
  float r[ST_CE_RESULT_LEN];
  ST__TRY(st_tensor_download(be, result, r, sizeof r));
  if (r[1] > 0.0f)
    return st_error_set(ST_ERANGE,
                        "%s: label %d is not below the %d classes (%.0f "
                        "pixels out of range)",
                        op, (int)r[2], num_classes, (double)r[1]);
  *loss = r[0];
  return ST_OK;
}

int st_weighted_ce(st_backend *be, const st_tensor *logits,
                   const st_tensor *label, const st_tensor *weight,
                   float *loss, st_tensor *dlogits) {
  if (!loss)
    return st_error_set(ST_EINVAL, "weighted_ce: loss pointer is NULL");
  ST__TRY(check_tensor("weighted_ce", "logits", logits, ST_F32, 4));
  const int64_t shape[1] = {ST_CE_RESULT_LEN};
  st_tensor result;
  ST__TRY(st_tensor_alloc(be, &result, ST_F32, 1, shape));
  int rc = st_weighted_ce_into(be, logits, label, weight, &result, dlogits);
  if (!rc)
    rc = st_weighted_ce_result(be, &result, (int)logits->shape[1], loss);
  st_tensor_free(&result);
  return rc;
}

int st_argmax_channels(st_backend *be, const st_tensor *logits,
                       st_tensor *labels) {
  const char *op = "argmax_channels";
  ST__TRY(check_tensor(op, "logits", logits, ST_F32, 4));
  ST__TRY(check_label_map(op, "labels", labels, ST_U8, logits));
  ST__TRY(check_classes(op, logits));
  return ST__SLOT(be, argmax_channels, be, logits, labels);
}

int st_argmax_resized(st_backend *be, const st_tensor *logits,
                      st_tensor *labels) {
  const char *op = "argmax_resized";
  ST__TRY(check_tensor(op, "logits", logits, ST_F32, 4));
  ST__TRY(check_tensor(op, "labels", labels, ST_U8, 3));
  if (labels->shape[0] != logits->shape[0])
    return st_error_set(ST_ESHAPE, "%s: labels and logits differ in N", op);
  ST__TRY(check_classes(op, logits));
  if (st_tensor_numel(logits) == 0 || st_tensor_numel(labels) == 0)
    return st_error_set(ST_ESHAPE, "%s: empty tensor", op);
  return ST__SLOT(be, argmax_resized, be, logits, labels);
}

static int check_confusion(const char *op, const st_tensor *counts,
                           int num_classes) {
  if (num_classes < 1 || num_classes > 256)
    return st_error_set(ST_EINVAL, "%s: %d classes", op, num_classes);
  ST__TRY(check_tensor(op, "counts", counts, ST_I64, 1));
  if (counts->shape[0] !=
      (int64_t)num_classes * num_classes + ST_CONFUSION_EXTRA)
    return st_error_set(ST_ESHAPE, "%s: counts must be I64 [%d]", op,
                        num_classes * num_classes + ST_CONFUSION_EXTRA);
  return ST_OK;
}

int st_confusion_counts_into(st_backend *be, const st_tensor *pred,
                             const st_tensor *label, int num_classes,
                             st_tensor *counts) {
  const char *op = "confusion_counts";
  if (!pred || !label || !pred->data || !label->data)
    return st_error_set(ST_EINVAL, "%s: missing argument", op);
  if (pred->dtype != ST_U8 || label->dtype != ST_U8)
    return st_error_set(ST_EDTYPE, "%s: pred and label must be U8", op);
  ST__TRY(check_same(op, "pred/label", pred, label));
  ST__TRY(check_confusion(op, counts, num_classes));
  return ST__SLOT(be, confusion_counts, be, pred, label, num_classes, counts);
}

int st_confusion_counts_result(st_backend *be, const st_tensor *counts,
                               int num_classes, int64_t *host_counts) {
  const char *op = "confusion_counts";
  ST__TRY(check_confusion(op, counts, num_classes));
  if (!host_counts)
    return st_error_set(ST_EINVAL, "%s: missing argument", op);
  const size_t bins = (size_t)num_classes * (size_t)num_classes;
  /* The flags first (one wait), then the counts, which are ready by then. */
  const int64_t extra_shape[1] = {ST_CONFUSION_EXTRA};
  st_tensor extra = st_tensor_view((int64_t *)counts->data + bins, ST_I64, 1,
                                   extra_shape);
  int64_t flags[ST_CONFUSION_EXTRA];
  ST__TRY(st_tensor_download(be, &extra, flags, sizeof flags));
  if (flags[0])
    return st_error_set(ST_ERANGE,
                        "%s: value %d is not below the %d classes (%lld "
                        "pixels out of range)",
                        op, (int)flags[1], num_classes, (long long)flags[0]);
  const int64_t bins_shape[1] = {(int64_t)bins};
  st_tensor head = st_tensor_view(counts->data, ST_I64, 1, bins_shape);
  return st_tensor_download(be, &head, host_counts, bins * sizeof(int64_t));
}

int st_confusion_counts(st_backend *be, const st_tensor *pred,
                        const st_tensor *label, int num_classes,
                        int64_t *counts) {
  if (!counts)
    return st_error_set(ST_EINVAL, "confusion_counts: missing argument");
  if (num_classes < 1 || num_classes > 256)
    return st_error_set(ST_EINVAL, "confusion_counts: %d classes",
                        num_classes);
  const int64_t shape[1] = {(int64_t)num_classes * num_classes +
                            ST_CONFUSION_EXTRA};
  st_tensor dev;
  ST__TRY(st_tensor_alloc(be, &dev, ST_I64, 1, shape));
  int rc = st_confusion_counts_into(be, pred, label, num_classes, &dev);
  if (!rc)
    rc = st_confusion_counts_result(be, &dev, num_classes, counts);
  st_tensor_free(&dev);
  return rc;
}

double st_miou_from_counts(const int64_t *counts, int num_classes) {
  double sum = 0.0;
  int present = 0;
  for (int k = 0; k < num_classes; k++) {
    int64_t inter = counts[(size_t)k * num_classes + k];
    int64_t row = 0, col = 0;
    for (int j = 0; j < num_classes; j++) {
      row += counts[(size_t)k * num_classes + j];
      col += counts[(size_t)j * num_classes + k];
    }
    int64_t uni = row + col - inter;
    if (uni > 0) {
      sum += (double)inter / (double)uni;
      present++;
    }
  }
  return present ? sum / present : 1.0;
}

int st_adam_step(st_backend *be, const st_adam_params *p, int64_t step,
                 st_tensor *param, const st_tensor *grad, st_tensor *m,
                 st_tensor *v) {
  const char *op = "adam_step";
  if (step < 1)
    return st_error_set(ST_EINVAL, "%s: step %lld (1-based)", op,
                        (long long)step);
  ST__TRY(check_unary(op, param, grad));
  ST__TRY(check_unary(op, param, m));
  ST__TRY(check_unary(op, param, v));
  return ST__SLOT(be, adam_step, be, p, step, param, grad, m, v);
}

int st_adam_steps(st_backend *be, const st_adam_params *p, int64_t step,
                  int count, st_tensor *const *params,
                  const st_tensor *const *grads, st_tensor *const *ms,
                  st_tensor *const *vs) {
  const char *op = "adam_steps";
  if (step < 1)
    return st_error_set(ST_EINVAL, "%s: step %lld (1-based)", op,
                        (long long)step);
  if (count < 0 || (count && (!params || !grads || !ms || !vs)))
    return st_error_set(ST_EINVAL, "%s: %d tensors", op, count);
  for (int i = 0; i < count; i++) {
    ST__TRY(check_unary(op, params[i], grads[i]));
    ST__TRY(check_unary(op, params[i], ms[i]));
    ST__TRY(check_unary(op, params[i], vs[i]));
  }
  if (count == 0)
    return ST_OK;
  if (be->ops->adam_steps)
    return ST__SLOT(be, adam_steps, be, p, step, count, params, grads, ms, vs);
  for (int i = 0; i < count; i++)
    ST__TRY(ST__SLOT(be, adam_step, be, p, step, params[i], grads[i], ms[i],
                     vs[i]));
  return ST_OK;
}

int st_cast(st_backend *be, const st_tensor *src, st_tensor *dst) {
  const char *op = "cast";
  if (!src || !dst || !src->data || !dst->data)
    return st_error_set(ST_EINVAL, "%s: missing tensor", op);
  if (!((src->dtype == ST_F32 && dst->dtype == ST_F16) ||
        (src->dtype == ST_F16 && dst->dtype == ST_F32)))
    return st_error_set(ST_EDTYPE, "%s: %s to %s not supported", op,
                        st_dtype_name(src->dtype), st_dtype_name(dst->dtype));
  if (st_tensor_numel(src) != st_tensor_numel(dst))
    return st_error_set(ST_ESHAPE, "%s: element counts differ", op);
  return ST__SLOT(be, cast, be, src, dst);
}

int st_copy(st_backend *be, const st_tensor *src, st_tensor *dst) {
  if (!src || !dst || !src->data || !dst->data)
    return st_error_set(ST_EINVAL, "copy: missing tensor");
  if (src->dtype != dst->dtype ||
      st_tensor_numel(src) != st_tensor_numel(dst))
    return st_error_set(ST_ESHAPE, "copy: dtype or element count differs");
  return ST__SLOT(be, copy, be, src, dst);
}

int st_fill(st_backend *be, st_tensor *t, float value) {
  if (!t || !t->data || t->dtype != ST_F32)
    return st_error_set(ST_EINVAL, "fill: needs an F32 tensor");
  return ST__SLOT(be, fill, be, t, value);
}

int st_image_to_tensor(st_backend *be, const st_tensor *image,
                       const int channel_order[3], const float mean[3],
                       const float std_[3], st_tensor *y) {
  const char *op = "image_to_tensor";
  ST__TRY(check_tensor(op, "image", image, ST_U8, 3));
  ST__TRY(check_tensor(op, "y", y, ST_F32, 4));
  if (image->shape[2] != 3)
    return st_error_set(ST_ESHAPE, "%s: image must be [H,W,3]", op);
  ST__TRY(check_shape4(op, "y", y, 1, 3, image->shape[0], image->shape[1]));
  for (int c = 0; c < 3; c++) {
    if (channel_order[c] < 0 || channel_order[c] > 2)
      return st_error_set(ST_EINVAL, "%s: bad channel order", op);
    if (std_[c] == 0.0f)
      return st_error_set(ST_EINVAL, "%s: std of channel %d is zero", op, c);
  }
  return ST__SLOT(be, image_to_tensor, be, image, channel_order, mean, std_,
                  y);
}

/* ---- ops of imported (ONNX) graphs ---------------------------------------- */

/* An F32 (or `dt`) tensor of any rank up to ST_MAX_DIMS. */
static int check_any_rank(const char *op, const char *what,
                          const st_tensor *t, st_dtype dt) {
  if (!t || !t->data)
    return st_error_set(ST_EINVAL, "%s: %s is missing", op, what);
  if (t->dtype != dt)
    return st_error_set(ST_EDTYPE, "%s: %s is %s, expected %s", op, what,
                        st_dtype_name(t->dtype), st_dtype_name(dt));
  if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
    return st_error_set(ST_ESHAPE, "%s: %s has rank %d", op, what, t->ndim);
  return ST_OK;
}

static int check_axis(const char *op, int axis, int ndim) {
  if (axis < 0 || axis >= ndim)
    return st_error_set(ST_EINVAL, "%s: axis %d outside 0..%d", op, axis,
                        ndim - 1);
  return ST_OK;
}

int st_unary(st_backend *be, st_unary_kind kind, float alpha, float beta,
             const st_tensor *x, st_tensor *y) {
  const char *op = "unary";
  ST__TRY(check_any_rank(op, "x", x, ST_F32));
  ST__TRY(check_any_rank(op, "y", y, ST_F32));
  ST__TRY(check_same(op, "x/y", x, y));
  if (kind < ST_UNARY_RELU || kind > ST_UNARY_SIGMOID)
    return st_error_set(ST_EINVAL, "%s: unknown kind %d", op, (int)kind);
  if ((kind == ST_UNARY_CLIP || kind == ST_UNARY_HARDSIGMOID) &&
      (alpha != alpha || beta != beta)) /* NaN compares unequal */
    return st_error_set(ST_EINVAL, "%s: alpha or beta is NaN", op);
  return ST__SLOT(be, unary, be, kind, alpha, beta, x, y);
}

int st_binary(st_backend *be, st_binary_kind kind, const st_tensor *a,
              const st_tensor *b, st_tensor *y) {
  const char *op = "binary";
  ST__TRY(check_any_rank(op, "a", a, ST_F32));
  ST__TRY(check_any_rank(op, "b", b, ST_F32));
  ST__TRY(check_any_rank(op, "y", y, ST_F32));
  if (kind < ST_BINARY_ADD || kind > ST_BINARY_DIV)
    return st_error_set(ST_EINVAL, "%s: unknown kind %d", op, (int)kind);
  /* Ranks aligned on the right; the output has the larger rank. */
  int rank = a->ndim > b->ndim ? a->ndim : b->ndim;
  char sa[96], sb[96], sy[96];
  if (y->ndim != rank)
    return st_error_set(ST_ESHAPE, "%s: y is %s, expected rank %d", op,
                        st_tensor_shape_str(y, sy, sizeof sy), rank);
  for (int d = 0; d < rank; d++) {
    int da = d - (rank - a->ndim), db = d - (rank - b->ndim);
    int64_t ea = da >= 0 ? a->shape[da] : 1;
    int64_t eb = db >= 0 ? b->shape[db] : 1;
    if (ea != eb && ea != 1 && eb != 1)
      return st_error_set(ST_ESHAPE, "%s: %s and %s do not broadcast", op,
                          st_tensor_shape_str(a, sa, sizeof sa),
                          st_tensor_shape_str(b, sb, sizeof sb));
    int64_t e = ea == 1 ? eb : ea;
    if (y->shape[d] != e)
      return st_error_set(ST_ESHAPE, "%s: y is %s, %s (op) %s broadcasts "
                          "to another shape", op,
                          st_tensor_shape_str(y, sy, sizeof sy),
                          st_tensor_shape_str(a, sa, sizeof sa),
                          st_tensor_shape_str(b, sb, sizeof sb));
  }
  /* In place only over an operand of the output's own shape: a broadcast
   * operand would be overwritten while it is still being read. */
  if ((y->data == a->data && !st_tensor_same_shape(a, y)) ||
      (y->data == b->data && !st_tensor_same_shape(b, y)))
    return st_error_set(ST_EINVAL, "%s: y aliases a broadcast operand", op);
  return ST__SLOT(be, binary, be, kind, a, b, y);
}

/* Output extent of pooling along one axis: the floor size, and the ceil_mode
 * size whose last window must still start inside the input or its leading
 * padding (PyTorch's rule, which ONNX follows). */
static void pool_out_sizes(int64_t in, int k, int s, int pb, int pe, int dil,
                           int64_t *floor_out, int64_t *ceil_out) {
  int64_t span = (int64_t)(k - 1) * dil + 1;
  int64_t room = in + pb + pe - span;
  *floor_out = room < 0 ? 0 : room / s + 1;
  int64_t c = room < 0 ? 0 : (room + s - 1) / s + 1;
  if (c > 1 && (c - 1) * s >= in + pb)
    c--;
  *ceil_out = c;
}

int st_pool2d(st_backend *be, const st_pool2d_params *p, const st_tensor *x,
              st_tensor *y) {
  const char *op = "pool2d";
  if (!p)
    return st_error_set(ST_EINVAL, "%s: params missing", op);
  ST__TRY(check_tensor(op, "x", x, ST_F32, 4));
  ST__TRY(check_tensor(op, "y", y, ST_F32, 4));
  if (p->kind != ST_POOL_MAX && p->kind != ST_POOL_AVG)
    return st_error_set(ST_EINVAL, "%s: unknown kind %d", op, (int)p->kind);
  for (int i = 0; i < 2; i++) {
    /* Average pooling has no dilation (0 or 1 both mean dense there). */
    int dil = p->dilation[i];
    if (p->kind == ST_POOL_AVG ? (dil != 0 && dil != 1) : dil < 1)
      return st_error_set(ST_EINVAL, "%s: dilation %d on axis %d", op, dil, i);
    if (p->kind == ST_POOL_AVG)
      dil = 1;
    int64_t span = (int64_t)(p->kernel[i] - 1) * dil + 1;
    if (p->kernel[i] < 1 || p->stride[i] < 1 || p->pad_begin[i] < 0 ||
        p->pad_end[i] < 0)
      return st_error_set(ST_EINVAL, "%s: bad kernel/stride/pads on axis %d",
                          op, i);
    /* A window lying wholly in padding would have no input cell. */
    if (p->pad_begin[i] >= span || p->pad_end[i] >= span)
      return st_error_set(ST_EINVAL,
                          "%s: pads %d/%d not below the window span %lld on "
                          "axis %d", op, p->pad_begin[i], p->pad_end[i],
                          (long long)span, i);
    int64_t lo, hi;
    pool_out_sizes(x->shape[2 + i], p->kernel[i], p->stride[i],
                   p->pad_begin[i], p->pad_end[i], dil, &lo, &hi);
    int64_t got = y->shape[2 + i];
    if (lo < 1 || (got != lo && got != hi))
      return st_error_set(ST_ESHAPE,
                          "%s: output extent %lld on axis %d, expected %lld "
                          "(or %lld with ceil_mode)", op, (long long)got, i,
                          (long long)lo, (long long)hi);
  }
  if (x->shape[0] != y->shape[0] || x->shape[1] != y->shape[1])
    return st_error_set(ST_ESHAPE, "%s: batch or channels differ", op);
  return ST__SLOT(be, pool2d, be, p, x, y);
}

int st_global_avg_pool(st_backend *be, const st_tensor *x, st_tensor *y) {
  const char *op = "global_avg_pool";
  ST__TRY(check_tensor(op, "x", x, ST_F32, 4));
  ST__TRY(check_tensor(op, "y", y, ST_F32, 4));
  if (x->shape[2] * x->shape[3] == 0)
    return st_error_set(ST_ESHAPE, "%s: empty planes", op);
  ST__TRY(check_shape4(op, "y", y, x->shape[0], x->shape[1], 1, 1));
  return ST__SLOT(be, global_avg_pool, be, x, y);
}

int st_resize(st_backend *be, const st_resize_params *p, const st_tensor *x,
              st_tensor *y) {
  const char *op = "resize";
  if (!p)
    return st_error_set(ST_EINVAL, "%s: params missing", op);
  ST__TRY(check_resize(op, x, y));
  if (p->mode != ST_RESIZE_NEAREST && p->mode != ST_RESIZE_LINEAR)
    return st_error_set(ST_EINVAL, "%s: unknown mode %d", op, (int)p->mode);
  if (p->coord < ST_COORD_HALF_PIXEL || p->coord > ST_COORD_ASYMMETRIC)
    return st_error_set(ST_EINVAL, "%s: unknown coordinate transform %d", op,
                        (int)p->coord);
  if (p->mode == ST_RESIZE_NEAREST &&
      (p->nearest < ST_NEAREST_ROUND_PREFER_FLOOR ||
       p->nearest > ST_NEAREST_CEIL))
    return st_error_set(ST_EINVAL, "%s: unknown nearest mode %d", op,
                        (int)p->nearest);
  for (int i = 0; i < 2; i++)
    if (!(p->scale[i] > 0.0) || p->scale[i] - p->scale[i] != 0.0) /* inf */
      return st_error_set(ST_EINVAL, "%s: scale %g on axis %d", op,
                          p->scale[i], i);
  return ST__SLOT(be, resize, be, p, x, y);
}

int st_softmax(st_backend *be, int axis, const st_tensor *x, st_tensor *y) {
  const char *op = "softmax";
  ST__TRY(check_any_rank(op, "x", x, ST_F32));
  ST__TRY(check_any_rank(op, "y", y, ST_F32));
  ST__TRY(check_same(op, "x/y", x, y));
  ST__TRY(check_axis(op, axis, x->ndim));
  return ST__SLOT(be, softmax, be, axis, x, y);
}

int st_transpose(st_backend *be, const int *perm, const st_tensor *x,
                 st_tensor *y) {
  const char *op = "transpose";
  ST__TRY(check_any_rank(op, "x", x, ST_F32));
  ST__TRY(check_any_rank(op, "y", y, ST_F32));
  if (!perm)
    return st_error_set(ST_EINVAL, "%s: perm missing", op);
  if (x->ndim != y->ndim)
    return st_error_set(ST_ESHAPE, "%s: ranks %d and %d differ", op, x->ndim,
                        y->ndim);
  int seen[ST_MAX_DIMS] = {0};
  for (int i = 0; i < x->ndim; i++) {
    if (perm[i] < 0 || perm[i] >= x->ndim || seen[perm[i]]++)
      return st_error_set(ST_EINVAL, "%s: perm is not a permutation of 0..%d",
                          op, x->ndim - 1);
    if (y->shape[i] != x->shape[perm[i]])
      return st_error_set(ST_ESHAPE, "%s: y extent %lld on axis %d, expected "
                          "%lld", op, (long long)y->shape[i], i,
                          (long long)x->shape[perm[i]]);
  }
  if (x->data == y->data && st_tensor_numel(x) > 1)
    return st_error_set(ST_EINVAL, "%s: y aliases x", op);
  return ST__SLOT(be, transpose, be, perm, x, y);
}

int st_concat(st_backend *be, int axis, const st_tensor *const *inputs,
              int count, st_tensor *y) {
  const char *op = "concat";
  ST__TRY(check_any_rank(op, "y", y, ST_F32));
  if (!inputs || count < 1)
    return st_error_set(ST_EINVAL, "%s: %d inputs", op, count);
  ST__TRY(check_axis(op, axis, y->ndim));
  int64_t total = 0;
  for (int i = 0; i < count; i++) {
    const st_tensor *t = inputs[i];
    ST__TRY(check_any_rank(op, "input", t, ST_F32));
    if (t->ndim != y->ndim)
      return st_error_set(ST_ESHAPE, "%s: input %d has rank %d, y %d", op, i,
                          t->ndim, y->ndim);
    for (int d = 0; d < y->ndim; d++)
      if (d != axis && t->shape[d] != y->shape[d])
        return st_error_set(ST_ESHAPE, "%s: input %d extent %lld on axis %d, "
                            "y has %lld", op, i, (long long)t->shape[d], d,
                            (long long)y->shape[d]);
    if (t->data == y->data && st_tensor_numel(t) > 0)
      return st_error_set(ST_EINVAL, "%s: y aliases input %d", op, i);
    total += t->shape[axis];
  }
  if (total != y->shape[axis])
    return st_error_set(ST_ESHAPE, "%s: inputs add up to %lld along axis %d, "
                        "y has %lld", op, (long long)total, axis,
                        (long long)y->shape[axis]);
  return ST__SLOT(be, concat, be, axis, inputs, count, y);
}

int st_slice(st_backend *be, const int64_t *starts, const int64_t *steps,
             const st_tensor *x, st_tensor *y) {
  const char *op = "slice";
  ST__TRY(check_any_rank(op, "x", x, ST_F32));
  ST__TRY(check_any_rank(op, "y", y, ST_F32));
  if (!starts || !steps)
    return st_error_set(ST_EINVAL, "%s: starts or steps missing", op);
  if (x->ndim != y->ndim)
    return st_error_set(ST_ESHAPE, "%s: ranks %d and %d differ", op, x->ndim,
                        y->ndim);
  int empty = 0;
  for (int d = 0; d < x->ndim; d++)
    if (y->shape[d] == 0)
      empty = 1;
  for (int d = 0; d < x->ndim; d++) {
    if (steps[d] == 0)
      return st_error_set(ST_EINVAL, "%s: step 0 on axis %d", op, d);
    if (empty)
      continue;
    /* The first and the last index touched bound all the others. */
    int64_t first = starts[d];
    int64_t last = first + (y->shape[d] - 1) * steps[d];
    if (first < 0 || first >= x->shape[d] || last < 0 || last >= x->shape[d])
      return st_error_set(ST_ERANGE, "%s: indices %lld..%lld (step %lld) "
                          "leave 0..%lld on axis %d", op, (long long)first,
                          (long long)last, (long long)steps[d],
                          (long long)x->shape[d] - 1, d);
  }
  if (x->data == y->data && st_tensor_numel(y) > 0)
    return st_error_set(ST_EINVAL, "%s: y aliases x", op);
  return ST__SLOT(be, slice, be, starts, steps, x, y);
}

int st_argmax_axis(st_backend *be, int axis, const st_tensor *x,
                   st_tensor *y) {
  const char *op = "argmax_axis";
  ST__TRY(check_any_rank(op, "x", x, ST_F32));
  ST__TRY(check_any_rank(op, "y", y, ST_I64));
  if (x->ndim != y->ndim)
    return st_error_set(ST_ESHAPE, "%s: ranks %d and %d differ", op, x->ndim,
                        y->ndim);
  ST__TRY(check_axis(op, axis, x->ndim));
  if (x->shape[axis] < 1)
    return st_error_set(ST_ESHAPE, "%s: axis %d is empty", op, axis);
  for (int d = 0; d < x->ndim; d++) {
    int64_t want = d == axis ? 1 : x->shape[d];
    if (y->shape[d] != want)
      return st_error_set(ST_ESHAPE, "%s: y extent %lld on axis %d, expected "
                          "%lld", op, (long long)y->shape[d], d,
                          (long long)want);
  }
  return ST__SLOT(be, argmax_axis, be, axis, x, y);
}
