// Convolutions of the CUDA backend, computed by cuDNN's convolution API.
//
// Every distinct convolution (kind, shapes, stride, padding, dilation,
// groups, and the bias / ReLU / residual flags of the forward) gets one cache
// entry holding its cuDNN descriptors and the algorithm chosen for it. The
// entry is built on the first call; later calls with the same shapes only
// enqueue cuDNN work on the context's stream, so the steady state allocates
// nothing and never synchronises.
//
// Numerics: fp32 data, fp32 compute, and CUDNN_FMA_MATH on every convolution
// descriptor, so no algorithm may round operands to TF32 behind the caller's
// back (the CPU backend and the PyTorch fixtures compute in full fp32). The
// forward runs cuDNN's y = conv(x, w) + beta * y and then one small kernel of
// ours adds the bias and applies the ReLU; the bias gradient is a kernel of
// ours too, a fixed-order reduction and so deterministic by construction.
//
// Algorithm choice: by default cuDNN's heuristic ranking (the *_v7 queries);
// with opts.conv_exhaustive cuDNN times every algorithm (cudnnFind*
// AlgorithmEx) on buffers taken from the pool. Either way the first ranked
// algorithm is taken that succeeded, is deterministic when
// opts.deterministic asks for it, and whose workspace fits
// ST_CUDA_CONV_MAX_WORKSPACE_BYTES.
//
// Exhaustive rankings are kept for the whole process, by device, shape and
// determinism: a server makes a context pair per worker, and without this
// every new context would time every algorithm again (host-blocking, a few
// hundred milliseconds per shape at video sizes) and, from several worker
// threads at once, time them against each other. One lock serialises the searches; a
// context that finds the shape already ranked takes that ranking and runs no
// search (st_backend_stats.algo_searches counts the searches a context ran).
//
// Workspace: one pool block per context shared by every entry, grown to the
// largest need when an entry is built. Sharing is safe because everything a
// context does runs in order on its one stream.
//
// The cache belongs to one st_cuda_backend: its first convolution creates
// it, st__cuda_conv_cache_free releases it with the context. Like the
// context it is not thread-safe; two contexts share nothing but the
// (locked, read-only once stored) exhaustive rankings.
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/conv_cache.h"
#include "gpu/cuda/cuda_impl.h"

// Entries kept per context. The student needs about 30 forward and 20
// backward convolutions; past this bound the least recently used entry is
// dropped (and rebuilt if it is needed again).
#define ST_CUDA_CONV_CACHE_MAX_ENTRIES 128
// Largest workspace an algorithm may ask for. FFT-based algorithms can want
// gigabytes at video resolutions while an implicit GEMM needs none; this
// keeps the shared workspace modest (Orin boards share memory with the CPU).
#define ST_CUDA_CONV_MAX_WORKSPACE_BYTES ((size_t)256 << 20)
// Ranked algorithms asked of cuDNN per query: more than any kind has (8
// forward, 6 backward-data, 7 backward-filter algorithms in cuDNN 9).
#define ST_CUDA_CONV_MAX_ALGOS 16
// Grid cap of the bias-gradient reduction (one block per output channel;
// the student has at most 128 channels, so this is never reached there).
#define ST_CUDA_CONV_BIAS_GRAD_MAX_BLOCKS 65535
// Exhaustive rankings kept for the process: the student needs about 50 per
// resolution, a teacher a few hundred; past this the oldest is replaced.
#define ST_CUDA_CONV_SHARED_RANKINGS 1024
// Room for the ranking in the detail line of a failed algorithm choice.
#define ST_CUDA_CONV_RANKING_TEXT_BYTES 1024

static const char *const conv_kind_names[] = {"conv2d_fwd", "conv2d_bwd_data",
                                              "conv2d_bwd_weights"};

typedef struct conv_entry {
  st__conv_cached cached;                 // key and last use: first
  cudnnTensorDescriptor_t x_desc;         // [N,Cin,H,W]: x, or dx
  cudnnTensorDescriptor_t y_desc;         // [N,Cout,OH,OW]: y, or dy
  cudnnFilterDescriptor_t w_desc;         // [Cout,Cin/g,KH,KW]: w, or dw
  cudnnConvolutionDescriptor_t conv_desc; // geometry, groups, FMA math
  int algo;               // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
  size_t workspace_bytes; // what algo needs of the shared workspace
} conv_entry;

struct st_cuda_conv_cache {
  st__conv_cached *entry[ST_CUDA_CONV_CACHE_MAX_ENTRIES]; // built ones
  int count;                                              // entries in use
  uint64_t tick;                                          // calls so far
  void *workspace;        // pool block shared by every entry, or NULL
  size_t workspace_bytes; // its size
};

// The caller's input device pointers of one call, which an exhaustive
// search runs on, by role:
//            fwd        bwd_data   bwd_weights
//   in0      x          w          x
//   in1      w          dy         dy
// (The search writes its own output buffer, never the caller's.)
typedef struct conv_ptrs {
  const void *in0, *in1;
} conv_ptrs;

// One ranked algorithm, whichever kind's perf struct it came from.
typedef struct algo_candidate {
  int algo;                       // the kind's algorithm enum value
  cudnnStatus_t status;           // CUDNN_STATUS_SUCCESS when usable
  size_t memory;                  // workspace bytes cuDNN reported
  cudnnDeterminism_t determinism; // bitwise reproducible or not
  cudnnMathType_t math;           // math type cuDNN would use
  float time_ms;                  // measured (search) or estimated time
} algo_candidate;

template <typename Perf>
static void candidates_from_perf(const Perf *perf, int count,
                                 algo_candidate *out) {
  for (int i = 0; i < count; i++) {
    out[i].algo = (int)perf[i].algo;
    out[i].status = perf[i].status;
    out[i].memory = perf[i].memory;
    out[i].determinism = perf[i].determinism;
    out[i].math = perf[i].mathType;
    out[i].time_ms = perf[i].time;
  }
}

// Blocks along one plane in the bias/activation pass; with 32+ planes per
// output this keeps every SM busy without a long grid-stride tail.
#define ST_CUDA_CONV_BIAS_BLOCKS_PER_PLANE 64u

// ---- kernels ------------------------------------------------------------

// y = act(y + bias[c]) in place over [N,C,plane]; bias may be NULL. The
// grid's y axis walks the N*C planes and x the elements of a plane, so no
// thread divides a 64-bit index (a division per element made this pass
// compute-bound on the 7 M-element outputs of the student's last layers).
static __global__ void conv_bias_act_kernel(float *y, const float *bias,
                                            int64_t planes, int64_t plane,
                                            int64_t channels, int relu) {
  for (int64_t pi = blockIdx.y; pi < planes; pi += gridDim.y) {
    const float b = bias ? bias[pi % channels] : 0.0f;
    float *row = y + pi * plane;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < plane;
         i += (int64_t)gridDim.x * blockDim.x) {
      float v = row[i] + b;
      row[i] = relu ? fmaxf(v, 0.0f) : v;
    }
  }
}

// db[c] = sum over n and the plane of dy[n, c, :]. One block per channel
// (grid-strided over channels), ST_CUDA_BLOCK threads: each thread sums a
// strided slice in a fixed order, then a tree in shared memory adds the
// partial sums, so the result does not depend on scheduling. Sums are kept
// in double (a 720p plane gives each thread ~3,600 terms, whose float sum
// loses digits when the gradients cancel) and rounded once.
static __global__ void conv_bias_grad_kernel(const float *dy, float *db,
                                             int64_t batch, int64_t channels,
                                             int64_t plane) {
  __shared__ double partial[ST_CUDA_BLOCK];
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    double sum = 0.0;
    for (int64_t n = 0; n < batch; n++) {
      const float *p = dy + (n * channels + c) * plane;
      for (int64_t j = threadIdx.x; j < plane; j += blockDim.x)
        sum += p[j];
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
      if (threadIdx.x < half)
        partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0)
      db[c] = (float)partial[0];
    // partial[] is rewritten for the next channel only after thread 0 read
    // partial[0].
    __syncthreads();
  }
}

// ---- entries ------------------------------------------------------------

static void entry_free(conv_entry *e) {
  if (!e)
    return;
  // Destroy calls only fail on invalid descriptors; nothing to report while
  // freeing.
  if (e->conv_desc)
    cudnnDestroyConvolutionDescriptor(e->conv_desc);
  if (e->w_desc)
    cudnnDestroyFilterDescriptor(e->w_desc);
  if (e->y_desc)
    cudnnDestroyTensorDescriptor(e->y_desc);
  if (e->x_desc)
    cudnnDestroyTensorDescriptor(e->x_desc);
  free(e);
}

// Workspace bytes of one algorithm on an entry's descriptors; a failed query
// (the algorithm does not support this convolution) is returned as is.
static cudnnStatus_t algo_workspace(st_cuda_backend *cu, const conv_entry *e,
                                    int algo, size_t *bytes) {
  *bytes = 0;
  switch ((st__conv_kind)e->cached.key.kind) {
  case ST__CONV_FWD:
    return cudnnGetConvolutionForwardWorkspaceSize(
        cu->cudnn, e->x_desc, e->w_desc, e->conv_desc, e->y_desc,
        (cudnnConvolutionFwdAlgo_t)algo, bytes);
  case ST__CONV_BWD_DATA:
    return cudnnGetConvolutionBackwardDataWorkspaceSize(
        cu->cudnn, e->w_desc, e->y_desc, e->conv_desc, e->x_desc,
        (cudnnConvolutionBwdDataAlgo_t)algo, bytes);
  case ST__CONV_BWD_WEIGHTS:
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(
        cu->cudnn, e->x_desc, e->y_desc, e->conv_desc, e->w_desc,
        (cudnnConvolutionBwdFilterAlgo_t)algo, bytes);
  }
  return CUDNN_STATUS_BAD_PARAM;
}

// Whether a ranked algorithm may be used at all, before its workspace is
// looked at.
static int candidate_allowed(const st_cuda_backend *cu,
                             const algo_candidate *a) {
  if (a->status != CUDNN_STATUS_SUCCESS)
    return 0;
  if (cu->base.opts.deterministic && a->determinism != CUDNN_DETERMINISTIC)
    return 0;
  // The descriptor's FMA math already rules tensor cores out; an entry that
  // still reports tensor-op math is not the fp32 algorithm we asked for.
  if (a->math == CUDNN_TENSOR_OP_MATH ||
      a->math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
    return 0;
  return 1;
}

// Workspace an allowed candidate needs: the larger of what cuDNN reported
// with the ranking and what it reports for our descriptors now. Returns 0
// when the algorithm cannot run here or needs more than the limit.
static int candidate_fits(st_cuda_backend *cu, const conv_entry *e,
                          const algo_candidate *a, size_t *bytes) {
  size_t need = 0;
  if (algo_workspace(cu, e, a->algo, &need) != CUDNN_STATUS_SUCCESS)
    return 0;
  if (a->memory > need)
    need = a->memory;
  if (need > ST_CUDA_CONV_MAX_WORKSPACE_BYTES)
    return 0;
  *bytes = need;
  return 1;
}

// cuDNN's heuristic ranking of the algorithms for an entry, best first.
static int rank_heuristic(st_cuda_backend *cu, const conv_entry *e,
                          algo_candidate *out, int *count) {
  int n = 0;
  switch ((st__conv_kind)e->cached.key.kind) {
  case ST__CONV_FWD: {
    cudnnConvolutionFwdAlgoPerf_t perf[ST_CUDA_CONV_MAX_ALGOS];
    ST_CUDNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(
        cu->cudnn, e->x_desc, e->w_desc, e->conv_desc, e->y_desc,
        ST_CUDA_CONV_MAX_ALGOS, &n, perf));
    candidates_from_perf(perf, n, out);
    break;
  }
  case ST__CONV_BWD_DATA: {
    cudnnConvolutionBwdDataAlgoPerf_t perf[ST_CUDA_CONV_MAX_ALGOS];
    ST_CUDNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(
        cu->cudnn, e->w_desc, e->y_desc, e->conv_desc, e->x_desc,
        ST_CUDA_CONV_MAX_ALGOS, &n, perf));
    candidates_from_perf(perf, n, out);
    break;
  }
  case ST__CONV_BWD_WEIGHTS: {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[ST_CUDA_CONV_MAX_ALGOS];
    ST_CUDNN_TRY(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
        cu->cudnn, e->x_desc, e->y_desc, e->conv_desc, e->w_desc,
        ST_CUDA_CONV_MAX_ALGOS, &n, perf));
    candidates_from_perf(perf, n, out);
    break;
  }
  }
  *count = n;
  return ST_OK;
}

// cudnnFind*AlgorithmEx on the given buffers (out_tmp and ws borrowed from
// the pool by rank_exhaustive), fastest first.
static int find_algorithms(st_cuda_backend *cu, const conv_entry *e,
                           const conv_ptrs *ptrs, void *out_tmp, void *ws,
                           size_t ws_bytes, algo_candidate *out, int *count) {
  int n = 0;
  switch ((st__conv_kind)e->cached.key.kind) {
  case ST__CONV_FWD: {
    cudnnConvolutionFwdAlgoPerf_t perf[ST_CUDA_CONV_MAX_ALGOS];
    ST_CUDNN_TRY(cudnnFindConvolutionForwardAlgorithmEx(
        cu->cudnn, e->x_desc, ptrs->in0, e->w_desc, ptrs->in1, e->conv_desc,
        e->y_desc, out_tmp, ST_CUDA_CONV_MAX_ALGOS, &n, perf, ws, ws_bytes));
    candidates_from_perf(perf, n, out);
    break;
  }
  case ST__CONV_BWD_DATA: {
    cudnnConvolutionBwdDataAlgoPerf_t perf[ST_CUDA_CONV_MAX_ALGOS];
    ST_CUDNN_TRY(cudnnFindConvolutionBackwardDataAlgorithmEx(
        cu->cudnn, e->w_desc, ptrs->in0, e->y_desc, ptrs->in1, e->conv_desc,
        e->x_desc, out_tmp, ST_CUDA_CONV_MAX_ALGOS, &n, perf, ws, ws_bytes));
    candidates_from_perf(perf, n, out);
    break;
  }
  case ST__CONV_BWD_WEIGHTS: {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[ST_CUDA_CONV_MAX_ALGOS];
    ST_CUDNN_TRY(cudnnFindConvolutionBackwardFilterAlgorithmEx(
        cu->cudnn, e->x_desc, ptrs->in0, e->y_desc, ptrs->in1, e->conv_desc,
        e->w_desc, out_tmp, ST_CUDA_CONV_MAX_ALGOS, &n, perf, ws, ws_bytes));
    candidates_from_perf(perf, n, out);
    break;
  }
  }
  *count = n;
  return ST_OK;
}

// Elements of the tensor a kind writes (y, dx or dw).
static int64_t output_numel(const st__conv_key *k) {
  switch ((st__conv_kind)k->kind) {
  case ST__CONV_FWD:
    return k->n * k->cout * k->oh * k->ow;
  case ST__CONV_BWD_DATA:
    return k->n * k->cin * k->h * k->w;
  case ST__CONV_BWD_WEIGHTS:
    return k->cout * (k->cin / k->groups) * k->kh * k->kw;
  }
  return 0;
}

// ---- exhaustive rankings shared by the process ---------------------------

// One search's result. What was timed depends on the device, the shape and
// (through the workspace offered) on whether only deterministic algorithms
// were allowed.
typedef struct shared_ranking {
  int device;        // CUDA device ordinal
  int deterministic; // opts.deterministic of the searching context
  st__conv_key key;  // the convolution timed
  int count;         // entries of ranked
  algo_candidate ranked[ST_CUDA_CONV_MAX_ALGOS]; // fastest first
} shared_ranking;

// Rankings in store order; `next` is the slot the next one takes (the oldest
// once all are in use). Entries are malloc'd once and overwritten in place,
// held until the process ends.
static struct {
  pthread_mutex_t lock; // held for lookups, stores and whole searches
  shared_ranking *slot[ST_CUDA_CONV_SHARED_RANKINGS];
  int count; // slots in use
  int next;  // slot written next
} shared_rankings = {PTHREAD_MUTEX_INITIALIZER, {NULL}, 0, 0};

// What a search times: the cuDNN problem alone. Bias, activation and the
// residual are this file's own kernels (or a beta cuDNN applies to any
// algorithm alike), so convolutions differing only in them share a ranking.
static st__conv_key searched_key(const st__conv_key *k) {
  st__conv_key s = *k;
  s.has_bias = 0;
  s.act = 0;
  s.beta = 0;
  return s;
}

// The stored ranking for a search of e by cu, or NULL. Lock held.
static const shared_ranking *shared_lookup(const st_cuda_backend *cu,
                                           const conv_entry *e) {
  const st__conv_key key = searched_key(&e->cached.key);
  for (int i = 0; i < shared_rankings.count; i++) {
    const shared_ranking *r = shared_rankings.slot[i];
    if (r->device == cu->device &&
        r->deterministic == cu->base.opts.deterministic &&
        memcmp(&r->key, &key, sizeof key) == 0)
      return r;
  }
  return NULL;
}

// Keeps a search's ranking. Lock held. Out of memory it is not kept: the
// next context with this shape searches again, nothing else changes.
static void shared_store(const st_cuda_backend *cu, const conv_entry *e,
                         const algo_candidate *ranked, int count) {
  shared_ranking *r = shared_rankings.slot[shared_rankings.next];
  if (!r) {
    r = (shared_ranking *)calloc(1, sizeof *r);
    if (!r)
      return;
    shared_rankings.slot[shared_rankings.next] = r;
    shared_rankings.count++;
  }
  r->device = cu->device;
  r->deterministic = cu->base.opts.deterministic;
  r->key = searched_key(&e->cached.key);
  r->count = count;
  memcpy(r->ranked, ranked, (size_t)count * sizeof *ranked);
  shared_rankings.next =
      (shared_rankings.next + 1) % ST_CUDA_CONV_SHARED_RANKINGS;
}

// Times the algorithms with cuDNN. The output goes to a pool buffer, not to
// the caller's tensor: with beta = 1 the forward's y holds the residual that
// the real call adds. The workspace offered is the largest that any allowed
// algorithm of the heuristic ranking asks for within the limit, so the
// search neither skips a usable algorithm nor reserves memory none needs.
static int search_algorithms(st_cuda_backend *cu, const conv_entry *e,
                             const conv_ptrs *ptrs, algo_candidate *out,
                             int *count) {
  algo_candidate ranked[ST_CUDA_CONV_MAX_ALGOS];
  int nranked = 0;
  int rc = rank_heuristic(cu, e, ranked, &nranked);
  if (rc)
    return rc;
  size_t ws_bytes = 0;
  for (int i = 0; i < nranked; i++) {
    size_t need = 0;
    if (candidate_allowed(cu, &ranked[i]) &&
        candidate_fits(cu, e, &ranked[i], &need) && need > ws_bytes)
      ws_bytes = need;
  }
  void *out_tmp = NULL, *ws = NULL;
  rc = st__cuda_pool_alloc(
      cu, (size_t)output_numel(&e->cached.key) * sizeof(float), &out_tmp);
  if (!rc && ws_bytes)
    rc = st__cuda_pool_alloc(cu, ws_bytes, &ws);
  if (!rc)
    rc = find_algorithms(cu, e, ptrs, out_tmp, ws, ws_bytes, out, count);
  if (ws)
    st__cuda_pool_release(cu, ws);
  if (out_tmp)
    st__cuda_pool_release(cu, out_tmp);
  if (!rc)
    cu->algo_searches++;
  return rc;
}

// Copies the stored ranking for e into out; 0 when there is none. Lock held.
static int take_stored(const st_cuda_backend *cu, const conv_entry *e,
                       algo_candidate *out, int *count) {
  const shared_ranking *r = shared_lookup(cu, e);
  if (!r)
    return 0;
  memcpy(out, r->ranked, (size_t)r->count * sizeof *out);
  *count = r->count;
  return 1;
}

// The exhaustive ranking of an entry: the process's stored one when this
// device has timed the shape before under the same determinism, else a
// search, stored for the contexts after it. The lock is held through the
// search so that two contexts never time at once, and a context waiting for
// it finds the ranking stored when it gets it. A device too full for the
// search's buffers gets the heuristic ranking (not stored: a later context
// with room times the shape), whose cheaper algorithms may still fit.
static int rank_exhaustive(st_cuda_backend *cu, const conv_entry *e,
                           const conv_ptrs *ptrs, algo_candidate *out,
                           int *count) {
  // A stored ranking needs no search: taken under the lock, no wait.
  pthread_mutex_lock(&shared_rankings.lock);
  const int stored = take_stored(cu, e, out, count);
  pthread_mutex_unlock(&shared_rankings.lock);
  if (stored)
    return ST_OK;
  // The search runs host-blocking; make sure the inputs that queued work is
  // still producing are complete whichever stream cuDNN times on, before
  // the lock, so that other contexts never wait for this one's stream.
  // (Not while recording a graph: the sequence then runs again unrecorded.)
  int rc = st__cuda_refuse_while_recording(cu, "cuDNN algorithm search");
  if (rc)
    return rc;
  ST_CUDA_TRY(cudaStreamSynchronize(cu->stream));
  pthread_mutex_lock(&shared_rankings.lock);
  // Another context may have stored it while this one waited.
  if (!take_stored(cu, e, out, count)) {
    rc = search_algorithms(cu, e, ptrs, out, count);
    if (!rc)
      shared_store(cu, e, out, *count);
  }
  pthread_mutex_unlock(&shared_rankings.lock);
  if (rc == ST_ENOMEM) {
    st_error_clear();
    rc = rank_heuristic(cu, e, out, count);
  }
  return rc;
}

// Writes "algo A status/determinism/math/workspace" for every ranked
// candidate into buf (always terminated, cut short when it is full): the
// detail line of a convolution no algorithm was found for.
static void describe_ranking(const algo_candidate *ranked, int count, char *buf,
                             size_t len) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < count && used < len; i++) {
    int wrote = snprintf(
        buf + used, len - used, "%salgo %d %s %s math %d %zu B", i ? ", " : "",
        ranked[i].algo, cudnnGetErrorString(ranked[i].status),
        ranked[i].determinism == CUDNN_DETERMINISTIC ? "det" : "nondet",
        (int)ranked[i].math, ranked[i].memory);
    if (wrote < 0)
      break;
    used += (size_t)wrote;
  }
  if (count == 0)
    snprintf(buf, len, "none");
}

// With ST_CUDNN_LOG set, one stderr line per new entry: the shape, the
// algorithm taken, its rank and the whole ranking (to compare the
// heuristic's choices with the exhaustive search's).
static void log_choice(const st_cuda_backend *cu, const conv_entry *e,
                       const algo_candidate *ranked, int nranked, int chosen) {
  const char *env = getenv("ST_CUDNN_LOG");
  if (!env || !*env || !strcmp(env, "0"))
    return;
  char ranking[ST_CUDA_CONV_RANKING_TEXT_BYTES];
  describe_ranking(ranked, nranked, ranking, sizeof ranking);
  const st__conv_key *k = &e->cached.key;
  fprintf(stderr,
          "cudnn %s %s x[%lld,%lld,%lld,%lld] w[%lld,%lld,%lld,%lld] s%lld "
          "p%lld,%lld: algo %d (rank %d, %.3f ms); ranking: %s\n",
          cu->base.opts.conv_exhaustive ? "exhaustive" : "heuristic",
          conv_kind_names[k->kind], (long long)k->n, (long long)k->cin,
          (long long)k->h, (long long)k->w, (long long)k->cout,
          (long long)(k->cin / k->groups), (long long)k->kh, (long long)k->kw,
          (long long)k->stride[0], (long long)k->pad[0], (long long)k->pad[1],
          ranked[chosen].algo, chosen, (double)ranked[chosen].time_ms, ranking);
}

// Picks the algorithm of a freshly described entry and makes the shared
// workspace large enough for it.
static int entry_choose_algo(st_cuda_backend *cu, struct st_cuda_conv_cache *c,
                             conv_entry *e, const conv_ptrs *ptrs) {
  algo_candidate ranked[ST_CUDA_CONV_MAX_ALGOS];
  int nranked = 0;
  int rc = cu->base.opts.conv_exhaustive
               ? rank_exhaustive(cu, e, ptrs, ranked, &nranked)
               : rank_heuristic(cu, e, ranked, &nranked);
  if (rc)
    return rc;
  int out_of_memory = 0;
  for (int i = 0; i < nranked; i++) {
    size_t need = 0;
    if (!candidate_allowed(cu, &ranked[i]) ||
        !candidate_fits(cu, e, &ranked[i], &need))
      continue;
    // The workspace grows to the candidate's need (the old block goes back
    // to the pool: convolutions still queued with it run before anything
    // the pool hands it to next, on the one stream). A device short of
    // memory may still run a lower-ranked algorithm that needs less.
    rc = st__cuda_reserve(cu, &c->workspace, &c->workspace_bytes, need);
    if (rc == ST_ENOMEM) {
      out_of_memory = 1;
      continue;
    }
    if (rc)
      return rc;
    e->algo = ranked[i].algo;
    e->workspace_bytes = need;
    log_choice(cu, e, ranked, nranked, i);
    return ST_OK;
  }
  const st__conv_key *k = &e->cached.key;
  if (out_of_memory)
    return st_error_set(ST_ENOMEM,
                        "cuda %s: no workspace for any usable cuDNN algorithm",
                        conv_kind_names[k->kind]);
  char ranking[ST_CUDA_CONV_RANKING_TEXT_BYTES];
  describe_ranking(ranked, nranked, ranking, sizeof ranking);
  return st_error_set(
      ST_EBACKEND,
      "cuda %s: no cuDNN algorithm is usable (%s, workspace <= %zu bytes) "
      "for x [%lld,%lld,%lld,%lld] w [%lld,%lld,%lld,%lld] groups %lld; "
      "ranked: %s",
      conv_kind_names[k->kind],
      cu->base.opts.deterministic ? "deterministic, fp32" : "fp32",
      (size_t)ST_CUDA_CONV_MAX_WORKSPACE_BYTES, (long long)k->n,
      (long long)k->cin, (long long)k->h, (long long)k->w, (long long)k->cout,
      (long long)(k->cin / k->groups), (long long)k->kh, (long long)k->kw,
      (long long)k->groups, ranking);
}

// cuDNN's legacy descriptors hold int extents and int strides: every extent
// and every tensor's element count must fit an int.
static int key_fits_int(const st__conv_key *k) {
  // Extents are at least 1, so a tensor's element count bounds each of its
  // extents and strides.
  const int64_t x_numel = k->n * k->cin * k->h * k->w;
  const int64_t y_numel = k->n * k->cout * k->oh * k->ow;
  const int64_t w_numel = k->cout * (k->cin / k->groups) * k->kh * k->kw;
  return x_numel <= INT_MAX && y_numel <= INT_MAX && w_numel <= INT_MAX;
}

// Describes one convolution to cuDNN and chooses its algorithm. On failure
// the caller frees the partly built entry.
static int entry_build(st_cuda_backend *cu, struct st_cuda_conv_cache *c,
                       const st__conv_key *k, const conv_ptrs *ptrs,
                       conv_entry *e) {
  if (!key_fits_int(k))
    return st_error_set(ST_ERANGE, "cuda %s: tensor of more than %d elements",
                        conv_kind_names[k->kind], INT_MAX);
  e->cached.key = *k;
  ST_CUDNN_TRY(cudnnCreateTensorDescriptor(&e->x_desc));
  ST_CUDNN_TRY(cudnnSetTensor4dDescriptor(e->x_desc, CUDNN_TENSOR_NCHW,
                                          CUDNN_DATA_FLOAT, (int)k->n,
                                          (int)k->cin, (int)k->h, (int)k->w));
  ST_CUDNN_TRY(cudnnCreateTensorDescriptor(&e->y_desc));
  ST_CUDNN_TRY(cudnnSetTensor4dDescriptor(
      e->y_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, (int)k->n, (int)k->cout,
      (int)k->oh, (int)k->ow));
  // Our weight layout [Cout, Cin/groups, KH, KW] is cuDNN's grouped KCRS.
  ST_CUDNN_TRY(cudnnCreateFilterDescriptor(&e->w_desc));
  ST_CUDNN_TRY(cudnnSetFilter4dDescriptor(
      e->w_desc, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, (int)k->cout,
      (int)(k->cin / k->groups), (int)k->kh, (int)k->kw));
  ST_CUDNN_TRY(cudnnCreateConvolutionDescriptor(&e->conv_desc));
  // PyTorch's conv2d is a cross-correlation; cuDNN's dilation is ours
  // (1 = dense).
  ST_CUDNN_TRY(cudnnSetConvolution2dDescriptor(
      e->conv_desc, (int)k->pad[0], (int)k->pad[1], (int)k->stride[0],
      (int)k->stride[1], (int)k->dilation[0], (int)k->dilation[1],
      CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  ST_CUDNN_TRY(cudnnSetConvolutionGroupCount(e->conv_desc, (int)k->groups));
  ST_CUDNN_TRY(cudnnSetConvolutionMathType(e->conv_desc, CUDNN_FMA_MATH));

  // cuDNN must agree with backend.c on the output extents, or the
  // descriptors do not describe what the caller passed.
  int on = 0, oc = 0, oh = 0, ow = 0;
  ST_CUDNN_TRY(cudnnGetConvolution2dForwardOutputDim(
      e->conv_desc, e->x_desc, e->w_desc, &on, &oc, &oh, &ow));
  if (on != k->n || oc != k->cout || oh != k->oh || ow != k->ow)
    return st_error_set(ST_EBACKEND,
                        "cuda %s: cuDNN computes output [%d,%d,%d,%d], "
                        "expected [%lld,%lld,%lld,%lld]",
                        conv_kind_names[k->kind], on, oc, oh, ow,
                        (long long)k->n, (long long)k->cout, (long long)k->oh,
                        (long long)k->ow);
  return entry_choose_algo(cu, c, e, ptrs);
}

// ---- the cache ----------------------------------------------------------

void st__cuda_conv_cache_free(st_cuda_backend *cu) {
  if (!cu || !cu->conv)
    return;
  struct st_cuda_conv_cache *c = cu->conv;
  for (int i = 0; i < c->count; i++)
    entry_free((conv_entry *)c->entry[i]);
  if (c->workspace)
    st__cuda_pool_release(cu, c->workspace);
  free(c);
  cu->conv = NULL;
}

static int cache_open(st_cuda_backend *cu, struct st_cuda_conv_cache **out) {
  if (!cu->conv) {
    cu->conv = (struct st_cuda_conv_cache *)calloc(1, sizeof *cu->conv);
    if (!cu->conv)
      return st_error_set(ST_ENOMEM, "cuda conv: out of memory");
  }
  *out = cu->conv;
  return ST_OK;
}

// Finds the entry for k, building it (and evicting the least recently used
// one when the cache is full) on a miss.
static int cache_get(st_cuda_backend *cu, struct st_cuda_conv_cache *c,
                     const st__conv_key *k, const conv_ptrs *ptrs,
                     conv_entry **out) {
  st__conv_cached *hit = st__conv_cache_find(c->entry, c->count, k);
  if (hit) {
    *out = (conv_entry *)hit;
    return ST_OK;
  }
  conv_entry *e = (conv_entry *)calloc(1, sizeof *e);
  if (!e)
    return st_error_set(ST_ENOMEM, "cuda conv: out of memory");
  int rc = entry_build(cu, c, k, ptrs, e);
  if (rc) {
    entry_free(e);
    return rc;
  }
  int slot =
      st__conv_cache_slot(c->entry, c->count, ST_CUDA_CONV_CACHE_MAX_ENTRIES);
  if (slot < c->count)
    entry_free((conv_entry *)c->entry[slot]);
  else
    c->count++;
  c->entry[slot] = &e->cached;
  *out = e;
  return ST_OK;
}

// The cached entry for a call, built on first use.
static int conv_entry_for(st_backend *be, const st__conv_key *k,
                          const conv_ptrs *ptrs, conv_entry **out) {
  st_cuda_backend *cu = st__cuda(be);
  struct st_cuda_conv_cache *c = NULL;
  int rc = cache_open(cu, &c);
  if (rc)
    return rc;
  rc = cache_get(cu, c, k, ptrs, out);
  if (rc)
    return rc;
  (*out)->cached.last_use = ++c->tick;
  return ST_OK;
}

// The shared workspace as an entry may use it (NULL when it needs none).
static void *entry_workspace(const st_cuda_backend *cu, const conv_entry *e) {
  return e->workspace_bytes ? cu->conv->workspace : NULL;
}

// ---- the ops ------------------------------------------------------------

extern "C" int st__cuda_conv2d_fwd(st_backend *be, const st_conv2d_params *p,
                                   const st_tensor *x, const st_tensor *w,
                                   const st_tensor *bias, st_activation act,
                                   float beta, st_tensor *y) {
  st_cuda_backend *cu = st__cuda(be);
  st__conv_key k;
  st__conv_key_init(&k, ST__CONV_FWD, p, x, w, y);
  k.has_bias = bias != NULL;
  k.act = act;
  k.beta = beta != 0.0f;
  conv_ptrs ptrs = {x->data, w->data};
  conv_entry *e = NULL;
  int rc = conv_entry_for(be, &k, &ptrs, &e);
  if (rc)
    return rc;
  // cuDNN computes y = 1 * conv(x, w) + beta * y; beta is 0 or 1.
  const float one = 1.0f, residual = k.beta ? 1.0f : 0.0f;
  ST_CUDNN_TRY(cudnnConvolutionForward(
      cu->cudnn, &one, e->x_desc, x->data, e->w_desc, w->data, e->conv_desc,
      (cudnnConvolutionFwdAlgo_t)e->algo, entry_workspace(cu, e),
      e->workspace_bytes, &residual, e->y_desc, y->data));
  if (!bias && act == ST_ACT_NONE)
    return ST_OK;
  const int64_t planes = k.n * k.cout, plane = k.oh * k.ow;
  // Enough blocks per plane to fill the device, capped by the grid limits.
  const int64_t max_grid_y = 65535;
  dim3 grid(st__cuda_grid(plane) < ST_CUDA_CONV_BIAS_BLOCKS_PER_PLANE
                ? st__cuda_grid(plane)
                : ST_CUDA_CONV_BIAS_BLOCKS_PER_PLANE,
            (unsigned)(planes < max_grid_y ? planes : max_grid_y));
  conv_bias_act_kernel<<<grid, ST_CUDA_BLOCK, 0, cu->stream>>>(
      (float *)y->data, bias ? (const float *)bias->data : NULL, planes, plane,
      k.cout, act == ST_ACT_RELU);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

extern "C" int st__cuda_conv2d_bwd_data(st_backend *be,
                                        const st_conv2d_params *p,
                                        const st_tensor *dy, const st_tensor *w,
                                        st_tensor *dx) {
  st_cuda_backend *cu = st__cuda(be);
  st__conv_key k;
  st__conv_key_init(&k, ST__CONV_BWD_DATA, p, dx, w, dy);
  conv_ptrs ptrs = {w->data, dy->data};
  conv_entry *e = NULL;
  int rc = conv_entry_for(be, &k, &ptrs, &e);
  if (rc)
    return rc;
  const float one = 1.0f, zero = 0.0f;
  ST_CUDNN_TRY(cudnnConvolutionBackwardData(
      cu->cudnn, &one, e->w_desc, w->data, e->y_desc, dy->data, e->conv_desc,
      (cudnnConvolutionBwdDataAlgo_t)e->algo, entry_workspace(cu, e),
      e->workspace_bytes, &zero, e->x_desc, dx->data));
  return ST_OK;
}

extern "C" int st__cuda_conv2d_bwd_weights(st_backend *be,
                                           const st_conv2d_params *p,
                                           const st_tensor *x,
                                           const st_tensor *dy, st_tensor *dw,
                                           st_tensor *db) {
  st_cuda_backend *cu = st__cuda(be);
  st__conv_key k;
  st__conv_key_init(&k, ST__CONV_BWD_WEIGHTS, p, x, dw, dy);
  k.has_bias = db != NULL;
  conv_ptrs ptrs = {x->data, dy->data};
  conv_entry *e = NULL;
  int rc = conv_entry_for(be, &k, &ptrs, &e);
  if (rc)
    return rc;
  const float one = 1.0f, zero = 0.0f;
  ST_CUDNN_TRY(cudnnConvolutionBackwardFilter(
      cu->cudnn, &one, e->x_desc, x->data, e->y_desc, dy->data, e->conv_desc,
      (cudnnConvolutionBwdFilterAlgo_t)e->algo, entry_workspace(cu, e),
      e->workspace_bytes, &zero, e->w_desc, dw->data));
  if (!db)
    return ST_OK;
  // One block per channel; the kernel strides over channels beyond the cap.
  const unsigned blocks = (unsigned)(k.cout < ST_CUDA_CONV_BIAS_GRAD_MAX_BLOCKS
                                         ? k.cout
                                         : ST_CUDA_CONV_BIAS_GRAD_MAX_BLOCKS);
  conv_bias_grad_kernel<<<blocks, ST_CUDA_BLOCK, 0, cu->stream>>>(
      (const float *)dy->data, (float *)db->data, k.n, k.cout, k.oh * k.ow);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}
