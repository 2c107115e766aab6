#include "conv_cases.h"

#include <stdio.h>
#include <string.h>

const char *const conv_case_names[] = {
    "k3s1", "k3s2_relu",   "k1s2",  "k13",   "k31_sum",
    "dil2", "g2_relu_sum", "dw_s2", "mixed",
};
const size_t conv_case_count =
    sizeof conv_case_names / sizeof conv_case_names[0];

/* Index of each entry of the fixture's '<case>.params' vector. */
enum {
  PARAM_STRIDE_H,
  PARAM_STRIDE_W,
  PARAM_PAD_H,
  PARAM_PAD_W,
  PARAM_DIL_H,
  PARAM_DIL_W,
  PARAM_GROUPS,
  PARAM_BIAS,
  PARAM_RELU,
  PARAM_BETA,
  PARAM_COUNT
};

static st_tensor case_tensor(const st_safetensors *fx, const char *cname,
                             const char *what) {
  char name[128];
  snprintf(name, sizeof name, "%s.%s", cname, what);
  return st_test_fixture_tensor(fx, name);
}

void conv_case_load(const st_safetensors *fx, const char *cname,
                    conv_case *c) {
  memset(c, 0, sizeof *c);
  c->name = cname;
  st_tensor prm = case_tensor(fx, cname, "params");
  assert_int_equal(prm.dtype, ST_I32);
  assert_int_equal(st_tensor_numel(&prm), PARAM_COUNT);
  const int32_t *v = prm.data;
  c->p.stride[0] = v[PARAM_STRIDE_H];
  c->p.stride[1] = v[PARAM_STRIDE_W];
  c->p.pad[0] = v[PARAM_PAD_H];
  c->p.pad[1] = v[PARAM_PAD_W];
  c->p.dilation[0] = v[PARAM_DIL_H];
  c->p.dilation[1] = v[PARAM_DIL_W];
  c->p.groups = v[PARAM_GROUPS];
  c->has_bias = v[PARAM_BIAS];
  c->relu = v[PARAM_RELU];
  c->beta = v[PARAM_BETA];
  st_tensor_free(&prm);
  c->x = case_tensor(fx, cname, "x");
  c->w = case_tensor(fx, cname, "w");
  c->y = case_tensor(fx, cname, "y");
  c->dy = case_tensor(fx, cname, "dy");
  c->dx = case_tensor(fx, cname, "dx");
  c->dw = case_tensor(fx, cname, "dw");
  if (c->has_bias) {
    c->b = case_tensor(fx, cname, "b");
    c->db = case_tensor(fx, cname, "db");
  }
  if (c->beta)
    c->y0 = case_tensor(fx, cname, "y0");
}

void conv_case_upload(st_backend *be, conv_case *c) {
  c->dev_x = st_test_to_backend(be, &c->x);
  c->dev_w = st_test_to_backend(be, &c->w);
  c->dev_dy = st_test_to_backend(be, &c->dy);
  ST_ASSERT_OK(st_tensor_alloc(be, &c->dev_y, ST_F32, 4, c->y.shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &c->dev_dx, ST_F32, 4, c->x.shape));
  ST_ASSERT_OK(st_tensor_alloc(be, &c->dev_dw, ST_F32, 4, c->w.shape));
  if (c->has_bias) {
    c->dev_b = st_test_to_backend(be, &c->b);
    ST_ASSERT_OK(st_tensor_alloc(be, &c->dev_db, ST_F32, 1, c->db.shape));
  }
}

void conv_case_free(conv_case *c) {
  st_tensor *all[] = {&c->x,      &c->w,     &c->b,      &c->y0,    &c->y,
                      &c->dy,     &c->dx,    &c->dw,     &c->db,    &c->dev_x,
                      &c->dev_w,  &c->dev_b, &c->dev_dy, &c->dev_y, &c->dev_dx,
                      &c->dev_dw, &c->dev_db};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    st_tensor_free(all[i]);
}
