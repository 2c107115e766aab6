// One Adam step on the CUDA backend, in PyTorch 1.13's single-tensor
// formulation (_single_tensor_adam, no weight decay, no amsgrad), with the
// numerics of cpu_ops.c: the step-dependent scalars are computed on the
// host in double exactly as there and enter the kernel rounded to float;
// the per-element math is float in the same order, with each rounding
// spelled out as an _rn intrinsic so that nvcc fuses only where PyTorch's
// vectorised kernels (and the CPU's exact double emulation) fuse.
// st__cuda_adam_steps runs the same element update over up to 32 tensors
// per launch (an optimiser step of the student: 26 tensors, one launch).
#include <math.h>
#include <string.h>

#include "gpu/cuda/cuda_impl.h"

// The float scalars of one step (see st__cuda_adam_step).
typedef struct adam_scalars {
  float neg_step_size;         // -lr / (1 - beta1^step)
  float bias_correction2_sqrt; // sqrt(1 - beta2^step)
  float b1, one_minus_b1;      // beta1 and 1 - beta1
  float b2, one_minus_b2;      // beta2 and 1 - beta2
  float eps;                   // added to the corrected sqrt(v)
} adam_scalars;

// One element's update: param, m and v in place, grad only read.
__device__ static inline void adam_element(float *param, const float *grad,
                                           float *m, float *v, int64_t i,
                                           const adam_scalars &s) {
  const float g = grad[i];
  // exp_avg.mul_(beta1).add_(grad, alpha=1-beta1): the multiply rounds,
  // the add fuses its multiply (fmadd).
  const float mi = __fmaf_rn(g, s.one_minus_b1, __fmul_rn(m[i], s.b1));
  // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2): value *
  // grad rounds, then the second multiply fuses with the add.
  const float vi =
      __fmaf_rn(__fmul_rn(s.one_minus_b2, g), g, __fmul_rn(v[i], s.b2));
  // (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
  const float denom =
      __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bias_correction2_sqrt), s.eps);
  // param.addcdiv_(exp_avg, denom, value=-step_size)
  param[i] =
      __fadd_rn(param[i], __fdiv_rn(__fmul_rn(s.neg_step_size, mi), denom));
  m[i] = mi;
  v[i] = vi;
}

// One thread per element (grid-stride).
static __global__ void adam_kernel(float *param, const float *grad, float *m,
                                   float *v, int64_t n, adam_scalars s) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    adam_element(param, grad, m, v, i, s);
}

// Tensors one multi-tensor launch updates: the batch travels as a kernel
// parameter (32 x 40 bytes, well inside the 4 KiB parameter space), so the
// launch needs no device table and no copy.
#define ST_CUDA_ADAM_BATCH 32

typedef struct adam_tensor {
  float *param;
  const float *grad;
  float *m, *v;
  int64_t n; // elements
} adam_tensor;

typedef struct adam_batch {
  adam_tensor t[ST_CUDA_ADAM_BATCH];
} adam_batch;

// blockIdx.y picks the tensor; its blocks along x stride over its elements
// (blocks past a small tensor's end have nothing to do).
static __global__ void adam_batch_kernel(adam_batch b, adam_scalars s) {
  const adam_tensor t = b.t[blockIdx.y];
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < t.n;
       i += (int64_t)gridDim.x * blockDim.x)
    adam_element(t.param, t.grad, t.m, t.v, i, s);
}

// The scalars are Python floats (doubles) in PyTorch and are rounded to
// float as each enters a float tensor op: the same expressions as
// st__cpu_adam_step, so both backends get the same bits.
static adam_scalars scalars_for(const st_adam_params *p, int64_t step) {
  const double lr = p->lr, beta1 = p->beta1, beta2 = p->beta2, eps = p->eps;
  const double bias_correction1 = 1.0 - pow(beta1, (double)step);
  const double bias_correction2 = 1.0 - pow(beta2, (double)step);
  adam_scalars s;
  s.neg_step_size = (float)-(lr / bias_correction1);
  s.bias_correction2_sqrt = (float)sqrt(bias_correction2);
  s.b1 = (float)beta1;
  s.one_minus_b1 = (float)(1.0 - beta1);
  s.b2 = (float)beta2;
  s.one_minus_b2 = (float)(1.0 - beta2);
  s.eps = (float)eps;
  return s;
}

extern "C" int st__cuda_adam_step(st_backend *be, const st_adam_params *p,
                                  int64_t step, st_tensor *param,
                                  const st_tensor *grad, st_tensor *m,
                                  st_tensor *v) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = st_tensor_numel(param);
  if (n == 0)
    return ST_OK;
  adam_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (float *)param->data, (const float *)grad->data, (float *)m->data,
      (float *)v->data, n, scalars_for(p, step));
  ST_CUDA_LAUNCHED();
  return ST_OK;
}

extern "C" int st__cuda_adam_steps(st_backend *be, const st_adam_params *p,
                                   int64_t step, int count,
                                   st_tensor *const *params,
                                   const st_tensor *const *grads,
                                   st_tensor *const *ms, st_tensor *const *vs) {
  st_cuda_backend *cu = st__cuda(be);
  const adam_scalars s = scalars_for(p, step);
  for (int first = 0; first < count; first += ST_CUDA_ADAM_BATCH) {
    adam_batch b;
    memset(&b, 0, sizeof b);
    int used = 0;
    int64_t largest = 0;
    for (int i = first; i < count && i < first + ST_CUDA_ADAM_BATCH; i++) {
      const int64_t n = st_tensor_numel(params[i]);
      if (n == 0)
        continue;
      b.t[used++] = adam_tensor{(float *)params[i]->data,
                                (const float *)grads[i]->data,
                                (float *)ms[i]->data, (float *)vs[i]->data, n};
      largest = n > largest ? n : largest;
    }
    if (!used)
      continue;
    adam_batch_kernel<<<dim3(st__cuda_grid(largest), (unsigned)used),
                        ST_CUDA_BLOCK, 0, cu->stream>>>(b, s);
    ST_CUDA_LAUNCHED();
  }
  return ST_OK;
}
