/* Paths of the loss, metric and layout ops that test_ops.c does not reach,
 * run on every backend and checked against exact host computations:
 *  - confusion counts with more classes than the CUDA backend's shared
 *    histogram holds (its global-atomic path), with the fewest and the most
 *    classes, on enough pixels that every CUDA thread loops, and their
 *    out-of-range report;
 *  - the weighted cross-entropy on more pixels than one CUDA reduction
 *    grid covers, against a double-precision reference, and repeatable to
 *    the bit on the CUDA backend;
 *  - argmax with NaNs and ties;
 *  - concat and split of a single image (plain copies on CUDA) and of an
 *    odd batch (2-D copies), and subsampling with stride 1 and with a
 *    stride larger than the image. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Large enough that a CUDA reduction grid (at most 1024 blocks of 256
 * threads) has to loop: 300000 pixels. */
enum { BIG_N = 2, BIG_H = 300, BIG_W = 500 };
enum { BIG_PIXELS = BIG_N * BIG_H * BIG_W };

/* Cross-entropy: classes, logit range, and the tolerances against the
 * double reference. The loss sums 3e5 float-accurate terms in double; each
 * gradient entry is a few float roundings of its double value, except the
 * label entry w * (p - 1) / count whose cancellation leaves an error of
 * order ulp * w / count. */
#define CE_CLASSES 5
#define CE_LOGIT_RANGE 6.0f
#define CE_LOSS_RTOL 1e-5
#define CE_GRAD_RTOL 1e-5
#define CE_GRAD_ATOL_PER_WEIGHT 1e-6

/* Deterministic pseudo-random bytes below `mod`. */
static uint8_t hash_byte(int64_t i, uint32_t salt, int mod) {
  uint32_t h = (uint32_t)i * 2654435761u ^ salt;
  h ^= h >> 15;
  h *= 2246822519u;
  h ^= h >> 13;
  return (uint8_t)(h % (uint32_t)mod);
}

static st_tensor host_map(st_dtype dt) {
  const int64_t shape[3] = {BIG_N, BIG_H, BIG_W};
  st_tensor t;
  ST_ASSERT_OK(st_tensor_alloc(NULL, &t, dt, 3, shape));
  return t;
}

/* ---- confusion counts ---------------------------------------------------- */

static void confusion_case(st_backend *be, int k) {
  st_tensor hpred = host_map(ST_U8), hlab = host_map(ST_U8);
  uint8_t *pd = hpred.data, *ld = hlab.data;
  for (int64_t i = 0; i < BIG_PIXELS; i++) {
    ld[i] = hash_byte(i, 0x1234u, k);
    /* Mostly right, as a trained network: many pixels on the diagonal. */
    pd[i] = i % 3 ? ld[i] : hash_byte(i, 0x9876u, k);
  }
  int64_t *want = calloc((size_t)k * (size_t)k, sizeof *want);
  int64_t *got = malloc((size_t)k * (size_t)k * sizeof *got);
  assert_non_null(want);
  assert_non_null(got);
  for (int64_t i = 0; i < BIG_PIXELS; i++)
    want[(size_t)ld[i] * (size_t)k + pd[i]]++;

  st_tensor pred = st_test_to_backend(be, &hpred),
            lab = st_test_to_backend(be, &hlab);
  memset(got, 0xff, (size_t)k * (size_t)k * sizeof *got); /* op must zero */
  ST_ASSERT_OK(st_confusion_counts(be, &pred, &lab, k, got));
  for (int j = 0; j < k * k; j++)
    if (got[j] != want[j])
      fail_msg("%d classes: counts[%d] = %lld, want %lld", k, j,
               (long long)got[j], (long long)want[j]);

  /* Two pixels out of range, the larger value in pred: the error names it
   * and the pixel count. Only possible below 256 classes. */
  if (k < 256) {
    const int bad_label = k, bad_pred = k + (k < 250 ? 5 : 1);
    ld[BIG_PIXELS / 3] = (uint8_t)bad_label;
    pd[BIG_PIXELS - 7] = (uint8_t)bad_pred;
    ST_ASSERT_OK(st_tensor_upload(be, &lab, ld, st_tensor_nbytes(&hlab)));
    ST_ASSERT_OK(st_tensor_upload(be, &pred, pd, st_tensor_nbytes(&hpred)));
    assert_int_equal(st_confusion_counts(be, &pred, &lab, k, got), ST_ERANGE);
    char value[32];
    snprintf(value, sizeof value, "value %d ", bad_pred);
    if (!strstr(st_error_detail(), value) ||
        !strstr(st_error_detail(), "(2 pixels"))
      fail_msg("%d classes: detail '%s' lacks '%s' or the pixel count", k,
               st_error_detail(), value);
  }
  free(want);
  free(got);
  st_tensor *all[] = {&hpred, &hlab, &pred, &lab};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    st_tensor_free(all[j]);
}

static void test_confusion_class_counts(void **state) {
  st_backend *be = st_test_backend(state);
  confusion_case(be, 1);   /* the smallest table */
  confusion_case(be, 7);   /* shared histogram on CUDA */
  confusion_case(be, 32);  /* the largest shared histogram */
  confusion_case(be, 33);  /* the first global-atomic case */
  confusion_case(be, 256); /* every byte value is a class */
}

/* ---- weighted cross-entropy ---------------------------------------------- */

static void test_weighted_ce_large(void **state) {
  st_backend *be = st_test_backend(state);
  const int64_t hw = BIG_H * BIG_W;
  st_tensor hl;
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &hl, ST_F32, BIG_N, CE_CLASSES, BIG_H,
                                BIG_W));
  st_test_fill_uniform(hl.data, (size_t)st_tensor_numel(&hl), 81,
                       -CE_LOGIT_RANGE, CE_LOGIT_RANGE);
  st_tensor hlab = host_map(ST_U8), hweight = host_map(ST_F32);
  uint8_t *ld = hlab.data;
  float *wd = hweight.data;
  for (int64_t i = 0; i < BIG_PIXELS; i++) {
    ld[i] = hash_byte(i, 0x5151u, CE_CLASSES);
    wd[i] = i % 5 ? 1.0f : 5.0f;
  }

  /* The reference in double: log-sum-exp shifted by the maximum. */
  const float *x = hl.data;
  double *want_d = malloc((size_t)st_tensor_numel(&hl) * sizeof *want_d);
  assert_non_null(want_d);
  double total = 0.0;
  for (int64_t i = 0; i < BIG_PIXELS; i++) {
    const int64_t img = i / hw, t = i % hw;
    const float *xp = x + img * CE_CLASSES * hw + t;
    double mx = xp[0], s = 0.0;
    for (int k = 1; k < CE_CLASSES; k++)
      mx = xp[k * hw] > mx ? xp[k * hw] : mx;
    for (int k = 0; k < CE_CLASSES; k++)
      s += exp(xp[k * hw] - mx);
    total -= wd[i] * (xp[ld[i] * hw] - mx - log(s));
    double *gp = want_d + img * CE_CLASSES * hw + t;
    for (int k = 0; k < CE_CLASSES; k++)
      gp[k * hw] = wd[i] *
                   (exp(xp[k * hw] - mx) / s - (k == ld[i] ? 1.0 : 0.0)) /
                   BIG_PIXELS;
  }
  const double want_loss = total / BIG_PIXELS;

  st_tensor l = st_test_to_backend(be, &hl),
            lab = st_test_to_backend(be, &hlab),
            w = st_test_to_backend(be, &hweight), d;
  ST_ASSERT_OK(st_tensor_alloc(be, &d, ST_F32, 4, hl.shape));
  ST_ASSERT_OK(st_fill(be, &d, NAN)); /* every element must be written */
  float loss = NAN, loss_only = NAN, loss_again = NAN;
  ST_ASSERT_OK(st_weighted_ce(be, &l, &lab, &w, &loss, &d));
  ST_ASSERT_OK(st_weighted_ce(be, &l, &lab, &w, &loss_only, NULL));
  ST_ASSERT_OK(st_weighted_ce(be, &l, &lab, &w, &loss_again, NULL));
  if (!(fabs(loss - want_loss) <= CE_LOSS_RTOL * fabs(want_loss)))
    fail_msg("loss %.9g, want %.9g", (double)loss, want_loss);
  assert_true(want_loss > 0.1); /* not vacuous */
  if (st_backend_get_kind(be) == ST_BACKEND_CUDA) {
    /* A fixed reduction tree: the same bits every call, with or without
     * the gradient. (The CPU's OpenMP reduction may combine threads in
     * any order.) */
    assert_memory_equal(&loss, &loss_only, sizeof loss);
    assert_memory_equal(&loss, &loss_again, sizeof loss);
  }

  st_tensor hd = st_test_to_host(be, &d);
  const float *gd = hd.data;
  const double atol = CE_GRAD_ATOL_PER_WEIGHT * 5.0 / BIG_PIXELS;
  for (int64_t i = 0; i < st_tensor_numel(&hl); i++) {
    const double err = fabs((double)gd[i] - want_d[i]);
    if (!(err <= atol + CE_GRAD_RTOL * fabs(want_d[i])))
      fail_msg("dlogits[%lld] = %.9g, want %.9g", (long long)i, (double)gd[i],
               want_d[i]);
  }
  free(want_d);
  st_tensor *all[] = {&hl, &hlab, &hweight, &l, &lab, &w, &d, &hd};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    st_tensor_free(all[j]);
}

/* ---- argmax -------------------------------------------------------------- */

enum { AM_C = 4, AM_PIXELS = 6 };

static void test_argmax_nan_ties(void **state) {
  st_backend *be = st_test_backend(state);
  /* Columns are pixels, rows channels. */
  const float logits[AM_C][AM_PIXELS] = {
      {1.0f, NAN, 1.0f, 2.0f, -INFINITY, -1.0f},
      {0.0f, 5.0f, 3.0f, 2.0f, -INFINITY, -3.0f},
      {NAN, 7.0f, 3.0f, 2.0f, -1.0f, -2.0f},
      {9.0f, NAN, 2.0f, 2.0f, -INFINITY, -1.0f},
  };
  /* NaN beats numbers, the first NaN wins, and the first maximum wins. */
  const uint8_t want[AM_PIXELS] = {2, 0, 1, 0, 2, 0};
  st_tensor hl;
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &hl, ST_F32, 1, AM_C, 1, AM_PIXELS));
  memcpy(hl.data, logits, sizeof logits);
  st_tensor l = st_test_to_backend(be, &hl), lab;
  const int64_t shape[3] = {1, 1, AM_PIXELS};
  ST_ASSERT_OK(st_tensor_alloc(be, &lab, ST_U8, 3, shape));
  ST_ASSERT_OK(st_argmax_channels(be, &l, &lab));
  st_tensor hlab = st_test_to_host(be, &lab);
  assert_memory_equal(hlab.data, want, sizeof want);
  st_tensor *all[] = {&hl, &l, &lab, &hlab};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    st_tensor_free(all[j]);
}

/* ---- layout -------------------------------------------------------------- */

enum { LAY_CA = 3, LAY_CB = 2, LAY_H = 5, LAY_W = 7 };

static st_tensor host_random4(int64_t n, int64_t c, int64_t h, int64_t w,
                              uint64_t seed) {
  st_tensor t;
  ST_ASSERT_OK(st_tensor_alloc4(NULL, &t, ST_F32, n, c, h, w));
  st_test_fill_uniform(t.data, (size_t)st_tensor_numel(&t), seed, -1.0f, 1.0f);
  return t;
}

static st_tensor dev_nan4(st_backend *be, int64_t n, int64_t c, int64_t h,
                          int64_t w) {
  st_tensor t;
  ST_ASSERT_OK(st_tensor_alloc4(be, &t, ST_F32, n, c, h, w));
  ST_ASSERT_OK(st_fill(be, &t, NAN));
  return t;
}

static void expect_bits(st_backend *be, const st_tensor *got, const float *want,
                        const char *what) {
  st_tensor h = st_test_to_host(be, got);
  if (memcmp(h.data, want, st_tensor_nbytes(&h)) != 0)
    fail_msg("%s differs", what);
  st_tensor_free(&h);
}

static void concat_split_case(st_backend *be, int64_t n) {
  const int64_t plane = LAY_H * LAY_W, cy = LAY_CA + LAY_CB;
  st_tensor ha = host_random4(n, LAY_CA, LAY_H, LAY_W, 91),
            hb = host_random4(n, LAY_CB, LAY_H, LAY_W, 92);
  /* Expected y: per image, a's channels then b's. */
  float *want = malloc((size_t)(n * cy * plane) * sizeof *want);
  assert_non_null(want);
  for (int64_t i = 0; i < n; i++) {
    memcpy(want + i * cy * plane, (float *)ha.data + i * LAY_CA * plane,
           (size_t)(LAY_CA * plane) * sizeof(float));
    memcpy(want + (i * cy + LAY_CA) * plane,
           (float *)hb.data + i * LAY_CB * plane,
           (size_t)(LAY_CB * plane) * sizeof(float));
  }
  st_tensor a = st_test_to_backend(be, &ha), b = st_test_to_backend(be, &hb);
  st_tensor y = dev_nan4(be, n, cy, LAY_H, LAY_W);
  ST_ASSERT_OK(st_concat_channels(be, &a, &b, &y));
  expect_bits(be, &y, want, "concat");
  /* Split y back, both halves and each alone. */
  st_tensor da = dev_nan4(be, n, LAY_CA, LAY_H, LAY_W),
            db = dev_nan4(be, n, LAY_CB, LAY_H, LAY_W);
  ST_ASSERT_OK(st_split_channels(be, &y, &da, &db));
  expect_bits(be, &da, ha.data, "split da");
  expect_bits(be, &db, hb.data, "split db");
  ST_ASSERT_OK(st_fill(be, &da, NAN));
  ST_ASSERT_OK(st_fill(be, &db, NAN));
  ST_ASSERT_OK(st_split_channels(be, &y, NULL, &db));
  expect_bits(be, &db, hb.data, "split db alone");
  ST_ASSERT_OK(st_split_channels(be, &y, &da, NULL));
  expect_bits(be, &da, ha.data, "split da alone");
  free(want);
  st_tensor *all[] = {&ha, &hb, &a, &b, &y, &da, &db};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    st_tensor_free(all[j]);
}

static void subsample_case(st_backend *be, int stride) {
  enum { N = 2, C = 3, H = 4, W = 6 };
  const int64_t oh = (H + stride - 1) / stride, ow = (W + stride - 1) / stride;
  st_tensor hx = host_random4(N, C, H, W, 93);
  const float *xd = hx.data;
  float *want_y = malloc((size_t)(N * C * oh * ow) * sizeof *want_y);
  float *want_dx = calloc((size_t)(N * C * H * W), sizeof *want_dx);
  assert_non_null(want_y);
  assert_non_null(want_dx);
  /* y = x[:, :, ::s, ::s], and dx puts y back in place with zeros around. */
  for (int64_t p = 0; p < N * C; p++)
    for (int64_t r = 0; r < oh; r++)
      for (int64_t j = 0; j < ow; j++) {
        const int64_t src = (p * H + r * stride) * W + j * stride;
        want_y[(p * oh + r) * ow + j] = xd[src];
        want_dx[src] = xd[src];
      }
  st_tensor x = st_test_to_backend(be, &hx), y = dev_nan4(be, N, C, oh, ow),
            dx = dev_nan4(be, N, C, H, W);
  ST_ASSERT_OK(st_subsample(be, &x, stride, &y));
  expect_bits(be, &y, want_y, "subsample");
  ST_ASSERT_OK(st_subsample_bwd(be, &y, stride, &dx));
  expect_bits(be, &dx, want_dx, "subsample_bwd");
  free(want_y);
  free(want_dx);
  st_tensor *all[] = {&hx, &x, &y, &dx};
  for (size_t j = 0; j < sizeof all / sizeof all[0]; j++)
    st_tensor_free(all[j]);
}

static void test_layout_edges(void **state) {
  st_backend *be = st_test_backend(state);
  concat_split_case(be, 1);
  concat_split_case(be, 3);
  subsample_case(be, 1); /* identity */
  subsample_case(be, 7); /* larger than both extents: one pixel per plane */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_confusion_class_counts),
      cmocka_unit_test(test_weighted_ce_large),
      cmocka_unit_test(test_argmax_nan_ties),
      cmocka_unit_test(test_layout_edges),
  };
  return st_test_run_on_backends("cuda_loss_layout", tests,
                                 sizeof tests / sizeof tests[0]);
}
