/* The CPU backend: host memory, an OpenMP team, oneDNN convolutions. It is
 * the reference every other backend is compared with. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "gpu/cpu/cpu_impl.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

static void cpu_free(st_backend *be) {
  st_cpu_backend *cpu = st__cpu(be);
  st__cpu_conv_cache_free(cpu);
  free(cpu);
}

static int cpu_alloc(st_backend *be, size_t bytes, void **out) {
  st__cpu(be)->alloc_calls++;
  size_t rounded = (bytes + ST_HOST_ALIGN_BYTES - 1) / ST_HOST_ALIGN_BYTES *
                   ST_HOST_ALIGN_BYTES;
  void *p = aligned_alloc(ST_HOST_ALIGN_BYTES,
                          rounded ? rounded : ST_HOST_ALIGN_BYTES);
  if (!p)
    return st_error_set(ST_ENOMEM, "cpu: cannot allocate %zu bytes", bytes);
  memset(p, 0, bytes);
  *out = p;
  return ST_OK;
}

static void cpu_release(st_backend *be, void *ptr) {
  (void)be;
  free(ptr);
}

static void cpu_stats(const st_backend *be, st_backend_stats *out) {
  out->alloc_calls = ((const st_cpu_backend *)be)->alloc_calls;
}

static int cpu_memcpy(st_backend *be, void *dst, const void *src,
                      size_t bytes) {
  (void)be;
  if (bytes)
    memmove(dst, src, bytes);
  return ST_OK;
}

/* x86 MXCSR FTZ and DAZ, ARM FPCR FZ: subnormal results and inputs read as
 * zero on this thread from now on. */
static void flush_subnormals_on_this_thread(void) {
#if defined(__x86_64__) || defined(__i386__)
  enum { MXCSR_FTZ = 1u << 15, MXCSR_DAZ = 1u << 6 };
  _mm_setcsr(_mm_getcsr() | MXCSR_FTZ | MXCSR_DAZ);
#elif defined(__aarch64__)
  enum { FPCR_FZ_SHIFT = 24 };
  uint64_t fpcr;
  __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
  fpcr |= (uint64_t)1 << FPCR_FZ_SHIFT;
  __asm__ volatile("msr fpcr, %0" : : "r"(fpcr));
#endif
}

/* The caller and every thread of its OpenMP team: the team oneDNN and the
 * CPU ops run on. */
static void cpu_flush_subnormals(st_backend *be) {
  (void)be;
  flush_subnormals_on_this_thread();
#pragma omp parallel
  flush_subnormals_on_this_thread();
}

/* The kernel tables this build has, widest first (cpu_kernels.h); CMake
 * defines ST_CPU_KERNELS_X86 where it compiles the x86-64 ones. */
static const st_cpu_kernels *const cpu_kernel_sets[] = {
#if ST_CPU_KERNELS_X86
    &st__cpu_kernels_avx512,
    &st__cpu_kernels_avx2,
#endif
    &st__cpu_kernels_baseline,
};

/* Whether this CPU (and its OS, which must save the wider registers) runs
 * a table: the features its CMake flags enable. */
static int cpu_runs(const st_cpu_kernels *k) {
#if ST_CPU_KERNELS_X86
  __builtin_cpu_init();
  const int avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  if (k == &st__cpu_kernels_avx2)
    return avx2;
  if (k == &st__cpu_kernels_avx512)
    return avx2 && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") &&
           __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#endif
  return k == &st__cpu_kernels_baseline;
}

/* The table for a context: the one named (options, else $ST_CPU_ISA), which
 * must be built and run here, or the widest that runs. */
static int cpu_kernels_pick(const char *name, const st_cpu_kernels **out) {
  const size_t sets = sizeof cpu_kernel_sets / sizeof cpu_kernel_sets[0];
  if (!name || !*name)
    name = getenv("ST_CPU_ISA");
  for (size_t i = 0; i < sets; i++) {
    const st_cpu_kernels *k = cpu_kernel_sets[i];
    if (name && *name && strcmp(name, k->isa) != 0)
      continue;
    if (cpu_runs(k)) {
      *out = k;
      return ST_OK;
    }
    if (name && *name)
      return st_error_set(ST_ENOTSUP,
                          "cpu backend: this CPU does not run the %s kernels",
                          name);
  }
  if (name && *name)
    return st_error_set(ST_EINVAL,
                        "cpu backend: no \"%s\" kernels in this build "
                        "(cpu_isa or ST_CPU_ISA: baseline; avx2, avx512 "
                        "on x86-64)",
                        name);
  *out = &st__cpu_kernels_baseline;
  return ST_OK;
}

static const st_backend_ops cpu_ops = {
    .name = "cpu",
    .kind = ST_BACKEND_CPU,
    .host_memory = 1,
    .free = cpu_free,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .sync = NULL, /* every CPU op completes before it returns */
    .flush_subnormals = cpu_flush_subnormals,
    .stats = cpu_stats,
    .conv2d_fwd = st__cpu_conv2d_fwd,
    .conv2d_bwd_data = st__cpu_conv2d_bwd_data,
    .conv2d_bwd_weights = st__cpu_conv2d_bwd_weights,
    .batchnorm_fwd = st__cpu_batchnorm_fwd,
    .batchnorm_bwd = st__cpu_batchnorm_bwd,
    .relu_fwd = st__cpu_relu_fwd,
    .relu_bwd = st__cpu_relu_bwd,
    .add = st__cpu_add,
    .concat_channels = st__cpu_concat_channels,
    .split_channels = st__cpu_split_channels,
    .subsample = st__cpu_subsample,
    .subsample_bwd = st__cpu_subsample_bwd,
    .resize_bilinear_fwd = st__cpu_resize_bilinear_fwd,
    .resize_bilinear_bwd = st__cpu_resize_bilinear_bwd,
    .weighted_ce = st__cpu_weighted_ce,
    .weighted_ce_resized = st__cpu_weighted_ce_resized,
    .argmax_channels = st__cpu_argmax_channels,
    .argmax_resized = st__cpu_argmax_resized,
    .confusion_counts = st__cpu_confusion_counts,
    .adam_step = st__cpu_adam_step,
    .cast = st__cpu_cast,
    .copy = st__cpu_copy,
    .fill = st__cpu_fill,
    .image_to_tensor = st__cpu_image_to_tensor,
    .unary = st__cpu_unary,
    .binary = st__cpu_binary,
    .pool2d = st__cpu_pool2d,
    .global_avg_pool = st__cpu_global_avg_pool,
    .resize = st__cpu_resize,
    .softmax = st__cpu_softmax,
    .transpose = st__cpu_transpose,
    .concat = st__cpu_concat,
    .slice = st__cpu_slice,
    .argmax_axis = st__cpu_argmax_axis,
};

int st__backend_cpu_new(const st_backend_options *opts, st_backend **out) {
  *out = NULL;
  st_cpu_backend *cpu = calloc(1, sizeof *cpu);
  if (!cpu)
    return st_error_set(ST_ENOMEM, "cpu backend: out of memory");
  int rc = cpu_kernels_pick(opts->cpu_isa, &cpu->kernels);
  if (rc) {
    free(cpu);
    return rc;
  }
  cpu->base.ops = &cpu_ops;
  cpu->base.opts = *opts;
  cpu->base.opts.kind = ST_BACKEND_CPU;
  cpu->base.opts.cpu_isa = cpu->kernels->isa; /* the caller's string may go */
  int threads = opts->threads;
  if (threads <= 0) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    threads = online > 0 ? (int)online : 1;
  }
  cpu->threads = threads;
  /* oneDNN's OpenMP runtime sizes its team from the calling thread's
   * max-threads setting, so set it to the context's team size. */
  omp_set_num_threads(threads);
  *out = &cpu->base;
  return ST_OK;
}

const char *st_backend_cpu_isa(const st_backend *be) {
  return be->ops == &cpu_ops ? ((const st_cpu_backend *)be)->kernels->isa
                             : NULL;
}
