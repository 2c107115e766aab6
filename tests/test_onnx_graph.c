/* ONNX loading: models exported by PyTorch and hand-built with the onnx
 * package, checked field by field against what the python onnx package read
 * from the same files (tests/fixtures/onnx_expected.json, written by
 * gen_onnx.py); the typed attribute accessors; every refusal with its status
 * and message; and truncated, corrupted, garbage and deeply nested inputs,
 * which must fail with ST_EFORMAT and never crash (run under ASan too).
 *
 * Host-only (no backend is involved), so this is a plain cmocka group. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "models/onnx_graph.h"

static const char EXPECTED_JSON[] = "onnx_expected.json";
static const char CONVNET[] = "onnx_convnet_op11.onnx";
static const char SENET[] = "onnx_se_op17.onnx";
static const char TYPED[] = "onnx_typed.onnx";

/* Relative tolerance of element sums: both sides sum float32 values in
 * double, only in another order. */
#define SUM_RTOL 1e-12
/* Truncation: every cut in the first and last bytes of a file, a stride in
 * between. */
enum { CUT_HEAD_BYTES = 300, CUT_TAIL_BYTES = 64, CUT_STRIDE_BYTES = 37 };
/* Random corruption of a valid file: how many tries, bytes flipped each. */
enum { MUTATION_TRIES = 400, MUTATION_MAX_FLIPS = 4 };
/* Leading values of each tensor listed in the expectations (gen_onnx.py's
 * FIRST_VALUES). */
enum { FIRST_VALUES = 6 };

static json_t *expected; /* the whole expectations document */

/* ---- helpers ------------------------------------------------------------- */

static uint8_t *read_fixture(const char *name, size_t *len) {
  const char *path = st_test_fixture_path(name);
  FILE *f = fopen(path, "rb");
  if (!f)
    fail_msg("cannot open %s", path);
  assert_int_equal(fseek(f, 0, SEEK_END), 0);
  long size = ftell(f);
  assert_true(size > 0);
  rewind(f);
  uint8_t *buf = malloc((size_t)size);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
  fclose(f);
  *len = (size_t)size;
  return buf;
}

static st_onnx_model *load_fixture(const char *name) {
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_onnx_model_load(st_test_fixture_path(name), &m));
  assert_non_null(m);
  return m;
}

static json_t *expect_get(json_t *obj, const char *key) {
  json_t *v = json_object_get(obj, key);
  if (!v)
    fail_msg("expectations lack '%s'", key);
  return v;
}

static uint64_t xorshift(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* Parses a buffer that must be refused with `code`; the detail line must
 * start with the label (and contain `needle` when given). */
static void expect_parse_fails(const void *buf, size_t len, const char *label,
                               int code, const char *needle) {
  static char sentinel;
  st_onnx_model *m = (st_onnx_model *)&sentinel; /* must be cleared */
  st_error_clear();
  int rc = st_onnx_model_parse(buf, len, label, &m);
  const char *detail = st_error_detail();
  if (rc != code)
    fail_msg("%s (%zu bytes): got %s (%s), want %s", label, len,
             st_err_name(rc), detail, st_err_name(code));
  assert_null(m);
  if (strncmp(detail, label, strlen(label)) != 0 ||
      (needle && !strstr(detail, needle)))
    fail_msg("%s: detail '%s' does not name the label and '%s'", label,
             detail, needle ? needle : "");
}

/* ---- comparison with the expectations ------------------------------------ */

static void check_value_info(const st_onnx_value_info *vi, json_t *want,
                             const char *what) {
  assert_string_equal(vi->name,
                      json_string_value(expect_get(want, "name")));
  assert_int_equal(vi->elem_type,
                   json_integer_value(expect_get(want, "elem_type")));
  json_t *dims = expect_get(want, "dims");
  if (json_is_null(dims)) {
    if (vi->ndim != -1)
      fail_msg("%s '%s': rank %d, want unknown (-1)", what, vi->name,
               vi->ndim);
    return;
  }
  assert_int_equal(vi->ndim, json_array_size(dims));
  json_t *params = expect_get(want, "dim_params");
  for (int i = 0; i < vi->ndim; i++) {
    if (vi->dims[i] != json_integer_value(json_array_get(dims, (size_t)i)))
      fail_msg("%s '%s': dims[%d] = %lld, want %lld", what, vi->name, i,
               (long long)vi->dims[i],
               (long long)json_integer_value(json_array_get(dims, (size_t)i)));
    json_t *p = json_array_get(params, (size_t)i);
    if (json_is_null(p))
      assert_null(vi->dim_params[i]);
    else
      assert_string_equal(vi->dim_params[i], json_string_value(p));
  }
}

/* Element i of a tensor as a double (F16 as its bit pattern, the way the
 * expectations list it). */
static double tensor_elem(const st_tensor *t, size_t i) {
  switch (t->dtype) {
  case ST_F32:
    return ((const float *)t->data)[i];
  case ST_F16:
    return ((const uint16_t *)t->data)[i];
  case ST_U8:
    return ((const uint8_t *)t->data)[i];
  case ST_I32:
    return ((const int32_t *)t->data)[i];
  case ST_I64:
    return (double)((const int64_t *)t->data)[i];
  default:
    fail_msg("unexpected dtype %d", (int)t->dtype);
    return 0;
  }
}

static void check_tensor(const st_tensor *t, json_t *want, const char *what) {
  assert_non_null(t);
  assert_null(t->backend);
  assert_string_equal(st_dtype_name(t->dtype),
                      json_string_value(expect_get(want, "dtype")));
  json_t *shape = expect_get(want, "shape");
  assert_int_equal(t->ndim, json_array_size(shape));
  for (int i = 0; i < t->ndim; i++)
    assert_int_equal(t->shape[i],
                     json_integer_value(json_array_get(shape, (size_t)i)));
  size_t n = (size_t)st_tensor_numel(t);
  json_t *first = expect_get(want, "first");
  assert_int_equal(json_array_size(first), n < FIRST_VALUES ? n : FIRST_VALUES);
  for (size_t i = 0; i < json_array_size(first); i++) {
    json_t *w = json_array_get(first, i);
    if (t->dtype == ST_I64) {
      /* Exact: doubles cannot hold every int64. */
      if (((const int64_t *)t->data)[i] != json_integer_value(w))
        fail_msg("%s[%zu] = %lld, want %lld", what, i,
                 (long long)((const int64_t *)t->data)[i],
                 (long long)json_integer_value(w));
    } else if (t->dtype == ST_F32) {
      /* Bit-exact: the loader copies the file's floats. */
      if (((const float *)t->data)[i] != (float)json_number_value(w))
        fail_msg("%s[%zu] = %.9g, want %.9g", what, i,
                 (double)((const float *)t->data)[i], json_number_value(w));
    } else if (tensor_elem(t, i) != json_number_value(w)) {
      fail_msg("%s[%zu] = %.17g, want %.17g", what, i, tensor_elem(t, i),
               json_number_value(w));
    }
  }
  double sum = 0, want_sum = json_number_value(expect_get(want, "sum"));
  for (size_t i = 0; i < n; i++)
    sum += tensor_elem(t, i);
  if (fabs(sum - want_sum) > SUM_RTOL * fmax(1.0, fabs(want_sum)))
    fail_msg("%s: sum %.17g, want %.17g", what, sum, want_sum);
}

static void check_attr(const st_onnx_node *node, const st_onnx_attr *a,
                       json_t *want) {
  char what[256];
  snprintf(what, sizeof what, "node '%s' attribute '%s'", node->name,
           a->name);
  const char *type = json_string_value(expect_get(want, "type"));
  if (strcmp(st_onnx_attr_type_name(a->type), type) != 0)
    fail_msg("%s: type %s, want %s", what, st_onnx_attr_type_name(a->type),
             type);
  json_t *v = expect_get(want, "value");
  switch (a->type) {
  case ST_ONNX_ATTR_INT:
    assert_int_equal(a->i, json_integer_value(v));
    break;
  case ST_ONNX_ATTR_FLOAT:
    if (a->f != (float)json_number_value(v))
      fail_msg("%s: %.9g, want %.9g", what, (double)a->f,
               json_number_value(v));
    break;
  case ST_ONNX_ATTR_STRING:
    assert_string_equal(a->s, json_string_value(v));
    assert_int_equal(a->s_len, strlen(json_string_value(v)));
    break;
  case ST_ONNX_ATTR_INTS:
    assert_int_equal(a->count, json_array_size(v));
    for (size_t i = 0; i < a->count; i++)
      assert_int_equal(a->ints[i], json_integer_value(json_array_get(v, i)));
    break;
  case ST_ONNX_ATTR_FLOATS:
    assert_int_equal(a->count, json_array_size(v));
    for (size_t i = 0; i < a->count; i++)
      if (a->floats[i] != (float)json_number_value(json_array_get(v, i)))
        fail_msg("%s[%zu] differs", what, i);
    break;
  case ST_ONNX_ATTR_STRINGS:
    assert_int_equal(a->count, json_array_size(v));
    for (size_t i = 0; i < a->count; i++)
      assert_string_equal(a->strings[i],
                          json_string_value(json_array_get(v, i)));
    break;
  case ST_ONNX_ATTR_TENSOR:
    check_tensor(a->tensor, v, what);
    break;
  default:
    assert_true(json_is_null(v)); /* not decoded */
    break;
  }
}

static void check_node(const st_onnx_model *m, size_t index, json_t *want) {
  const st_onnx_node *node = &m->nodes[index];
  assert_string_equal(node->op_type,
                      json_string_value(expect_get(want, "op_type")));
  assert_string_equal(node->name, json_string_value(expect_get(want, "name")));
  assert_string_equal(node->label, m->label);
  json_t *inputs = expect_get(want, "inputs");
  assert_int_equal(node->n_inputs, json_array_size(inputs));
  for (size_t k = 0; k < node->n_inputs; k++) {
    assert_string_equal(node->inputs[k],
                        json_string_value(json_array_get(inputs, k)));
    /* Every present input is defined by something before this node. */
    st_onnx_value_ref ref;
    if (node->inputs[k][0]) {
      ST_ASSERT_OK(st_onnx_model_find(m, node->inputs[k], &ref));
      if (ref.kind == ST_ONNX_VALUE_NODE_OUTPUT)
        assert_true(ref.index < index);
    }
  }
  json_t *outputs = expect_get(want, "outputs");
  assert_int_equal(node->n_outputs, json_array_size(outputs));
  for (size_t k = 0; k < node->n_outputs; k++) {
    assert_string_equal(node->outputs[k],
                        json_string_value(json_array_get(outputs, k)));
    st_onnx_value_ref ref;
    if (node->outputs[k][0]) {
      ST_ASSERT_OK(st_onnx_model_find(m, node->outputs[k], &ref));
      assert_int_equal(ref.kind, ST_ONNX_VALUE_NODE_OUTPUT);
      assert_int_equal(ref.index, index);
      assert_int_equal(ref.output, k);
    }
  }
  json_t *attrs = expect_get(want, "attrs");
  assert_int_equal(node->n_attrs, json_object_size(attrs));
  for (size_t k = 0; k < node->n_attrs; k++) {
    const st_onnx_attr *a = &node->attrs[k];
    json_t *w = json_object_get(attrs, a->name);
    if (!w)
      fail_msg("node '%s': unexpected attribute '%s'", node->name, a->name);
    assert_ptr_equal(st_onnx_node_attr(node, a->name), a);
    check_attr(node, a, w);
  }
}

/* Loads a fixture and compares everything with the expectations. */
static st_onnx_model *check_model(const char *file) {
  json_t *want = expect_get(expect_get(expected, "models"), file);
  st_onnx_model *m = load_fixture(file);
  assert_string_equal(m->label, st_test_fixture_path(file));
  assert_int_equal(m->ir_version,
                   json_integer_value(expect_get(want, "ir_version")));
  assert_int_equal(m->opset, json_integer_value(expect_get(want, "opset")));
  assert_string_equal(m->producer_name,
                      json_string_value(expect_get(want, "producer_name")));

  json_t *inputs = expect_get(want, "inputs");
  assert_int_equal(m->n_inputs, json_array_size(inputs));
  for (size_t i = 0; i < m->n_inputs; i++) {
    check_value_info(&m->inputs[i], json_array_get(inputs, i), "input");
    st_onnx_value_ref ref;
    ST_ASSERT_OK(st_onnx_model_find(m, m->inputs[i].name, &ref));
    assert_int_equal(ref.kind, ST_ONNX_VALUE_INPUT);
    assert_int_equal(ref.index, i);
  }
  json_t *outputs = expect_get(want, "outputs");
  assert_true(json_array_size(outputs) > 0);
  assert_int_equal(m->n_outputs, json_array_size(outputs));
  for (size_t i = 0; i < m->n_outputs; i++)
    check_value_info(&m->outputs[i], json_array_get(outputs, i), "output");

  json_t *inits = expect_get(want, "initializers");
  assert_int_equal(m->n_initializers, json_array_size(inits));
  for (size_t i = 0; i < m->n_initializers; i++) {
    json_t *w = json_array_get(inits, i);
    const st_onnx_initializer *init = &m->initializers[i];
    assert_string_equal(init->name, json_string_value(expect_get(w, "name")));
    assert_ptr_equal(st_onnx_model_initializer(m, init->name), init);
    check_tensor(&init->tensor, w, init->name);
  }

  json_t *nodes = expect_get(want, "nodes");
  assert_true(json_array_size(nodes) > 0);
  assert_int_equal(m->n_nodes, json_array_size(nodes));
  for (size_t i = 0; i < m->n_nodes; i++)
    check_node(m, i, json_array_get(nodes, i));
  return m;
}

/* Index of the first node of an op type, failing when there is none. */
static const st_onnx_node *find_op(const st_onnx_model *m, const char *op) {
  for (size_t i = 0; i < m->n_nodes; i++)
    if (strcmp(m->nodes[i].op_type, op) == 0)
      return &m->nodes[i];
  fail_msg("no %s node", op);
  return NULL;
}

static void assert_ints(const st_onnx_node *node, const char *name,
                        const int64_t *want, size_t n) {
  const int64_t *v;
  size_t count;
  ST_ASSERT_OK(st_onnx_attr_ints(node, name, &v, &count));
  assert_int_equal(count, n);
  for (size_t i = 0; i < n; i++)
    assert_int_equal(v[i], want[i]);
}

/* ---- the exported models ------------------------------------------------- */

static void test_convnet_op11(void **state) {
  (void)state;
  st_onnx_model *m = check_model(CONVNET);
  /* What this fixture is for, independently of the expectations file. */
  assert_int_equal(m->opset, 11);
  static const char *const ops[] = {"Conv",  "BatchNormalization", "Relu",
                                    "Shape", "Gather",   "Constant",
                                    "Unsqueeze", "Concat", "Slice", "Cast",
                                    "Resize"};
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    find_op(m, ops[i]);
  /* conv1: 3x3 stride 2 pad 1; conv2: dilation 2 pad 2. */
  const st_onnx_node *conv1 = &m->nodes[0];
  assert_string_equal(conv1->op_type, "Conv");
  assert_ints(conv1, "strides", (const int64_t[]){2, 2}, 2);
  assert_ints(conv1, "pads", (const int64_t[]){1, 1, 1, 1}, 4);
  assert_ints(conv1, "kernel_shape", (const int64_t[]){3, 3}, 2);
  const st_onnx_node *conv2 = &m->nodes[3];
  assert_string_equal(conv2->op_type, "Conv");
  assert_ints(conv2, "dilations", (const int64_t[]){2, 2}, 2);
  int64_t group;
  ST_ASSERT_OK(st_onnx_attr_int(conv2, "group", 1, &group));
  assert_int_equal(group, 1);
  const st_onnx_node *resize = find_op(m, "Resize");
  const char *mode, *ctm;
  ST_ASSERT_OK(st_onnx_attr_string(resize, "mode", "nearest", &mode));
  assert_string_equal(mode, "linear");
  ST_ASSERT_OK(st_onnx_attr_string(resize, "coordinate_transformation_mode",
                                   "half_pixel", &ctm));
  assert_string_equal(ctm, "half_pixel");
  /* Symbolic height and width. */
  assert_int_equal(m->n_inputs, 1);
  assert_int_equal(m->inputs[0].ndim, 4);
  assert_int_equal(m->inputs[0].dims[1], 3);
  assert_int_equal(m->inputs[0].dims[2], -1);
  assert_string_equal(m->inputs[0].dim_params[2], "height");
  /* BN statistics were randomised: running_var is in [0.5, 1.5). */
  const st_onnx_initializer *var =
      st_onnx_model_initializer(m, "bn1.running_var");
  assert_non_null(var);
  assert_int_equal(var->tensor.ndim, 1);
  assert_int_equal(var->tensor.shape[0], 8);
  for (int i = 0; i < 8; i++) {
    float v = ((const float *)var->tensor.data)[i];
    assert_true(v >= 0.5f && v < 1.5f);
  }
  st_onnx_model_free(m);
}

static void test_se_op17(void **state) {
  (void)state;
  st_onnx_model *m = check_model(SENET);
  assert_int_equal(m->opset, 17);
  find_op(m, "HardSwish");
  find_op(m, "GlobalAveragePool");
  find_op(m, "Mul");
  /* PyTorch exports Hardsigmoid as alpha = 1/6, beta = 1/2. */
  const st_onnx_node *hs = find_op(m, "HardSigmoid");
  float alpha, beta;
  ST_ASSERT_OK(st_onnx_attr_float(hs, "alpha", 0.2f, &alpha));
  ST_ASSERT_OK(st_onnx_attr_float(hs, "beta", 0.5f, &beta));
  assert_float_equal(alpha, 1.0 / 6.0, 1e-7);
  assert_float_equal(beta, 0.5, 0);
  /* Fixed size: no symbolic dims. */
  static const int64_t in_dims[] = {1, 3, 29, 43};
  assert_int_equal(m->inputs[0].ndim, 4);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(m->inputs[0].dims[i], in_dims[i]);
    assert_null(m->inputs[0].dim_params[i]);
  }
  st_onnx_model_free(m);
}

/* ---- the hand-built model: storage forms and attribute accessors ---------- */

static const st_tensor *init_tensor(const st_onnx_model *m, const char *name) {
  const st_onnx_initializer *init = st_onnx_model_initializer(m, name);
  if (!init)
    fail_msg("no initializer '%s'", name);
  return &init->tensor;
}

static void test_typed_storage(void **state) {
  (void)state;
  st_onnx_model *m = check_model(TYPED);
  /* Values written literally in gen_onnx.py, read back from both the typed
   * fields and raw_data. */
  const st_tensor *t = init_tensor(m, "shape_int64_data");
  assert_int_equal(t->dtype, ST_I64);
  static const int64_t i64[] = {1, -1, 1ll << 40, -3};
  assert_memory_equal(t->data, i64, sizeof i64);
  t = init_tensor(m, "i64_raw");
  assert_memory_equal(t->data, ((const int64_t[]){9, -10, 11}),
                      3 * sizeof(int64_t));
  t = init_tensor(m, "idx_int32_data");
  assert_int_equal(t->dtype, ST_I32);
  assert_memory_equal(t->data, ((const int32_t[]){7, -8, INT32_MAX}),
                      3 * sizeof(int32_t));
  t = init_tensor(m, "i32_raw");
  assert_memory_equal(t->data, ((const int32_t[]){-5, 6}),
                      2 * sizeof(int32_t));
  t = init_tensor(m, "u8_int32_data");
  assert_int_equal(t->dtype, ST_U8);
  assert_memory_equal(t->data, ((const uint8_t[]){0, 1, 254, 255}), 4);
  t = init_tensor(m, "u8_raw");
  assert_memory_equal(t->data, ((const uint8_t[]){3, 1, 4}), 3);
  /* FLOAT16 is kept as F16 bits, from int32_data and from raw_data. */
  static const float f16_values[] = {1.5f, -2.25f, 65504.0f};
  t = init_tensor(m, "f16_int32_data");
  assert_int_equal(t->dtype, ST_F16);
  const st_tensor *r = init_tensor(m, "f16_raw");
  for (int i = 0; i < 3; i++) {
    assert_float_equal(st_f16_to_f32(((const uint16_t *)t->data)[i]),
                       f16_values[i], 0);
    assert_float_equal(st_f16_to_f32(((const uint16_t *)r->data)[3 - i]),
                       f16_values[i], 0);
  }
  /* float_data and raw_data of the same values (raw is 2x). */
  const st_tensor *w = init_tensor(m, "w_float_data");
  const st_tensor *w2 = init_tensor(m, "w_raw");
  assert_int_equal(w->ndim, 2);
  for (int i = 0; i < 6; i++)
    assert_float_equal(((const float *)w2->data)[i],
                       2 * ((const float *)w->data)[i], 0);
  t = init_tensor(m, "scalar");
  assert_int_equal(t->ndim, 0);
  assert_float_equal(*(const float *)t->data, 0.25, 0);
  t = init_tensor(m, "empty");
  assert_int_equal(t->ndim, 2);
  assert_int_equal(st_tensor_numel(t), 0);

  /* 'scalar' is listed as a graph input too, but is an initializer. */
  assert_int_equal(m->n_inputs, 1);
  assert_string_equal(m->inputs[0].name, "x");
  assert_string_equal(m->inputs[0].dim_params[0], "N");
  st_onnx_value_ref ref;
  ST_ASSERT_OK(st_onnx_model_find(m, "scalar", &ref));
  assert_int_equal(ref.kind, ST_ONNX_VALUE_INITIALIZER);
  assert_int_equal(st_onnx_model_find(m, "no such value", &ref), ST_ENOENT);
  assert_null(st_onnx_model_initializer(m, "x"));
  /* Output 'y' has no shape; 'z' has a dimension with neither value nor
   * name. */
  assert_int_equal(m->outputs[0].ndim, -1);
  assert_int_equal(m->outputs[1].ndim, 3);
  assert_int_equal(m->outputs[1].dims[0], -1);
  assert_null(m->outputs[1].dim_params[0]);

  /* Unnamed nodes get "node<i>"; absent optional inputs and outputs are
   * "". */
  assert_string_equal(m->nodes[0].name, "node0");
  assert_string_equal(m->nodes[5].name, "node5");
  assert_string_equal(m->nodes[2].op_type, "Resize");
  assert_string_equal(m->nodes[2].inputs[1], "");
  assert_string_equal(m->nodes[4].outputs[1], "");
  ST_ASSERT_OK(st_onnx_model_find(m, "c", &ref));
  assert_int_equal(ref.kind, ST_ONNX_VALUE_NODE_OUTPUT);
  assert_int_equal(ref.index, 3);
  assert_int_equal(ref.output, 0);
  st_onnx_model_free(m);
}

static void test_attr_accessors(void **state) {
  (void)state;
  st_onnx_model *m = load_fixture(TYPED);
  const st_onnx_node *probe = find_op(m, "AttrProbe");
  int64_t i;
  float f;
  const char *s;
  ST_ASSERT_OK(st_onnx_attr_int(probe, "i", 7, &i));
  assert_int_equal(i, -42);
  ST_ASSERT_OK(st_onnx_attr_float(probe, "f", 7, &f));
  assert_float_equal(f, 0.125, 0);
  ST_ASSERT_OK(st_onnx_attr_string(probe, "s", "x", &s));
  assert_string_equal(s, "half_pixel");
  assert_ints(probe, "ints", (const int64_t[]){1, -2, 3}, 3);
  const float *fl;
  size_t n;
  ST_ASSERT_OK(st_onnx_attr_floats(probe, "floats", &fl, &n));
  assert_int_equal(n, 2);
  assert_float_equal(fl[0], 0.5, 0);
  assert_float_equal(fl[1], -1.5, 0);
  const char *const *strs;
  ST_ASSERT_OK(st_onnx_attr_strings(probe, "strings", &strs, &n));
  assert_int_equal(n, 2);
  assert_string_equal(strs[0], "a");
  assert_string_equal(strs[1], "bc");
  const st_tensor *t;
  ST_ASSERT_OK(st_onnx_attr_tensor(probe, "t", &t));
  assert_int_equal(t->dtype, ST_F32);
  assert_int_equal(st_tensor_numel(t), 2);
  assert_float_equal(((const float *)t->data)[1], -2.0, 0);
  /* A subgraph is kept by type only. */
  const st_onnx_attr *g = st_onnx_node_attr(probe, "g");
  assert_non_null(g);
  assert_int_equal(g->type, ST_ONNX_ATTR_GRAPH);

  /* Constant's value. */
  const st_onnx_node *c = find_op(m, "Constant");
  ST_ASSERT_OK(st_onnx_attr_tensor(c, "value", &t));
  assert_int_equal(t->dtype, ST_I64);
  assert_memory_equal(t->data, ((const int64_t[]){5, -6}), 2 * sizeof(int64_t));

  /* Absent: defaults, NULL lists, ST_OK. */
  ST_ASSERT_OK(st_onnx_attr_int(probe, "missing", 9, &i));
  assert_int_equal(i, 9);
  ST_ASSERT_OK(st_onnx_attr_float(probe, "missing", 1.5f, &f));
  assert_float_equal(f, 1.5, 0);
  ST_ASSERT_OK(st_onnx_attr_string(probe, "missing", "dflt", &s));
  assert_string_equal(s, "dflt");
  const int64_t *iv = (const int64_t *)probe;
  ST_ASSERT_OK(st_onnx_attr_ints(probe, "missing", &iv, &n));
  assert_null(iv);
  assert_int_equal(n, 0);
  ST_ASSERT_OK(st_onnx_attr_tensor(probe, "missing", &t));
  assert_null(t);
  assert_null(st_onnx_node_attr(probe, "missing"));

  /* Wrong type: ST_EDTYPE naming file, node and both types; the default is
   * still written. */
  assert_int_equal(st_onnx_attr_float(probe, "i", 3.0f, &f), ST_EDTYPE);
  assert_float_equal(f, 3.0, 0);
  const char *detail = st_error_detail();
  assert_true(strncmp(detail, m->label, strlen(m->label)) == 0);
  assert_non_null(
      strstr(detail, "node 'probe' (AttrProbe): attribute 'i' is INT, "
                     "expected FLOAT"));
  assert_int_equal(st_onnx_attr_int(probe, "ints", 0, &i), ST_EDTYPE);
  assert_int_equal(st_onnx_attr_ints(probe, "i", &iv, &n), ST_EDTYPE);
  assert_int_equal(st_onnx_attr_string(probe, "strings", NULL, &s),
                   ST_EDTYPE);
  assert_int_equal(st_onnx_attr_tensor(probe, "g", &t), ST_EDTYPE);
  assert_non_null(strstr(st_error_detail(), "is GRAPH, expected TENSOR"));
  st_onnx_model_free(m);
}

/* ---- refusals ------------------------------------------------------------ */

static int code_from_name(const char *name) {
  for (int code = ST_EINVAL; code < ST__ERR_END_; code++)
    if (strcmp(st_err_name(code), name) == 0)
      return code;
  fail_msg("unknown status name '%s'", name);
  return 0;
}

static void test_refusals(void **state) {
  (void)state;
  json_t *refusals = expect_get(expected, "refusals");
  assert_true(json_object_size(refusals) >= 20);
  const char *file;
  json_t *want;
  json_object_foreach(refusals, file, want) {
    int code = code_from_name(json_string_value(expect_get(want, "code")));
    const char *needle = json_string_value(expect_get(want, "needle"));
    /* From the file: the message names the path. */
    const char *path = st_test_fixture_path(file);
    static char sentinel;
    st_onnx_model *m = (st_onnx_model *)&sentinel;
    int rc = st_onnx_model_load(path, &m);
    const char *detail = st_error_detail();
    if (rc != code)
      fail_msg("%s: got %s (%s), want %s", file, st_err_name(rc), detail,
               st_err_name(code));
    assert_null(m);
    if (strncmp(detail, path, strlen(path)) != 0 || !strstr(detail, needle))
      fail_msg("%s: detail '%s' lacks the path or '%s'", file, detail,
               needle);
    /* From memory: the same, under the label. */
    size_t len;
    uint8_t *buf = read_fixture(file, &len);
    expect_parse_fails(buf, len, file, code, needle);
    free(buf);
  }
}

/* ---- corrupt input ------------------------------------------------------- */

static void check_truncations(const char *file) {
  size_t len;
  uint8_t *buf = read_fixture(file, &len);
  /* The whole file loads, so the cuts below fail for being cuts. */
  st_onnx_model *m = NULL;
  ST_ASSERT_OK(st_onnx_model_parse(buf, len, file, &m));
  st_onnx_model_free(m);
  size_t tried = 0;
  for (size_t cut = 0; cut < len; cut++) {
    if (cut >= CUT_HEAD_BYTES && cut + CUT_TAIL_BYTES < len &&
        cut % CUT_STRIDE_BYTES != 0)
      continue;
    /* A copy of exactly `cut` bytes, so ASan sees any read past it. */
    uint8_t *part = malloc(cut ? cut : 1);
    assert_non_null(part);
    memcpy(part, buf, cut);
    expect_parse_fails(part, cut, file, ST_EFORMAT, NULL);
    free(part);
    tried++;
  }
  assert_true(tried > CUT_HEAD_BYTES / 2);
  free(buf);
}

static void test_truncated(void **state) {
  (void)state;
  check_truncations(CONVNET);
  check_truncations(SENET);
  check_truncations(TYPED);
}

static void test_garbage(void **state) {
  (void)state;
  static const size_t lengths[] = {1, 2, 3, 7, 16, 64, 255, 1000, 65536};
  uint64_t s = 0x243F6A8885A308D3ull;
  for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
    for (int seed = 0; seed < 8; seed++) {
      size_t len = lengths[li];
      uint8_t *buf = malloc(len);
      assert_non_null(buf);
      for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(xorshift(&s) >> 56);
      expect_parse_fails(buf, len, "garbage", ST_EFORMAT, NULL);
      free(buf);
    }
  }
  /* Empty input: a valid, empty protobuf without a graph. */
  expect_parse_fails(NULL, 0, "empty", ST_EFORMAT, "holds no graph");
  /* A directory-like text file. */
  static const char text[] = "this is not an onnx model\n";
  expect_parse_fails(text, sizeof text - 1, "text", ST_EFORMAT,
                     "not a valid ONNX file");
}

/* Flips a few bytes of a valid model many times: whatever the loader
 * answers, it must answer cleanly (a refused model is NULL with a detail
 * line naming the label; an accepted one frees cleanly). */
static void test_mutations(void **state) {
  (void)state;
  size_t len;
  uint8_t *orig = read_fixture(CONVNET, &len);
  uint8_t *buf = malloc(len);
  assert_non_null(buf);
  uint64_t s = 0x9E3779B97F4A7C15ull;
  int refused = 0, accepted = 0;
  for (int t = 0; t < MUTATION_TRIES; t++) {
    memcpy(buf, orig, len);
    int flips = 1 + (int)(xorshift(&s) % MUTATION_MAX_FLIPS);
    for (int k = 0; k < flips; k++)
      buf[xorshift(&s) % len] = (uint8_t)xorshift(&s);
    st_onnx_model *m = NULL;
    st_error_clear();
    int rc = st_onnx_model_parse(buf, len, "mutant", &m);
    if (rc == ST_OK) {
      assert_non_null(m);
      accepted++;
      st_onnx_model_free(m);
    } else {
      assert_null(m);
      assert_true(strncmp(st_error_detail(), "mutant", 6) == 0);
      refused++;
    }
  }
  /* Most flips land in weights (accepted); names, lengths and tags are
   * refused. Both must happen for the test to mean something. */
  assert_true(refused > 0);
  assert_true(accepted > 0);
  free(buf);
  free(orig);
}

/* Protobuf field keys of the nesting chain ModelProto.graph (7) ->
 * GraphProto.node (1) -> NodeProto.attribute (5) -> AttributeProto.g (6)
 * -> GraphProto.node ..., all length-delimited (wire type 2). */
static const uint8_t CHAIN_KEYS[] = {(1 << 3) | 2, (5 << 3) | 2,
                                     (6 << 3) | 2};
enum { MODEL_GRAPH_KEY = (7 << 3) | 2 };

static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  do {
    p[n++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
    v >>= 7;
  } while (v);
  return n;
}

/* A ModelProto whose graph nests `levels` messages below the model. Built
 * from the innermost (empty) message outwards, each header written just
 * before the bytes it wraps. */
static uint8_t *nested_model(int levels, size_t *len) {
  enum { HEADER_MAX_BYTES = 1 + 10 };
  size_t cap = (size_t)levels * HEADER_MAX_BYTES;
  uint8_t *buf = malloc(cap);
  assert_non_null(buf);
  size_t pos = cap;
  for (int level = levels; level >= 1; level--) {
    /* Level 1 is the graph inside the model; below it the chain cycles
     * node, attribute, graph. */
    uint8_t key = level == 1 ? MODEL_GRAPH_KEY : CHAIN_KEYS[(level - 2) % 3];
    uint8_t header[HEADER_MAX_BYTES];
    header[0] = key;
    size_t h = 1 + put_varint(header + 1, cap - pos);
    pos -= h;
    memcpy(buf + pos, header, h);
  }
  *len = cap - pos;
  memmove(buf, buf + pos, *len);
  return buf;
}

static void test_nesting_bounded(void **state) {
  (void)state;
  size_t len;
  /* Within the bound: decodes, then fails for lack of an opset. */
  uint8_t *buf = nested_model(ST_ONNX_MAX_NESTING, &len);
  expect_parse_fails(buf, len, "nested-ok", ST_EFORMAT,
                     "imports no opset");
  free(buf);
  /* One level past it, and far past it: refused before decoding. */
  buf = nested_model(ST_ONNX_MAX_NESTING + 1, &len);
  expect_parse_fails(buf, len, "nested-deep", ST_EFORMAT, "nest deeper");
  free(buf);
  buf = nested_model(100000, &len);
  expect_parse_fails(buf, len, "nested-huge", ST_EFORMAT, "nest deeper");
  free(buf);
}

/* A ModelProto whose graph holds one node with `count` empty attributes:
 * 2 bytes each on the wire, a whole AttributeProto (~250 bytes) each once
 * decoded. */
static uint8_t *attribute_flood_model(size_t count, size_t *len) {
  enum { HEADER_MAX_BYTES = 1 + 10 };
  size_t attrs = 2 * count;
  uint8_t *buf = malloc(attrs + 2 * HEADER_MAX_BYTES);
  assert_non_null(buf);
  uint8_t *p = buf;
  size_t node_bytes = attrs;
  uint8_t node_header[HEADER_MAX_BYTES];
  node_header[0] = CHAIN_KEYS[0]; /* GraphProto.node */
  size_t nh = 1 + put_varint(node_header + 1, node_bytes);
  *p++ = MODEL_GRAPH_KEY;
  p += put_varint(p, nh + node_bytes);
  memcpy(p, node_header, nh);
  p += nh;
  for (size_t i = 0; i < count; i++) {
    *p++ = CHAIN_KEYS[1]; /* NodeProto.attribute */
    *p++ = 0;
  }
  *len = (size_t)(p - buf);
  return buf;
}

/* A small file that would decode to more than ST_ONNX_MAX_DECODED_BYTES is
 * refused before protobuf-c allocates anything; the same shape at a sane
 * count decodes (and fails later, for lack of an opset). */
static void test_decoded_size_bounded(void **state) {
  (void)state;
  size_t len;
  uint8_t *buf = attribute_flood_model(1000, &len);
  expect_parse_fails(buf, len, "flood-small", ST_EFORMAT, "imports no opset");
  free(buf);
  /* 24 M attributes: 48 MB on the wire, above 5 GB decoded. */
  buf = attribute_flood_model((size_t)24 << 20, &len);
  assert_true(len < ST_ONNX_MAX_FILE_BYTES);
  expect_parse_fails(buf, len, "flood-big", ST_EFORMAT,
                     "decoding it would take");
  free(buf);
}

static void test_nul_in_string(void **state) {
  (void)state;
  /* ModelProto.producer_name (field 2) = "py\0torch". */
  static const uint8_t buf[] = {(2 << 3) | 2, 8,   'p', 'y', 0,
                                't',          'o', 'r', 'c', 'h'};
  expect_parse_fails(buf, sizeof buf, "nul", ST_EFORMAT, "NUL byte");
}

static void test_load_errors(void **state) {
  (void)state;
  st_onnx_model *m = (st_onnx_model *)&m;
  const char *missing = "/nonexistent/dir/model.onnx";
  assert_int_equal(st_onnx_model_load(missing, &m), ST_ENOENT);
  assert_null(m);
  assert_true(strncmp(st_error_detail(), missing, strlen(missing)) == 0);
  m = (st_onnx_model *)&m;
  assert_int_equal(st_onnx_model_load("/tmp", &m), ST_EIO);
  assert_null(m);
  assert_non_null(strstr(st_error_detail(), "not a regular file"));
  st_onnx_model_free(NULL);
}

static void test_names(void **state) {
  (void)state;
  assert_string_equal(st_onnx_elem_type_name(ST_ONNX_FLOAT16), "FLOAT16");
  assert_string_equal(st_onnx_elem_type_name(99), "?");
  assert_string_equal(st_onnx_attr_type_name(ST_ONNX_ATTR_INTS), "INTS");
  assert_string_equal(st_onnx_attr_type_name(-1), "?");
  st_dtype dt;
  ST_ASSERT_OK(st_onnx_elem_type_to_dtype(ST_ONNX_INT64, &dt));
  assert_int_equal(dt, ST_I64);
  ST_ASSERT_OK(st_onnx_elem_type_to_dtype(ST_ONNX_FLOAT16, &dt));
  assert_int_equal(dt, ST_F16);
  assert_int_equal(st_onnx_elem_type_to_dtype(ST_ONNX_DOUBLE, &dt),
                   ST_EDTYPE);
}

static int group_setup(void **state) {
  (void)state;
  json_error_t err;
  expected = json_load_file(st_test_fixture_path(EXPECTED_JSON), 0, &err);
  if (!expected) {
    fprintf(stderr, "%s: %s (line %d)\n", EXPECTED_JSON, err.text, err.line);
    return -1;
  }
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  json_decref(expected);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_convnet_op11),
      cmocka_unit_test(test_se_op17),
      cmocka_unit_test(test_typed_storage),
      cmocka_unit_test(test_attr_accessors),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_truncated),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_mutations),
      cmocka_unit_test(test_nesting_bounded),
      cmocka_unit_test(test_decoded_size_bounded),
      cmocka_unit_test(test_nul_in_string),
      cmocka_unit_test(test_load_errors),
      cmocka_unit_test(test_names),
  };
  return cmocka_run_group_tests_name("onnx_graph", tests, group_setup,
                                     group_teardown);
}
