// The CUDA backend's context: stream, library handles, memory pool, pinned
// staging, events and the op table (see cuda_impl.h).
#include <stdlib.h>
#include <string.h>

#include "gpu/cuda/cuda_impl.h"

// Pool blocks are multiples of this many bytes (cuDNN and vector loads want
// at least 256-byte alignment; cudaMalloc gives more).
#define ST_CUDA_POOL_ROUND_BYTES 512
// A free block is reused for a request when it wastes at most this fraction
// of itself; otherwise a new block is taken from the device.
#define ST_CUDA_POOL_MAX_WASTE_DIVISOR 2
// Initial sizes of the host staging and device scratch buffers.
#define ST_CUDA_PINNED_INITIAL_BYTES (4u << 20)
#define ST_CUDA_SCRATCH_INITIAL_BYTES (64u << 10)

typedef struct pool_block {
  void *ptr;   // device address
  size_t size; // bytes
  int in_use;  // 1 while handed out
} pool_block;

struct st_cuda_pool {
  pool_block *blocks;         // every block the pool holds
  size_t count, capacity;     // used and allocated entries of blocks
  int64_t device_alloc_calls; // cudaMalloc calls made
  size_t reserved, in_use;    // bytes held, bytes handed out
};

static size_t pool_round(size_t bytes) {
  size_t r = ST_CUDA_POOL_ROUND_BYTES;
  return bytes == 0 ? r : (bytes + r - 1) / r * r;
}

// Gives every unused block back to the device (only when cudaMalloc has
// failed: cudaFree synchronises the device).
static void pool_trim(st_cuda_pool *p) {
  size_t kept = 0;
  for (size_t i = 0; i < p->count; i++) {
    if (p->blocks[i].in_use) {
      p->blocks[kept++] = p->blocks[i];
    } else {
      cudaFree(p->blocks[i].ptr);
      p->reserved -= p->blocks[i].size;
    }
  }
  p->count = kept;
}

int st__cuda_refuse_while_recording(st_cuda_backend *cu, const char *what) {
  if (!cu->recording)
    return ST_OK;
  cu->recording_refused = 1;
  return st_error_set(ST_EINVAL, "cuda: %s while recording a graph", what);
}

int st__cuda_pool_alloc(st_cuda_backend *cu, size_t bytes, void **out) {
  st_cuda_pool *p = cu->pool;
  // A recorded op must find all its memory in place already.
  int refused = st__cuda_refuse_while_recording(cu, "device memory taken");
  if (refused)
    return refused;
  size_t want = pool_round(bytes);
  // Best fit among free blocks that are not much larger than the request.
  // Blocks freed by ops still queued on the stream are safe to hand out:
  // everything this context does runs in stream order.
  pool_block *best = NULL;
  for (size_t i = 0; i < p->count; i++) {
    pool_block *b = &p->blocks[i];
    if (b->in_use || b->size < want ||
        b->size - want > b->size / ST_CUDA_POOL_MAX_WASTE_DIVISOR)
      continue;
    if (!best || b->size < best->size)
      best = b;
  }
  if (best) {
    best->in_use = 1;
    p->in_use += best->size;
    *out = best->ptr;
    return ST_OK;
  }
  if (p->count == p->capacity) {
    size_t cap = p->capacity ? 2 * p->capacity : 64;
    pool_block *grown =
        (pool_block *)realloc(p->blocks, cap * sizeof *grown);
    if (!grown)
      return st_error_set(ST_ENOMEM, "cuda pool: block table");
    p->blocks = grown;
    p->capacity = cap;
  }
  void *ptr = NULL;
  cudaError_t err = cudaMalloc(&ptr, want);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError(); // clear the sticky-free error state
    pool_trim(p);
    err = cudaMalloc(&ptr, want);
  }
  p->device_alloc_calls++;
  if (err != cudaSuccess) {
    cudaGetLastError();
    return st_error_set(err == cudaErrorMemoryAllocation ? ST_ENOMEM
                                                         : ST_EBACKEND,
                        "cudaMalloc(%zu) failed: %s", want,
                        cudaGetErrorString(err));
  }
  p->blocks[p->count++] = pool_block{ptr, want, 1};
  p->reserved += want;
  p->in_use += want;
  *out = ptr;
  return ST_OK;
}

void st__cuda_pool_release(st_cuda_backend *cu, void *ptr) {
  st_cuda_pool *p = cu->pool;
  for (size_t i = 0; i < p->count; i++) {
    if (p->blocks[i].ptr == ptr && p->blocks[i].in_use) {
      p->blocks[i].in_use = 0;
      p->in_use -= p->blocks[i].size;
      return;
    }
  }
}

static void pool_free(st_cuda_pool *p) {
  if (!p)
    return;
  for (size_t i = 0; i < p->count; i++)
    cudaFree(p->blocks[i].ptr);
  free(p->blocks);
  free(p);
}

int st__cuda_reserve(st_cuda_backend *cu, void **block, size_t *bytes,
                     size_t need) {
  if (need <= *bytes)
    return ST_OK;
  void *fresh = NULL;
  int rc = st__cuda_pool_alloc(cu, need, &fresh);
  if (rc)
    return rc;
  if (*block)
    st__cuda_pool_release(cu, *block);
  *block = fresh;
  *bytes = need;
  cu->buffers_epoch++;
  return ST_OK;
}

int st__cuda_scratch(st_cuda_backend *cu, size_t bytes, void **out) {
  if (bytes > cu->scratch_bytes) {
    size_t size = cu->scratch_bytes ? cu->scratch_bytes
                                    : ST_CUDA_SCRATCH_INITIAL_BYTES;
    while (size < bytes)
      size *= 2;
    ST_TRY(st__cuda_reserve(cu, &cu->scratch, &cu->scratch_bytes, size));
  }
  *out = cu->scratch;
  return ST_OK;
}

// Makes the pinned staging buffer at least `bytes` long. Waits for the last
// upload from it first, since that copy may still be reading it.
static int pinned_reserve(st_cuda_backend *cu, size_t bytes) {
  ST_CUDA_TRY(cudaEventSynchronize(cu->pinned_free));
  if (bytes <= cu->pinned_bytes)
    return ST_OK;
  size_t size = cu->pinned_bytes ? cu->pinned_bytes
                                 : ST_CUDA_PINNED_INITIAL_BYTES;
  while (size < bytes)
    size *= 2;
  if (cu->pinned)
    ST_CUDA_TRY(cudaFreeHost(cu->pinned));
  cu->pinned = NULL;
  cu->pinned_bytes = 0;
  ST_CUDA_TRY(cudaHostAlloc(&cu->pinned, size, cudaHostAllocDefault));
  cu->pinned_bytes = size;
  return ST_OK;
}

int st__cuda_read_back(st_cuda_backend *cu, void *host, const void *dev,
                       size_t bytes) {
  if (bytes == 0)
    return ST_OK;
  int rc = st__cuda_refuse_while_recording(cu, "read back");
  if (!rc)
    rc = pinned_reserve(cu, bytes);
  if (rc)
    return rc;
  ST_CUDA_TRY(cudaMemcpyAsync(cu->pinned, dev, bytes, cudaMemcpyDeviceToHost,
                              cu->stream));
  ST_CUDA_TRY(cudaStreamSynchronize(cu->stream));
  memcpy(host, cu->pinned, bytes);
  return ST_OK;
}

// ---- table slots of the context itself -----------------------------------

static void cuda_free(st_backend *be) {
  st_cuda_backend *cu = st__cuda(be);
  if (cu->stream)
    cudaStreamSynchronize(cu->stream);
  st__cuda_conv_cache_free(cu);
  if (cu->loss_buffer)
    st__cuda_pool_release(cu, cu->loss_buffer);
  if (cu->scratch)
    st__cuda_pool_release(cu, cu->scratch);
  pool_free(cu->pool);
  if (cu->pinned)
    cudaFreeHost(cu->pinned);
  if (cu->pinned_free)
    cudaEventDestroy(cu->pinned_free);
  if (cu->cudnn)
    cudnnDestroy(cu->cudnn);
  if (cu->stream)
    cudaStreamDestroy(cu->stream);
  free(cu);
}

static int cuda_alloc(st_backend *be, size_t bytes, void **out) {
  st_cuda_backend *cu = st__cuda(be);
  int rc = st__cuda_pool_alloc(cu, bytes, out);
  if (rc)
    return rc;
  // Tensors start zeroed, as on the CPU.
  ST_CUDA_TRY(cudaMemsetAsync(*out, 0, bytes, cu->stream));
  return ST_OK;
}

static void cuda_release(st_backend *be, void *ptr) {
  st__cuda_pool_release(st__cuda(be), ptr);
}

static int cuda_upload(st_backend *be, void *dst, const void *host,
                       size_t bytes) {
  st_cuda_backend *cu = st__cuda(be);
  if (bytes == 0)
    return ST_OK;
  int rc = st__cuda_refuse_while_recording(cu, "upload");
  if (!rc)
    rc = pinned_reserve(cu, bytes);
  if (rc)
    return rc;
  memcpy(cu->pinned, host, bytes);
  ST_CUDA_TRY(cudaMemcpyAsync(dst, cu->pinned, bytes, cudaMemcpyHostToDevice,
                              cu->stream));
  ST_CUDA_TRY(cudaEventRecord(cu->pinned_free, cu->stream));
  return ST_OK;
}

static int cuda_download(st_backend *be, void *host, const void *src,
                         size_t bytes) {
  return st__cuda_read_back(st__cuda(be), host, src, bytes);
}

static int cuda_sync(st_backend *be) {
  int rc = st__cuda_refuse_while_recording(st__cuda(be), "wait");
  if (rc)
    return rc;
  ST_CUDA_TRY(cudaStreamSynchronize(st__cuda(be)->stream));
  return ST_OK;
}

// ---- graphs ---------------------------------------------------------------

typedef struct cuda_graph {
  struct st_graph base;  // owner, must be first
  cudaGraphExec_t exec;  // the instantiated recording
  int64_t buffers_epoch; // the owner's epoch when recorded
} cuda_graph;

static int cuda_graph_begin(st_backend *be) {
  st_cuda_backend *cu = st__cuda(be);
  if (cu->recording)
    return st_error_set(ST_EINVAL, "cuda: a graph is being recorded already");
  // Thread-local capture: only calls of this thread that cannot be
  // recorded are refused; other workers' contexts go on as before.
  ST_CUDA_TRY(
      cudaStreamBeginCapture(cu->stream, cudaStreamCaptureModeThreadLocal));
  cu->recording = 1;
  cu->recording_refused = 0;
  return ST_OK;
}

static int cuda_graph_end(st_backend *be, st_graph **out) {
  st_cuda_backend *cu = st__cuda(be);
  *out = NULL;
  if (!cu->recording)
    return st_error_set(ST_EINVAL, "cuda: no graph is being recorded");
  cu->recording = 0;
  cudaGraph_t graph = NULL;
  cudaError_t err = cudaStreamEndCapture(cu->stream, &graph);
  if (err != cudaSuccess || !graph || cu->recording_refused) {
    cudaGetLastError(); // an invalidated capture leaves a sticky-free error
    if (graph)
      cudaGraphDestroy(graph);
    return st_error_set(ST_EBACKEND, "cuda: recording failed: %s",
                        err != cudaSuccess ? cudaGetErrorString(err)
                                           : "a call was refused");
  }
  cudaGraphExec_t exec = NULL;
  err = cudaGraphInstantiateWithFlags(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return st_error_set(ST_EBACKEND, "cudaGraphInstantiateWithFlags failed: %s",
                        cudaGetErrorString(err));
  }
  cuda_graph *g = (cuda_graph *)calloc(1, sizeof *g);
  if (!g) {
    cudaGraphExecDestroy(exec);
    return st_error_set(ST_ENOMEM, "cuda graph: out of memory");
  }
  g->base.owner = be;
  g->exec = exec;
  g->buffers_epoch = cu->buffers_epoch;
  *out = &g->base;
  return ST_OK;
}

static int cuda_graph_valid(st_backend *be, const st_graph *g) {
  return g->owner == be &&
         ((const cuda_graph *)g)->buffers_epoch == st__cuda(be)->buffers_epoch;
}

static int cuda_graph_launch(st_backend *be, st_graph *g) {
  if (!cuda_graph_valid(be, g))
    return st_error_set(ST_EINVAL,
                        "cuda: graph recorded on another context or before "
                        "its buffers moved");
  int rc = st__cuda_refuse_while_recording(st__cuda(be), "graph launch");
  if (rc)
    return rc;
  ST_CUDA_TRY(cudaGraphLaunch(((cuda_graph *)g)->exec, st__cuda(be)->stream));
  return ST_OK;
}

static void cuda_graph_free(st_backend *be, st_graph *g) {
  (void)be;
  cuda_graph *cg = (cuda_graph *)g;
  // Safe while a launch is still queued: CUDA defers the release.
  cudaGraphExecDestroy(cg->exec);
  free(cg);
}

// Makes the calling thread address the context's device; a no-op (one
// cheap query) when it already does.
static int cuda_bind(st_backend *be) {
  int current = -1;
  ST_CUDA_TRY(cudaGetDevice(&current));
  if (current != st__cuda(be)->device)
    ST_CUDA_TRY(cudaSetDevice(st__cuda(be)->device));
  return ST_OK;
}

// A kernel fault (illegal address, assertion, ...) is sticky: it poisons
// the process's CUDA context and every later call returns it, which
// cudaStreamQuery reports without waiting. A healthy stream answers
// cudaSuccess (idle) or cudaErrorNotReady (busy), which the runtime also
// leaves in the thread's last-error slot: cleared, or the next launch check
// would report it. A stream being recorded is not queried (that would end
// the capture).
static int cuda_check(st_backend *be) {
  if (st__cuda(be)->recording)
    return ST_OK;
  const cudaError_t e = cudaStreamQuery(st__cuda(be)->stream);
  if (e == cudaErrorNotReady)
    (void)cudaGetLastError();
  if (e == cudaSuccess || e == cudaErrorNotReady)
    return ST_OK;
  return st_error_set(ST_ENODEV,
                      "cuda device %d lost: %s (%s); every later CUDA call "
                      "in this process fails, restart it",
                      st__cuda(be)->device, cudaGetErrorName(e),
                      cudaGetErrorString(e));
}

static void cuda_stats(const st_backend *be, st_backend_stats *out) {
  const st_cuda_pool *p = ((const st_cuda_backend *)be)->pool;
  out->alloc_calls = p->device_alloc_calls;
  out->bytes_reserved = (int64_t)p->reserved;
  out->bytes_in_use = (int64_t)p->in_use;
  out->algo_searches = ((const st_cuda_backend *)be)->algo_searches;
}

typedef struct cuda_event {
  struct st_event base; // ops header, must be first
  cudaEvent_t event;    // recorded on one context, waited on by others
} cuda_event;

static void cuda_event_free(st_event *ev) {
  cuda_event *ce = (cuda_event *)ev;
  cudaEventDestroy(ce->event);
  free(ce);
}

static const st_backend_ops *cuda_ops_table(void);

static int cuda_event_new(st_backend *be, st_event **out) {
  (void)be;
  cuda_event *ce = (cuda_event *)calloc(1, sizeof *ce);
  if (!ce)
    return st_error_set(ST_ENOMEM, "cuda event: out of memory");
  cudaError_t err = cudaEventCreateWithFlags(&ce->event,
                                             cudaEventDisableTiming);
  if (err != cudaSuccess) {
    free(ce);
    return st_error_set(ST_EBACKEND, "cudaEventCreateWithFlags failed: %s",
                        cudaGetErrorString(err));
  }
  ce->base.ops = cuda_ops_table();
  *out = &ce->base;
  return ST_OK;
}

// Neither is recorded into a graph: a captured event would pull the
// waiting stream into the capture (its work then never runs unrecorded).
static int cuda_event_record(st_backend *be, st_event *ev) {
  if (ev->ops != cuda_ops_table())
    return st_error_set(ST_EINVAL, "event was not made by a CUDA context");
  ST_TRY(st__cuda_refuse_while_recording(st__cuda(be), "event record"));
  ST_CUDA_TRY(cudaEventRecord(((cuda_event *)ev)->event, st__cuda(be)->stream));
  return ST_OK;
}

static int cuda_event_wait(st_backend *be, st_event *ev) {
  if (ev->ops != cuda_ops_table())
    return st_error_set(ST_EINVAL, "event was not made by a CUDA context");
  ST_TRY(st__cuda_refuse_while_recording(st__cuda(be), "event wait"));
  ST_CUDA_TRY(cudaStreamWaitEvent(st__cuda(be)->stream,
                                  ((cuda_event *)ev)->event, 0));
  return ST_OK;
}

static st_backend_ops make_ops(void) {
  st_backend_ops o;
  memset(&o, 0, sizeof o);
  o.name = "cuda";
  o.kind = ST_BACKEND_CUDA;
  o.host_memory = 0;
  o.free = cuda_free;
  o.alloc = cuda_alloc;
  o.release = cuda_release;
  o.upload = cuda_upload;
  o.download = cuda_download;
  o.sync = cuda_sync;
  o.bind = cuda_bind;
  o.check = cuda_check;
  o.stats = cuda_stats;
  o.event_new = cuda_event_new;
  o.event_record = cuda_event_record;
  o.event_wait = cuda_event_wait;
  o.event_free = cuda_event_free;
  o.graph_begin = cuda_graph_begin;
  o.graph_end = cuda_graph_end;
  o.graph_valid = cuda_graph_valid;
  o.graph_launch = cuda_graph_launch;
  o.graph_free = cuda_graph_free;
  o.conv2d_fwd = st__cuda_conv2d_fwd;
  o.conv2d_bwd_data = st__cuda_conv2d_bwd_data;
  o.conv2d_bwd_weights = st__cuda_conv2d_bwd_weights;
  o.batchnorm_fwd = st__cuda_batchnorm_fwd;
  o.batchnorm_bwd = st__cuda_batchnorm_bwd;
  o.relu_fwd = st__cuda_relu_fwd;
  o.relu_bwd = st__cuda_relu_bwd;
  o.add = st__cuda_add;
  o.concat_channels = st__cuda_concat_channels;
  o.split_channels = st__cuda_split_channels;
  o.subsample = st__cuda_subsample;
  o.subsample_bwd = st__cuda_subsample_bwd;
  o.resize_bilinear_fwd = st__cuda_resize_bilinear_fwd;
  o.resize_bilinear_bwd = st__cuda_resize_bilinear_bwd;
  o.weighted_ce = st__cuda_weighted_ce;
  o.weighted_ce_resized = st__cuda_weighted_ce_resized;
  o.argmax_channels = st__cuda_argmax_channels;
  o.argmax_resized = st__cuda_argmax_resized;
  o.confusion_counts = st__cuda_confusion_counts;
  o.adam_step = st__cuda_adam_step;
  o.adam_steps = st__cuda_adam_steps;
  o.cast = st__cuda_cast;
  o.copy = st__cuda_copy;
  o.fill = st__cuda_fill;
  o.image_to_tensor = st__cuda_image_to_tensor;
  o.unary = st__cuda_unary;
  o.binary = st__cuda_binary;
  o.pool2d = st__cuda_pool2d;
  o.global_avg_pool = st__cuda_global_avg_pool;
  o.resize = st__cuda_resize;
  o.softmax = st__cuda_softmax;
  o.transpose = st__cuda_transpose;
  o.concat = st__cuda_concat;
  o.slice = st__cuda_slice;
  o.argmax_axis = st__cuda_argmax_axis;
  return o;
}

static const st_backend_ops cuda_ops = make_ops();

static const st_backend_ops *cuda_ops_table(void) { return &cuda_ops; }

// Creates the stream and handles of a context; cuda_free undoes a partial
// initialisation.
static int cuda_init(st_cuda_backend *cu) {
  ST_CUDA_TRY(cudaSetDevice(cu->device));
  // Non-blocking: no implicit ordering with the legacy default stream.
  ST_CUDA_TRY(cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking));
  ST_CUDA_TRY(
      cudaEventCreateWithFlags(&cu->pinned_free, cudaEventDisableTiming));
  ST_CUDNN_TRY(cudnnCreate(&cu->cudnn));
  ST_CUDNN_TRY(cudnnSetStream(cu->cudnn, cu->stream));
  return ST_OK;
}

extern "C" int st__backend_cuda_new(const st_backend_options *opts,
                                    st_backend **out) {
  *out = NULL;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return st_error_set(ST_ENODEV, "cudaGetDeviceCount: %s",
                        cudaGetErrorString(err));
  }
  if (opts->device < 0 || opts->device >= count)
    return st_error_set(ST_ENODEV, "CUDA device %d requested, %d present",
                        opts->device, count);
  st_cuda_backend *cu = (st_cuda_backend *)calloc(1, sizeof *cu);
  st_cuda_pool *pool = (st_cuda_pool *)calloc(1, sizeof *pool);
  if (!cu || !pool) {
    free(cu);
    free(pool);
    return st_error_set(ST_ENOMEM, "cuda backend: out of memory");
  }
  cu->base.ops = &cuda_ops;
  cu->base.opts = *opts;
  cu->base.opts.kind = ST_BACKEND_CUDA;
  cu->device = opts->device;
  cu->pool = pool;
  int rc = cuda_init(cu);
  if (rc) {
    cuda_free(&cu->base);
    return rc;
  }
  *out = &cu->base;
  return ST_OK;
}
