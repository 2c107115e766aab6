/* The convolution fixture cases (tests/fixtures/conv.safetensors, made by
 * gen_conv.py) shared by test_conv.c and test_cuda_conv.c. */
#ifndef ST_TESTS_CONV_CASES_H
#define ST_TESTS_CONV_CASES_H

#include "testutil.h"

#define CONV_FIXTURE "conv.safetensors"

/* fp32 against a float64 reference: sums of at most a few hundred terms of
 * magnitude <= 1 stay well inside these (raised on a GPU to the testutil
 * floors). */
#define CONV_RTOL 1e-4
#define CONV_ATOL 2e-5
/* Weight and bias gradients sum over N*OH*OW positions (up to ~550 here). */
#define CONV_GRAD_ATOL 1e-4

extern const char *const conv_case_names[];
extern const size_t conv_case_count;

/* One fixture case: host reference tensors (b, db, y0 zero when absent) and,
 * after conv_case_upload, backend tensors for repeated runs. */
typedef struct conv_case {
  const char *name;
  st_conv2d_params p;
  int has_bias, relu, beta;
  st_tensor x, w, b, y0, y, dy, dx, dw, db;
  st_tensor dev_x, dev_w, dev_b, dev_dy, dev_y, dev_dx, dev_dw, dev_db;
} conv_case;

/* Reads case `cname` of the fixture file into host tensors. */
void conv_case_load(const st_safetensors *fx, const char *cname,
                    conv_case *c);
/* Copies the inputs to `be` and allocates the outputs there. */
void conv_case_upload(st_backend *be, conv_case *c);
/* Frees host and backend tensors. */
void conv_case_free(conv_case *c);

#endif
