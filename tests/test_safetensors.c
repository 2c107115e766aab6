/* Safetensors I/O: round trips through our writer, a file written by the
 * reference (PyTorch-side) writer, and every malformed image we reject,
 * each with its status code and a message that names the problem.
 *
 * Host-only (no backend is involved), so this is a plain cmocka group. */
#include "testutil.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

enum { PREFIX_BYTES = 8 };

/* ---- helpers ------------------------------------------------------------- */

/* A file image: 8-byte little-endian `declared` header length, the header
 * text, then data_len bytes of data (0x5a, or copied from data). */
static uint8_t *image_build(uint64_t declared, const char *header,
                            const void *data, size_t data_len, size_t *len) {
  size_t header_len = strlen(header);
  *len = PREFIX_BYTES + header_len + data_len;
  uint8_t *buf = malloc(*len);
  assert_non_null(buf);
  for (int i = 0; i < PREFIX_BYTES; i++)
    buf[i] = (uint8_t)(declared >> (8 * i));
  memcpy(buf + PREFIX_BYTES, header, header_len);
  if (data)
    memcpy(buf + PREFIX_BYTES + header_len, data, data_len);
  else
    memset(buf + PREFIX_BYTES + header_len, 0x5a, data_len);
  return buf;
}

/* Parses an image that must be rejected with `code` and a detail line that
 * starts with the label and contains `needle`. */
static void expect_reject_image(const uint8_t *buf, size_t len,
                                const char *label, int code,
                                const char *needle) {
  static char sentinel;
  st_safetensors *st = (st_safetensors *)&sentinel; /* must be cleared */
  st_error_clear();
  int rc = st_safetensors_parse(buf, len, label, &st);
  const char *detail = st_error_detail();
  if (rc != code)
    fail_msg("%s: got %s (%s), want %s", label, st_err_name(rc), detail,
             st_err_name(code));
  assert_null(st);
  if (strncmp(detail, label, strlen(label)) != 0 || !strstr(detail, needle))
    fail_msg("%s: detail '%s' does not name the label and '%s'", label, detail,
             needle);
}

static void expect_reject(const char *label, const char *header,
                          size_t data_len, int code, const char *needle) {
  size_t len;
  uint8_t *buf = image_build(strlen(header), header, NULL, data_len, &len);
  expect_reject_image(buf, len, label, code, needle);
  free(buf);
}

static char *read_whole(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  assert_int_equal(fseek(f, 0, SEEK_END), 0);
  long size = ftell(f);
  assert_true(size >= 0);
  rewind(f);
  char *buf = malloc((size_t)size + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
  buf[size] = '\0';
  fclose(f);
  *len = (size_t)size;
  return buf;
}

static size_t dir_entry_count(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  size_t n = 0;
  struct dirent *de;
  while ((de = readdir(d)))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
      n++;
  closedir(d);
  return n;
}

/* ---- round trip through our writer --------------------------------------- */

enum { RT_COUNT = 7 };

static void test_round_trip(void **state) {
  (void)state;
  char dir[] = "/tmp/st_safetensors_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/rt.safetensors", dir);

  /* Name order is file order: the odd-length U8 tensor is followed by an
   * F32 one, which therefore starts at an odd offset. */
  uint8_t u8[7];
  for (int i = 0; i < 7; i++)
    u8[i] = (uint8_t)(i * 37 + 3);
  float w[12];
  st_test_fill_uniform(w, 12, 7, -2.0f, 2.0f);
  uint16_t h[5];
  const float h_src[5] = {0.5f, -1.25f, 65504.0f, 5.9604645e-8f, 0.1f};
  for (int i = 0; i < 5; i++)
    h[i] = st_f32_to_f16(h_src[i]);
  int32_t i32[4] = {-7, 0, 2147483647, -2147483647 - 1};
  int64_t i64[3] = {(int64_t)1 << 62, -((int64_t)1 << 40) - 3, 9};
  float scalar = 3.25f;

  const int64_t s_w[2] = {3, 4}, s_u8[1] = {7}, s_h[1] = {5}, s_i32[2] = {2, 2},
                s_i64[1] = {3}, s_empty[3] = {2, 0, 3};
  st_tensor t_w = st_tensor_view(w, ST_F32, 2, s_w);
  st_tensor t_u8 = st_tensor_view(u8, ST_U8, 1, s_u8);
  st_tensor t_h = st_tensor_view(h, ST_F16, 1, s_h);
  st_tensor t_i32 = st_tensor_view(i32, ST_I32, 2, s_i32);
  st_tensor t_i64 = st_tensor_view(i64, ST_I64, 1, s_i64);
  st_tensor t_scalar = st_tensor_view(&scalar, ST_F32, 0, NULL);
  st_tensor t_empty = st_tensor_view(NULL, ST_F32, 3, s_empty);
  /* Given out of order: the writer sorts by name. */
  const st_named_tensor named[RT_COUNT] = {
      {"w_f32", &t_w},    {"u8_odd", &t_u8}, {"h_f16", &t_h},
      {"i32", &t_i32},    {"i64", &t_i64},   {"scalar", &t_scalar},
      {"empty", &t_empty}};
  const char *const sorted_names[RT_COUNT] = {"empty",  "h_f16",  "i32",  "i64",
                                              "scalar", "u8_odd", "w_f32"};
  /* Byte ranges in the data block that back-to-back layout implies. */
  const long long want_offsets[RT_COUNT][2] = {
      {0, 0}, {0, 10}, {10, 26}, {26, 50}, {50, 54}, {54, 61}, {61, 109}};
  const st_tensor *by_sorted[RT_COUNT] = {&t_empty,  &t_h,  &t_i32, &t_i64,
                                          &t_scalar, &t_u8, &t_w};
  const char *const md[] = {"format", "pt", "step", "12", NULL};

  /* A first, different file at the same path must be replaced whole. */
  ST_ASSERT_OK(st_safetensors_write(path, &named[1], 1, NULL));
  ST_ASSERT_OK(st_safetensors_write(path, named, RT_COUNT, md));
  /* The temporary file was renamed, not left behind. */
  assert_int_equal(dir_entry_count(dir), 1);

  /* The raw layout: padded header, sorted keys, offsets, data bytes. */
  size_t file_len;
  char *raw = read_whole(path, &file_len);
  uint64_t header_len = 0;
  for (int i = PREFIX_BYTES - 1; i >= 0; i--)
    header_len = (header_len << 8) | (uint8_t)raw[i];
  assert_int_equal(header_len % 8, 0);
  assert_int_equal(file_len, PREFIX_BYTES + header_len + 109);
  json_error_t jerr;
  json_t *hdr = json_loadb(raw + PREFIX_BYTES, header_len, 0, &jerr);
  assert_non_null(hdr);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(hdr, "__metadata__"), "step")),
                      "12");
  for (int i = 0; i < RT_COUNT; i++) {
    json_t *off =
        json_object_get(json_object_get(hdr, sorted_names[i]), "data_offsets");
    assert_int_equal(json_integer_value(json_array_get(off, 0)),
                     want_offsets[i][0]);
    assert_int_equal(json_integer_value(json_array_get(off, 1)),
                     want_offsets[i][1]);
  }
  json_decref(hdr);
  /* The F32 tensor sits at an odd file offset, so reads must not assume
   * alignment. */
  assert_int_equal((PREFIX_BYTES + header_len + 61) % 2, 1);
  assert_memory_equal(raw + PREFIX_BYTES + header_len + 61, w, sizeof w);
  free(raw);

  st_safetensors *st = NULL;
  ST_ASSERT_OK(st_safetensors_open(path, &st));
  assert_int_equal(st_safetensors_count(st), RT_COUNT);
  assert_null(st_safetensors_name(st, RT_COUNT));
  for (int i = 0; i < RT_COUNT; i++) {
    assert_string_equal(st_safetensors_name(st, (size_t)i), sorted_names[i]);
    const st_tensor *want = by_sorted[i];
    st_dtype dt;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    ST_ASSERT_OK(st_safetensors_info(st, sorted_names[i], &dt, &ndim, shape));
    assert_int_equal(dt, want->dtype);
    assert_int_equal(ndim, want->ndim);
    for (int d = 0; d < ST_MAX_DIMS; d++)
      assert_int_equal(shape[d], want->shape[d]);

    st_tensor got;
    ST_ASSERT_OK(st_safetensors_read(st, sorted_names[i], &got));
    assert_int_equal(got.dtype, want->dtype);
    assert_true(st_tensor_same_shape(&got, want));
    assert_null(got.backend);
    assert_int_equal(got.owns, 1);
    assert_int_equal((uintptr_t)got.data % ST_HOST_ALIGN_BYTES, 0);
    assert_int_equal(st_tensor_nbytes(&got), st_tensor_nbytes(want));
    if (st_tensor_nbytes(want))
      assert_memory_equal(got.data, want->data, st_tensor_nbytes(want));
    st_tensor_free(&got);
  }
  /* Spot values, decoded, beyond the byte comparison. */
  st_tensor got;
  ST_ASSERT_OK(st_safetensors_read(st, "h_f16", &got));
  const uint16_t *gh = got.data;
  assert_true(st_f16_to_f32(gh[2]) == 65504.0f);
  assert_true(st_f16_to_f32(gh[1]) == -1.25f);
  st_tensor_free(&got);
  ST_ASSERT_OK(st_safetensors_read(st, "scalar", &got));
  assert_int_equal(got.ndim, 0);
  assert_true(*(const float *)got.data == 3.25f);
  st_tensor_free(&got);

  assert_string_equal(st_safetensors_metadata(st, "format"), "pt");
  assert_string_equal(st_safetensors_metadata(st, "step"), "12");
  assert_null(st_safetensors_metadata(st, "missing"));

  /* Absent tensors: ST_ENOENT naming the tensor; out is left cleared. */
  memset(&got, 0xab, sizeof got);
  assert_int_equal(st_safetensors_read(st, "nope", &got), ST_ENOENT);
  assert_non_null(strstr(st_error_detail(), "'nope'"));
  assert_null(got.data);
  st_dtype dt;
  int ndim;
  int64_t shape[ST_MAX_DIMS];
  assert_int_equal(st_safetensors_info(st, "w_f3", &dt, &ndim, shape),
                   ST_ENOENT);
  assert_non_null(strstr(st_error_detail(), "'w_f3'"));
  st_safetensors_free(st);
  st_safetensors_free(NULL);

  assert_int_equal(unlink(path), 0);
  assert_int_equal(rmdir(dir), 0);
}

static void test_write_rejects(void **state) {
  (void)state;
  char dir[] = "/tmp/st_safetensors_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/bad.safetensors", dir);
  float x[2] = {1.0f, 2.0f};
  const int64_t s[1] = {2};
  st_tensor t = st_tensor_view(x, ST_F32, 1, s);

  const st_named_tensor dup[2] = {{"b", &t}, {"b", &t}};
  assert_int_equal(st_safetensors_write(path, dup, 2, NULL), ST_EINVAL);
  assert_non_null(strstr(st_error_detail(), "duplicate tensor name 'b'"));

  const st_named_tensor reserved[1] = {{"__metadata__", &t}};
  assert_int_equal(st_safetensors_write(path, reserved, 1, NULL), ST_EINVAL);
  assert_non_null(strstr(st_error_detail(), "invalid tensor name"));

  const st_named_tensor ok[1] = {{"a", &t}};
  const char *const md_dup[] = {"k", "1", "k", "2", NULL};
  assert_int_equal(st_safetensors_write(path, ok, 1, md_dup), ST_EINVAL);
  assert_non_null(strstr(st_error_detail(), "duplicate metadata key 'k'"));
  const char *const md_odd[] = {"k", NULL};
  /* An odd list: the last key has no value before the terminator. */
  assert_int_equal(st_safetensors_write(path, ok, 1, md_odd), ST_EINVAL);
  assert_non_null(strstr(st_error_detail(), "has no value"));

  /* Nothing was created by the failed writes, temporary files included. */
  assert_int_equal(dir_entry_count(dir), 0);

  char missing_dir[300];
  snprintf(missing_dir, sizeof missing_dir, "%s/no/such/x.safetensors", dir);
  assert_int_equal(st_safetensors_write(missing_dir, ok, 1, NULL), ST_ENOENT);
  assert_non_null(strstr(st_error_detail(), "cannot create"));

  /* No tensors at all is a valid file: "{}" padded, empty data block. */
  ST_ASSERT_OK(st_safetensors_write(path, NULL, 0, NULL));
  st_safetensors *st = NULL;
  ST_ASSERT_OK(st_safetensors_open(path, &st));
  assert_int_equal(st_safetensors_count(st), 0);
  assert_null(st_safetensors_name(st, 0));
  st_safetensors_free(st);
  assert_int_equal(unlink(path), 0);
  assert_int_equal(rmdir(dir), 0);
}

/* ---- a file from the reference writer ------------------------------------ */

static void test_reference_file(void **state) {
  (void)state;
  json_error_t jerr;
  json_t *expected =
      json_load_file(st_test_fixture_path("st_ref_expected.json"), 0, &jerr);
  if (!expected)
    fail_msg("st_ref_expected.json: %s", jerr.text);
  json_t *order = json_object_get(expected, "order");
  json_t *tensors = json_object_get(expected, "tensors");
  size_t count = json_array_size(order);
  assert_int_equal(count, 6);

  st_safetensors *fx = st_test_fixture_open("st_ref.safetensors");
  assert_int_equal(st_safetensors_count(fx), count);
  size_t values_checked = 0;
  for (size_t i = 0; i < count; i++) {
    const char *name = json_string_value(json_array_get(order, i));
    assert_string_equal(st_safetensors_name(fx, i), name);
    json_t *want = json_object_get(tensors, name);
    json_t *shape = json_object_get(want, "shape");
    json_t *values = json_object_get(want, "values");

    st_tensor got = st_test_fixture_tensor(fx, name);
    assert_string_equal(st_dtype_name(got.dtype),
                        json_string_value(json_object_get(want, "dtype")));
    assert_int_equal(got.ndim, (int)json_array_size(shape));
    for (int d = 0; d < got.ndim; d++)
      assert_int_equal(got.shape[d],
                       json_integer_value(json_array_get(shape, (size_t)d)));
    size_t n = (size_t)st_tensor_numel(&got);
    assert_int_equal(n, json_array_size(values));
    for (size_t k = 0; k < n; k++) {
      json_t *v = json_array_get(values, k);
      /* Exact: the expected values are the stored ones widened to double. */
      switch (got.dtype) {
      case ST_F32:
        assert_true(((const float *)got.data)[k] == (float)json_real_value(v));
        break;
      case ST_F16:
        assert_true(st_f16_to_f32(((const uint16_t *)got.data)[k]) ==
                    (float)json_real_value(v));
        break;
      case ST_U8:
        assert_int_equal(((const uint8_t *)got.data)[k], json_integer_value(v));
        break;
      case ST_I32:
        assert_int_equal(((const int32_t *)got.data)[k], json_integer_value(v));
        break;
      case ST_I64:
        assert_true(((const int64_t *)got.data)[k] == json_integer_value(v));
        break;
      default:
        fail_msg("%s: unexpected dtype", name);
      }
      values_checked++;
    }
    st_tensor_free(&got);
  }
  /* 5 + 6 + 5 + 3 + 0 + 8 elements in the fixture. */
  assert_int_equal(values_checked, 27);
  st_safetensors_free(fx);
  json_decref(expected);
}

/* ---- malformed images ---------------------------------------------------- */

static void test_reject_truncated(void **state) {
  (void)state;
  const uint8_t five[5] = {2, 0, 0, 0, 0};
  expect_reject_image(five, sizeof five, "five-bytes", ST_EFORMAT,
                      "shorter than the 8-byte");
  expect_reject_image(five, 0, "empty-file", ST_EFORMAT, "shorter than");

  /* Declares 64 header bytes, holds 20. */
  size_t len;
  uint8_t *buf = image_build(64, "{\"a\": {\"dtype\": \"F3", NULL, 0, &len);
  expect_reject_image(buf, len, "short-header", ST_EFORMAT,
                      "runs past the end of the file");
  free(buf);
}

static void test_reject_huge_header_length(void **state) {
  (void)state;
  /* These lengths are refused by the limit check, before anything could be
   * sized by them (the message is the limit's, not the truncation's). */
  const uint64_t huge[2] = {(uint64_t)1 << 62,
                            (uint64_t)ST_SAFETENSORS_MAX_HEADER_BYTES + 1};
  for (int i = 0; i < 2; i++) {
    size_t len;
    uint8_t *buf = image_build(huge[i], "{}", NULL, 16, &len);
    expect_reject_image(buf, len, "huge-header", ST_EFORMAT,
                        "exceeds the limit");
    free(buf);
  }
  /* Exactly at the limit is allowed by it, then fails as truncated. */
  size_t len;
  uint8_t *buf =
      image_build(ST_SAFETENSORS_MAX_HEADER_BYTES, "{}", NULL, 16, &len);
  expect_reject_image(buf, len, "limit-header", ST_EFORMAT,
                      "runs past the end");
  free(buf);
}

typedef struct bad_case {
  const char *label;
  const char *header;
  size_t data_len;
  int code;
  const char *needle;
} bad_case;

#define T_F32_4 "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"

static const bad_case BAD_CASES[] = {
    {"not-json", "{\"a\": ", 0, ST_EFORMAT, "header is not valid JSON"},
    {"json-array", "[1, 2]", 0, ST_EFORMAT, "header is not a JSON object"},
    {"duplicate-key", "{\"a\":" T_F32_4 ",\"a\":" T_F32_4 "}", 4, ST_EFORMAT,
     "duplicate"},
    {"entry-not-object", "{\"a\": [1]}", 0, ST_EFORMAT,
     "tensor 'a' is not a JSON object"},
    {"no-dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     ST_EFORMAT, "lacks \"dtype\""},
    {"dtype-number",
     "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     ST_EFORMAT, "dtype is not a string"},
    {"no-shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
     ST_EFORMAT, "lacks \"shape\""},
    {"shape-object",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 4,
     ST_EFORMAT, "shape is not an array"},
    {"no-offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, ST_EFORMAT,
     "lacks \"data_offsets\""},
    {"unknown-key",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],"
     "\"extra\":1}}",
     4, ST_EFORMAT, "unknown key 'extra'"},
    {"bad-dtype",
     "{\"a\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     ST_EDTYPE, "unknown dtype 'Q7'"},
    {"bf16",
     "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
     ST_EDTYPE, "dtype BF16 is not supported"},
    {"f64", "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}",
     8, ST_EDTYPE, "dtype F64 is not supported"},
    {"i8", "{\"a\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
     ST_EDTYPE, "dtype I8 is not supported"},
    {"bool",
     "{\"a\":{\"dtype\":\"BOOL\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
     ST_EDTYPE, "dtype BOOL is not supported"},
    {"size-mismatch",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
     ST_ESHAPE, "size mismatch"},
    {"offsets-past-end",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
     ST_EFORMAT, "past the end of the data block"},
    {"overlap",
     "{\"a\":" T_F32_4 ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],"
     "\"data_offsets\":[2,6]}}",
     6, ST_EFORMAT, "tensor 'b' at [2,6] overlaps tensor 'a'"},
    {"hole",
     "{\"a\":" T_F32_4 ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],"
     "\"data_offsets\":[8,12]}}",
     12, ST_EFORMAT, "hole of 4 bytes"},
    {"hole-at-start",
     "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
     ST_EFORMAT, "hole of 4 bytes"},
    {"trailing", "{\"a\":" T_F32_4 "}", 6, ST_EFORMAT,
     "2 trailing bytes after the tensor data"},
    {"trailing-no-tensors", "{}", 3, ST_EFORMAT, "3 trailing bytes"},
    {"negative-shape",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
     ST_EFORMAT, "shape[0] is not a non-negative integer"},
    {"fraction-shape",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1.5],\"data_offsets\":[0,4]}}", 4,
     ST_EFORMAT, "shape[1] is not a non-negative integer"},
    {"overflow-shape",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
     "\"data_offsets\":[0,4]}}",
     4, ST_ESHAPE, "overflows"},
    {"overflow-before-zero",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,0],"
     "\"data_offsets\":[0,0]}}",
     0, ST_ESHAPE, "overflows"},
    {"rank-9",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
     "\"data_offsets\":[0,1]}}",
     1, ST_ESHAPE, "rank 9 is above the limit"},
    {"offsets-one",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0]}}", 0,
     ST_EFORMAT, "data_offsets is not two non-negative integers"},
    {"offsets-negative",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[-4,-4]}}", 0,
     ST_EFORMAT, "data_offsets is not two non-negative integers"},
    {"offsets-reversed",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,0]}}", 4,
     ST_EFORMAT, "begin 4 is after end 0"},
    {"metadata-number", "{\"__metadata__\":{\"k\":\"v\",\"n\":1}}", 0,
     ST_EFORMAT, "__metadata__ value of 'n' is not a string"},
    {"metadata-array", "{\"__metadata__\":[\"x\"]}", 0, ST_EFORMAT,
     "__metadata__ is not a JSON object"},
    {"empty-name", "{\"\":" T_F32_4 "}", 4, ST_EFORMAT,
     "a tensor has an empty name"},
};

static void test_reject_malformed_headers(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof BAD_CASES / sizeof BAD_CASES[0]; i++) {
    const bad_case *c = &BAD_CASES[i];
    expect_reject(c->label, c->header, c->data_len, c->code, c->needle);
  }
}

/* The edge cases that are valid, so the rejections above are not simply
 * rejecting everything. */
static void test_accept_edges(void **state) {
  (void)state;
  /* Zero-element tensors at the start, between and at the end; a 0-d one;
   * metadata; header padding spaces; an odd offset for the F32. */
  const char *header =
      "{\"__metadata__\":{\"m\":\"v\"},"
      "\"z0\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]},"
      "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},"
      "\"z1\":{\"dtype\":\"I64\",\"shape\":[2,0],\"data_offsets\":[3,3]},"
      "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[3,7]},"
      "\"z2\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[7,7]}}   ";
  const float s_value = -6.5f;
  uint8_t data[7] = {1, 2, 3};
  memcpy(data + 3, &s_value, sizeof s_value);
  size_t len;
  uint8_t *buf = image_build(strlen(header), header, data, sizeof data, &len);
  st_safetensors *st = NULL;
  ST_ASSERT_OK(st_safetensors_parse(buf, len, "edges", &st));
  /* The buffer was copied: scribbling on it changes nothing. */
  memset(buf, 0, len);
  free(buf);
  assert_int_equal(st_safetensors_count(st), 5);
  const char *const order[5] = {"z0", "b", "z1", "s", "z2"};
  for (size_t i = 0; i < 5; i++)
    assert_string_equal(st_safetensors_name(st, i), order[i]);
  st_tensor t;
  ST_ASSERT_OK(st_safetensors_read(st, "s", &t));
  assert_int_equal(t.ndim, 0);
  assert_true(*(const float *)t.data == s_value);
  st_tensor_free(&t);
  ST_ASSERT_OK(st_safetensors_read(st, "b", &t));
  assert_memory_equal(t.data, data, 3);
  st_tensor_free(&t);
  ST_ASSERT_OK(st_safetensors_read(st, "z1", &t));
  assert_int_equal(t.dtype, ST_I64);
  assert_int_equal(t.ndim, 2);
  assert_int_equal(t.shape[0], 2);
  assert_int_equal(t.shape[1], 0);
  assert_int_equal(st_tensor_nbytes(&t), 0);
  st_tensor_free(&t);
  assert_string_equal(st_safetensors_metadata(st, "m"), "v");
  st_safetensors_free(st);

  /* A header that is only metadata and no data at all. */
  buf = image_build(2, "{}", NULL, 0, &len);
  ST_ASSERT_OK(st_safetensors_parse(buf, len, "empty", &st));
  assert_int_equal(st_safetensors_count(st), 0);
  assert_null(st_safetensors_metadata(st, "m"));
  st_safetensors_free(st);
  free(buf);
}

/* ---- through the file system --------------------------------------------- */

static void test_open_errors(void **state) {
  (void)state;
  char path[] = "/tmp/st_safetensors_bad_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  const char *header =
      "{\"a\":" T_F32_4 ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],"
      "\"data_offsets\":[8,12]}}";
  size_t len;
  uint8_t *buf = image_build(strlen(header), header, NULL, 12, &len);
  assert_int_equal(write(fd, buf, len), (ssize_t)len);
  assert_int_equal(close(fd), 0);
  free(buf);

  st_safetensors *st = (st_safetensors *)path;
  assert_int_equal(st_safetensors_open(path, &st), ST_EFORMAT);
  assert_null(st);
  /* The message names the file and the problem. */
  assert_true(strncmp(st_error_detail(), path, strlen(path)) == 0);
  assert_non_null(strstr(st_error_detail(), "hole of 4 bytes"));
  assert_int_equal(unlink(path), 0);

  /* Now missing. */
  st = (st_safetensors *)path;
  assert_int_equal(st_safetensors_open(path, &st), ST_ENOENT);
  assert_null(st);
  assert_true(strncmp(st_error_detail(), path, strlen(path)) == 0);
  assert_non_null(strstr(st_error_detail(), "cannot open"));

  /* A directory is not a file. */
  assert_int_equal(st_safetensors_open("/tmp", &st), ST_EIO);
  assert_non_null(strstr(st_error_detail(), "not a regular file"));
}


/* ---- writers racing for one path ---------------------------------------- */

enum { RACE_WRITERS = 4, RACE_WRITES = 25, RACE_ELEMS = 4096 };

typedef struct race_writer {
  const char *path;
  float values[RACE_ELEMS]; /* this writer's content: all elements equal */
  int failures;
} race_writer;

static void *race_write(void *arg) {
  race_writer *w = arg;
  const int64_t shape[1] = {RACE_ELEMS};
  st_tensor t = st_tensor_view(w->values, ST_F32, 1, shape);
  const st_named_tensor named[1] = {{"v", &t}};
  for (int i = 0; i < RACE_WRITES; i++)
    if (st_safetensors_write(w->path, named, 1, NULL) != ST_OK)
      w->failures++;
  return NULL;
}

/* Threads writing the same path at once each succeed, and what lands is
 * one writer's file whole (no shared temporary, no mixed content), with no
 * temporary left behind. */
static void test_concurrent_writers(void **state) {
  (void)state;
  char dir[] = "/tmp/st_safetensors_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/race.safetensors", dir);
  static race_writer writers[RACE_WRITERS];
  pthread_t threads[RACE_WRITERS];
  for (int k = 0; k < RACE_WRITERS; k++) {
    writers[k].path = path;
    writers[k].failures = 0;
    for (int i = 0; i < RACE_ELEMS; i++)
      writers[k].values[i] = (float)(k + 1);
    assert_int_equal(pthread_create(&threads[k], NULL, race_write, &writers[k]),
                     0);
  }
  for (int k = 0; k < RACE_WRITERS; k++) {
    assert_int_equal(pthread_join(threads[k], NULL), 0);
    assert_int_equal(writers[k].failures, 0);
  }
  st_safetensors *f = NULL;
  ST_ASSERT_OK(st_safetensors_open(path, &f));
  st_tensor got;
  ST_ASSERT_OK(st_safetensors_read(f, "v", &got));
  assert_int_equal(st_tensor_numel(&got), RACE_ELEMS);
  const float *v = got.data;
  assert_true(v[0] >= 1.0f && v[0] <= (float)RACE_WRITERS);
  for (int i = 1; i < RACE_ELEMS; i++)
    assert_true(v[i] == v[0]);
  st_tensor_free(&got);
  st_safetensors_free(f);
  assert_int_equal(dir_entry_count(dir), 1);
  unlink(path);
  rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_write_rejects),
      cmocka_unit_test(test_reference_file),
      cmocka_unit_test(test_reject_truncated),
      cmocka_unit_test(test_reject_huge_header_length),
      cmocka_unit_test(test_reject_malformed_headers),
      cmocka_unit_test(test_accept_edges),
      cmocka_unit_test(test_open_errors),
      cmocka_unit_test(test_concurrent_writers),
  };
  return cmocka_run_group_tests_name("safetensors", tests, NULL, NULL);
}
