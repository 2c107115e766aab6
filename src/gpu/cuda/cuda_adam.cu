// One Adam step on the CUDA backend, in PyTorch 1.13's single-tensor
// formulation (_single_tensor_adam, no weight decay, no amsgrad), with the
// numerics of cpu_ops.c: the step-dependent scalars are computed on the
// host in double exactly as there and enter the kernel rounded to float;
// the per-element math is float in the same order, with each rounding
// spelled out as an _rn intrinsic so that nvcc fuses only where PyTorch's
// vectorised kernels (and the CPU's exact double emulation) fuse.
#include <math.h>

#include "gpu/cuda/cuda_impl.h"

// The float scalars of one step (see st__cuda_adam_step).
typedef struct adam_scalars {
  float neg_step_size;         // -lr / (1 - beta1^step)
  float bias_correction2_sqrt; // sqrt(1 - beta2^step)
  float b1, one_minus_b1;      // beta1 and 1 - beta1
  float b2, one_minus_b2;      // beta2 and 1 - beta2
  float eps;                   // added to the corrected sqrt(v)
} adam_scalars;

// One thread per element (grid-stride). param, m and v are updated in
// place; grad is only read.
static __global__ void adam_kernel(float *param, const float *grad, float *m,
                                   float *v, int64_t n, adam_scalars s) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
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
}

extern "C" int st__cuda_adam_step(st_backend *be, const st_adam_params *p,
                                  int64_t step, st_tensor *param,
                                  const st_tensor *grad, st_tensor *m,
                                  st_tensor *v) {
  st_cuda_backend *cu = st__cuda(be);
  const int64_t n = st_tensor_numel(param);
  if (n == 0)
    return ST_OK;
  const double lr = p->lr, beta1 = p->beta1, beta2 = p->beta2, eps = p->eps;
  // The scalars are Python floats (doubles) in PyTorch and are rounded to
  // float as each enters a float tensor op: the same expressions as
  // st__cpu_adam_step, so both backends get the same bits.
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
  adam_kernel<<<st__cuda_grid(n), ST_CUDA_BLOCK, 0, cu->stream>>>(
      (float *)param->data, (const float *)grad->data, (float *)m->data,
      (float *)v->data, n, s);
  ST_CUDA_LAUNCHED();
  return ST_OK;
}
