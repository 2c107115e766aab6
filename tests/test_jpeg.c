/* JPEG key frames through libavcodec (src/proto/jpeg.c).
 *
 * - Round trip of a synthetic camera-like frame (gradients, soft-edged
 *   shapes): PSNR above 35 dB at quality 90, lower but above 25 dB at
 *   quality 30, and the quality-30 file is smaller.
 * - Decoding JPEGs that PIL (libjpeg-turbo) wrote, in 4:2:0, 4:2:2, 4:4:4,
 *   progressive, an odd size and grey (tests/fixtures/jpeg/gen_jpeg.py),
 *   against PIL's own decode: at most 3 apart per channel and under 1 on
 *   average (the libraries' IDCTs, chroma upsampling and rounding differ).
 *   Grey comes out with R = G = B.
 * - Hostile input: a size that is not the declared one, empty, garbage,
 *   truncated at half, a bare SOI/EOI pair, a corrupted scan; each gives
 *   ST_EBADMSG with libavcodec's reason, and the codec decodes correctly
 *   afterwards.
 * - Odd sizes (37x59, 1x1), repeated decodes bit-identical, encoder reuse
 *   deterministic across size and quality changes, argument checks.
 * - Timing of a 720x1280 decode and encode, printed, not asserted.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/file.h"
#include "proto/jpeg.h"
#include "testutil.h"

/* Fixture files are a few KB; this only bounds a broken checkout. */
#define FIXTURE_MAX_BYTES (1u << 20)
/* Decodes by two independent JPEG implementations agree this closely. */
#define PIL_MAX_ABS_DIFF 3
#define PIL_MEAN_ABS_DIFF 1.0
#define PSNR_MIN_Q90_DB 35.0
#define PSNR_MIN_Q30_DB 25.0
/* Frames of a few thousand pixels are mostly edge, where 4:2:0 chroma
 * costs most. */
#define PSNR_MIN_SMALL_Q90_DB 30.0
/* Quality 1 (qscale 31) still gives a recognisable picture. */
#define PSNR_MIN_Q1_DB 20.0
/* Rounding may let a coarser quality score this much higher. */
#define PSNR_MONOTONE_SLACK_DB 0.05
/* Width of the border checked separately in odd-size round trips. */
#define EDGE_BAND 4
#define TIMING_WARMUP 3
#define TIMING_RUNS 20
#define REPEAT_DECODES 50
#define TWO_PI 6.283185307179586

/* ---- helpers ----------------------------------------------------------- */

static double smoothstep(double edge0, double edge1, double x) {
  double t = (x - edge0) / (edge1 - edge0);
  t = t < 0 ? 0 : t > 1 ? 1 : t;
  return t * t * (3 - 2 * t);
}

static uint8_t clamp_u8(double v) {
  if (v <= 0)
    return 0;
  if (v >= 255)
    return 255;
  return (uint8_t)lround(v);
}

/* A smooth camera-like frame: gradients in R and G, a slow wave in B, a
 * disc, a box and a wide band whose edges are blurred over ~6 pixels (as
 * an object's edge is in a 720p camera frame), plus faint deterministic
 * luminance texture. */
static uint8_t *synthetic_rgb(int w, int h) {
  uint8_t *rgb = malloc((size_t)w * h * 3);
  assert_non_null(rgb);
  const double blur = 3.0; /* half-width of an edge, pixels */
  double cx = 0.3 * w, cy = 0.35 * h, rad = 0.2 * (w < h ? w : h);
  uint64_t s = 0x2545F4914F6CDD1Dull;
  for (int y = 0; y < h; y++) {
    for (int x = 0; x < w; x++) {
      double c[3] = {
          255.0 * x / (w > 1 ? w - 1 : 1),
          255.0 * y / (h > 1 ? h - 1 : 1),
          128.0 + 90.0 * sin(TWO_PI * (x + y) / (0.7 * (w + h))),
      };
      double d = hypot(x - cx, y - cy);
      double disc = 1.0 - smoothstep(rad - blur, rad + blur, d);
      double box = smoothstep(0.55 * w - blur, 0.55 * w + blur, x) *
                   (1.0 - smoothstep(0.9 * w - blur, 0.9 * w + blur, x)) *
                   smoothstep(0.5 * h - blur, 0.5 * h + blur, y) *
                   (1.0 - smoothstep(0.85 * h - blur, 0.85 * h + blur, y));
      double band = 1.0 - smoothstep(2.0, 2.0 + 2 * blur,
                                     fabs((double)x - 0.5 * y - 0.1 * w));
      const double disc_c[3] = {220, 40, 40}, box_c[3] = {30, 60, 200},
                   band_c[3] = {250, 230, 30};
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      double noise = (double)(s >> 62) - 1.5; /* -1.5..1.5 */
      for (int k = 0; k < 3; k++) {
        double v = c[k];
        v += disc * (disc_c[k] - v);
        v += box * (box_c[k] - v);
        v += band * (band_c[k] - v);
        v += noise;
        rgb[((size_t)y * w + x) * 3 + k] = clamp_u8(v);
      }
    }
  }
  return rgb;
}

static double psnr_db(const uint8_t *a, const uint8_t *b, size_t n) {
  double se = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - b[i];
    se += d * d;
  }
  double mse = se / (double)n;
  return mse == 0 ? INFINITY : 10.0 * log10(255.0 * 255.0 / mse);
}

/* PSNR over the last `band` columns and rows of a w x h RGB frame, where a
 * misplaced chroma sample of an odd size would show. */
static double edge_psnr_db(const uint8_t *a, const uint8_t *b, int w, int h,
                           int band) {
  double se = 0;
  size_t n = 0;
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      if (x < w - band && y < h - band)
        continue;
      for (int k = 0; k < 3; k++) {
        double d = (double)a[((size_t)y * w + x) * 3 + k] -
                   b[((size_t)y * w + x) * 3 + k];
        se += d * d;
        n++;
      }
    }
  return se == 0 ? INFINITY : 10.0 * log10(255.0 * 255.0 * (double)n / se);
}

static uint8_t *read_fixture(const char *name, size_t *len) {
  uint8_t *buf = NULL;
  int rc = st_read_file(st_test_fixture_path(name), FIXTURE_MAX_BYTES,
                        ST_ETOOBIG, &buf, len);
  if (rc)
    fail_msg("fixture %s: %s", name, st_error_detail());
  return buf;
}

static st_jpeg *new_codec(void) {
  st_jpeg *j = NULL;
  ST_ASSERT_OK(st_jpeg_new(&j));
  assert_non_null(j);
  return j;
}

static uint8_t *encode(st_jpeg *j, const uint8_t *rgb, int w, int h,
                       int quality, size_t *len) {
  uint8_t *out = NULL;
  ST_ASSERT_OK(st_jpeg_encode(j, rgb, w, h, quality, &out, len));
  assert_non_null(out);
  /* SOI first, EOI last: a whole baseline JPEG file. */
  assert_true(*len > 4);
  assert_int_equal(out[0], 0xFF);
  assert_int_equal(out[1], 0xD8);
  assert_int_equal(out[*len - 2], 0xFF);
  assert_int_equal(out[*len - 1], 0xD9);
  return out;
}

static uint8_t *decode(st_jpeg *j, const uint8_t *data, size_t len, int w,
                       int h) {
  uint8_t *rgb = malloc((size_t)w * h * 3);
  assert_non_null(rgb);
  ST_ASSERT_OK(st_jpeg_decode(j, data, len, w, h, rgb));
  return rgb;
}

/* Asserts the call failed with ST_EBADMSG and a detail containing want. */
static void assert_bad_message(int rc, const char *want) {
  if (rc != ST_EBADMSG)
    fail_msg("expected bad_message, got %s (%s)", st_err_name(rc),
             st_error_detail());
  const char *detail = st_error_detail();
  if (strncmp(detail, "jpeg: ", 6) != 0 || !strstr(detail, want))
    fail_msg("detail '%s' lacks '%s'", detail, want);
}

/* ---- round trip -------------------------------------------------------- */

static void test_round_trip_quality(void **state) {
  (void)state;
  enum { W = 320, H = 240 };
  st_jpeg *j = new_codec();
  uint8_t *src = synthetic_rgb(W, H);
  size_t len90, len30;
  uint8_t *jpg90 = encode(j, src, W, H, 90, &len90);
  uint8_t *jpg30 = encode(j, src, W, H, 30, &len30);
  uint8_t *dec90 = decode(j, jpg90, len90, W, H);
  uint8_t *dec30 = decode(j, jpg30, len30, W, H);
  double p90 = psnr_db(src, dec90, (size_t)W * H * 3);
  double p30 = psnr_db(src, dec30, (size_t)W * H * 3);
  printf("  %dx%d: q90 %zu bytes %.2f dB, q30 %zu bytes %.2f dB\n", W, H, len90,
         p90, len30, p30);
  assert_true(p90 > PSNR_MIN_Q90_DB);
  assert_true(p30 > PSNR_MIN_Q30_DB);
  assert_true(p30 < p90 - 1.0);
  assert_true(len30 < len90);
  free(src);
  free(jpg90);
  free(jpg30);
  free(dec90);
  free(dec30);
  st_jpeg_free(j);
}

/* Every quality gives a decodable file, and coarser never gives a larger
 * one here (a fixed quantiser scale, linear in quality). */
static void test_quality_range(void **state) {
  (void)state;
  enum { W = 64, H = 48 };
  st_jpeg *j = new_codec();
  uint8_t *src = synthetic_rgb(W, H);
  size_t prev_len = 0;
  double prev_psnr = INFINITY;
  const int qualities[] = {100, 95, 90, 75, 50, 30, 10, 1};
  for (size_t i = 0; i < sizeof qualities / sizeof qualities[0]; i++) {
    size_t len;
    uint8_t *jpg = encode(j, src, W, H, qualities[i], &len);
    uint8_t *dec = decode(j, jpg, len, W, H);
    double p = psnr_db(src, dec, (size_t)W * H * 3);
    printf("  q%-3d %5zu bytes %.2f dB\n", qualities[i], len, p);
    if (i > 0) {
      assert_true(len <= prev_len);
      assert_true(p <= prev_psnr + PSNR_MONOTONE_SLACK_DB);
    }
    prev_len = len;
    prev_psnr = p;
    free(jpg);
    free(dec);
  }
  assert_true(prev_psnr > PSNR_MIN_Q1_DB);
  free(src);
  st_jpeg_free(j);
}

/* ---- against PIL ------------------------------------------------------- */

typedef struct pil_case {
  const char *name; /* <name>.jpg and <name>.rgb / .gray */
  int width, height;
  int gray;
} pil_case;

/* clang-format off */
static const pil_case pil_cases[] = {
    {"pil_420_64x48", 64, 48, 0},
    {"pil_422_64x48", 64, 48, 0},
    {"pil_444_64x48", 64, 48, 0},
    {"pil_420_progressive_64x48", 64, 48, 0},
    {"pil_420_45x37", 45, 37, 0},
    {"pil_gray_64x48", 64, 48, 1},
};
/* clang-format on */

static void check_pil_case(st_jpeg *j, const pil_case *pc) {
  char path[128];
  size_t jpg_len, want_len;
  snprintf(path, sizeof path, "jpeg/%s.jpg", pc->name);
  uint8_t *jpg = read_fixture(path, &jpg_len);
  snprintf(path, sizeof path, "jpeg/%s.%s", pc->name,
           pc->gray ? "gray" : "rgb");
  uint8_t *want = read_fixture(path, &want_len);
  size_t pixels = (size_t)pc->width * pc->height;
  assert_int_equal(want_len, pixels * (pc->gray ? 1 : 3));

  uint8_t *got = decode(j, jpg, jpg_len, pc->width, pc->height);
  int max_diff = 0;
  double sum_diff = 0;
  for (size_t p = 0; p < pixels; p++) {
    for (int k = 0; k < 3; k++) {
      int g = got[p * 3 + k];
      int w = pc->gray ? want[p] : want[p * 3 + k];
      int d = abs(g - w);
      max_diff = d > max_diff ? d : max_diff;
      sum_diff += d;
    }
    if (pc->gray) {
      assert_int_equal(got[p * 3], got[p * 3 + 1]);
      assert_int_equal(got[p * 3], got[p * 3 + 2]);
    }
  }
  double mean_diff = sum_diff / (double)(pixels * 3);
  printf("  %-26s max |diff| %d, mean %.3f\n", pc->name, max_diff, mean_diff);
  assert_true(max_diff <= PIL_MAX_ABS_DIFF);
  assert_true(mean_diff < PIL_MEAN_ABS_DIFF);
  free(jpg);
  free(want);
  free(got);
}

static void test_matches_pil(void **state) {
  (void)state;
  st_jpeg *j = new_codec();
  /* One codec for every case: formats and sizes change between calls. */
  for (size_t i = 0; i < sizeof pil_cases / sizeof pil_cases[0]; i++)
    check_pil_case(j, &pil_cases[i]);
  st_jpeg_free(j);
}

/* ---- hostile input ----------------------------------------------------- */

static void test_size_mismatch(void **state) {
  (void)state;
  enum { W = 64, H = 48 };
  st_jpeg *j = new_codec();
  uint8_t *src = synthetic_rgb(W, H);
  size_t len;
  uint8_t *jpg = encode(j, src, W, H, 90, &len);
  uint8_t *good = decode(j, jpg, len, W, H);
  /* Large enough for every declared size below. */
  uint8_t *rgb = malloc((size_t)2 * W * 2 * H * 3);
  assert_non_null(rgb);

  /* Same pixel count, transposed. */
  assert_bad_message(st_jpeg_decode(j, jpg, len, H, W, rgb),
                     "frame is 64x48, message says 48x64");
  /* Larger than the JPEG. */
  assert_bad_message(st_jpeg_decode(j, jpg, len, 2 * W, 2 * H, rgb),
                     "frame is 64x48, message says 128x96");
  /* Smaller, within the decoder's allocation slack: our size check. */
  assert_bad_message(st_jpeg_decode(j, jpg, len, W / 2, H / 2, rgb),
                     "frame is 64x48, message says 32x24");
  assert_bad_message(st_jpeg_decode(j, jpg, len, W, H - 1, rgb),
                     "frame is 64x48, message says 64x47");
  /* Far smaller: libavcodec refuses to allocate more pixels than declared
   * (plus row padding), before decoding anything. */
  enum { BIG_W = 640, BIG_H = 480 };
  uint8_t *big_src = synthetic_rgb(BIG_W, BIG_H);
  size_t big_len;
  uint8_t *big = encode(j, big_src, BIG_W, BIG_H, 90, &big_len);
  int rc = st_jpeg_decode(j, big, big_len, W, H, rgb);
  printf("  640x480 JPEG declared 64x48: %s\n", st_error_detail());
  assert_bad_message(rc, "not a decodable JPEG");
  assert_non_null(strstr(st_error_detail(), "640x480"));
  free(big);
  free(big_src);

  /* The codec is intact. */
  memset(rgb, 0, (size_t)W * H * 3);
  ST_ASSERT_OK(st_jpeg_decode(j, jpg, len, W, H, rgb));
  assert_memory_equal(rgb, good, (size_t)W * H * 3);
  free(rgb);
  free(good);
  free(jpg);
  free(src);
  st_jpeg_free(j);
}

static void test_bad_input(void **state) {
  (void)state;
  enum { W = 64, H = 48, GARBAGE_BYTES = 4096 };
  st_jpeg *j = new_codec();
  uint8_t *src = synthetic_rgb(W, H);
  size_t len;
  uint8_t *jpg = encode(j, src, W, H, 90, &len);
  uint8_t *good = decode(j, jpg, len, W, H);
  uint8_t *rgb = malloc((size_t)W * H * 3);
  assert_non_null(rgb);

  /* Empty. */
  assert_bad_message(st_jpeg_decode(j, jpg, 0, W, H, rgb), "empty payload");
  assert_bad_message(st_jpeg_decode(j, NULL, 0, W, H, rgb), "empty payload");

  /* Garbage, with and without a JPEG start marker in front. */
  uint8_t *garbage = malloc(GARBAGE_BYTES);
  assert_non_null(garbage);
  uint64_t s = 88172645463325252ull;
  for (size_t i = 0; i < GARBAGE_BYTES; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    garbage[i] = (uint8_t)(s >> 56);
  }
  int rc = st_jpeg_decode(j, garbage, GARBAGE_BYTES, W, H, rgb);
  printf("  garbage: %s\n", st_error_detail());
  /* libavcodec's own words (av_strerror of AVERROR_INVALIDDATA). */
  assert_bad_message(rc, "not a decodable JPEG: Invalid data found");
  garbage[0] = 0xFF;
  garbage[1] = 0xD8;
  rc = st_jpeg_decode(j, garbage, GARBAGE_BYTES, W, H, rgb);
  printf("  SOI + garbage: %s\n", st_error_detail());
  assert_bad_message(rc, "not a decodable JPEG");

  /* A bare SOI/EOI pair holds no picture. */
  const uint8_t soi_eoi[] = {0xFF, 0xD8, 0xFF, 0xD9};
  rc = st_jpeg_decode(j, soi_eoi, sizeof soi_eoi, W, H, rgb);
  printf("  SOI EOI: %s\n", st_error_detail());
  assert_bad_message(rc, "not a decodable JPEG");

  /* Truncated at half: the scan runs out of bits. With AV_EF_EXPLODE the
   * decoder reports it instead of concealing the rest of the picture. */
  rc = st_jpeg_decode(j, jpg, len / 2, W, H, rgb);
  printf("  truncated at %zu of %zu bytes: %s\n", len / 2, len,
         st_error_detail());
  assert_bad_message(rc, "not a decodable JPEG");

  /* Only the headers (everything before the scan data). */
  size_t sos = 0;
  for (size_t i = 0; i + 1 < len; i++)
    if (jpg[i] == 0xFF && jpg[i + 1] == 0xDA) {
      sos = i;
      break;
    }
  assert_true(sos > 0);
  rc = st_jpeg_decode(j, jpg, sos, W, H, rgb);
  printf("  headers only (%zu bytes): %s\n", sos, st_error_detail());
  assert_bad_message(rc, "not a decodable JPEG");

  /* Damaged bytes in the middle of the scan, length intact: XOR masks over
   * runs of bytes. JPEG has no checksum, so damage that still forms valid
   * Huffman codes decodes to a wrong picture that no decoder can flag;
   * damage that forms an invalid code is an error with AV_EF_EXPLODE
   * (without it libavcodec conceals and succeeds every time). Each outcome
   * must be one of the two, and some must be detected. */
  uint8_t *damaged = malloc(len);
  assert_non_null(damaged);
  const int masks[] = {0x5A, 0xFF, 0x01, 0x80};
  const size_t runs[] = {1, 4, 16, 64};
  int detected = 0, undetected = 0;
  for (size_t m = 0; m < sizeof masks / sizeof masks[0]; m++) {
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
      memcpy(damaged, jpg, len);
      size_t mid = sos + (len - sos) / 2;
      for (size_t i = mid; i < mid + runs[r] && i + 2 < len; i++)
        damaged[i] ^= (uint8_t)masks[m];
      rc = st_jpeg_decode(j, damaged, len, W, H, rgb);
      if (rc == ST_OK) {
        undetected++;
      } else {
        assert_bad_message(rc, "not a decodable JPEG");
        detected++;
      }
    }
  }
  printf("  damaged scans: %d detected, %d decoded to a wrong picture; last: "
         "%s\n",
         detected, undetected, st_error_detail());
  assert_true(detected > 0);
  free(damaged);

  /* Between each failure and the next decode the codec recovers. */
  memset(rgb, 0, (size_t)W * H * 3);
  ST_ASSERT_OK(st_jpeg_decode(j, jpg, len, W, H, rgb));
  assert_memory_equal(rgb, good, (size_t)W * H * 3);

  free(garbage);
  free(rgb);
  free(good);
  free(jpg);
  free(src);
  st_jpeg_free(j);
}

/* The payload handed to the decoder is exactly `len` bytes of heap: the
 * codec must supply libavcodec's read-ahead padding itself (ASan watches
 * the copy). */
static void test_unpadded_exact_buffer(void **state) {
  (void)state;
  size_t len;
  uint8_t *jpg = read_fixture("jpeg/pil_420_45x37.jpg", &len);
  uint8_t *exact = malloc(len);
  assert_non_null(exact);
  memcpy(exact, jpg, len);
  st_jpeg *j = new_codec();
  uint8_t *a = decode(j, exact, len, 45, 37);
  uint8_t *b = decode(j, jpg, len, 45, 37);
  assert_memory_equal(a, b, (size_t)45 * 37 * 3);
  free(a);
  free(b);
  free(exact);
  free(jpg);
  st_jpeg_free(j);
}

/* ---- sizes, reuse, arguments ------------------------------------------- */

static void test_odd_sizes(void **state) {
  (void)state;
  st_jpeg *j = new_codec();
  const int sizes[][2] = {{37, 59}, {59, 37}, {1, 1}, {1, 17}, {17, 1}};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    int w = sizes[i][0], h = sizes[i][1];
    uint8_t *src = synthetic_rgb(w, h);
    size_t len;
    uint8_t *jpg = encode(j, src, w, h, 90, &len);
    uint8_t *dec = decode(j, jpg, len, w, h);
    double p = psnr_db(src, dec, (size_t)w * h * 3);
    double edge = edge_psnr_db(src, dec, w, h, EDGE_BAND);
    printf("  %dx%d: %zu bytes, %.2f dB, last %d rows and columns %.2f dB\n", w,
           h, len, p, EDGE_BAND, edge);
    assert_true(p > PSNR_MIN_SMALL_Q90_DB);
    assert_true(edge > PSNR_MIN_SMALL_Q90_DB);
    free(src);
    free(jpg);
    free(dec);
  }
  st_jpeg_free(j);
}

static void test_repeated_decode_identical(void **state) {
  (void)state;
  enum { W = 96, H = 64 };
  st_jpeg *j = new_codec();
  uint8_t *src = synthetic_rgb(W, H);
  size_t len;
  uint8_t *jpg = encode(j, src, W, H, 90, &len);
  uint8_t *first = decode(j, jpg, len, W, H);
  assert_true(psnr_db(src, first, (size_t)W * H * 3) > PSNR_MIN_SMALL_Q90_DB);
  uint8_t *rgb = malloc((size_t)W * H * 3);
  assert_non_null(rgb);
  for (int i = 0; i < REPEAT_DECODES; i++) {
    memset(rgb, i, (size_t)W * H * 3);
    ST_ASSERT_OK(st_jpeg_decode(j, jpg, len, W, H, rgb));
    assert_memory_equal(rgb, first, (size_t)W * H * 3);
  }
  free(rgb);
  free(first);
  free(jpg);
  free(src);
  st_jpeg_free(j);
}

/* The reused encoder gives the same bytes as a fresh one, also after it
 * was reopened for another size and quality in between. */
static void test_encoder_reuse_deterministic(void **state) {
  (void)state;
  enum { W = 80, H = 60, W2 = 37, H2 = 59 };
  st_jpeg *j = new_codec();
  st_jpeg *fresh = new_codec();
  uint8_t *src = synthetic_rgb(W, H);
  uint8_t *src2 = synthetic_rgb(W2, H2);
  size_t len_a, len_b, len_c, len_d, len_fresh;
  uint8_t *a = encode(j, src, W, H, 90, &len_a);
  uint8_t *b = encode(j, src, W, H, 90, &len_b);    /* reused */
  uint8_t *c = encode(j, src2, W2, H2, 90, &len_c); /* new size */
  uint8_t *d = encode(j, src, W, H, 50, &len_d);    /* new quality */
  free(d);
  d = encode(j, src, W, H, 90, &len_d); /* back */
  uint8_t *f = encode(fresh, src, W, H, 90, &len_fresh);
  assert_int_equal(len_a, len_fresh);
  assert_memory_equal(a, f, len_a);
  assert_int_equal(len_b, len_fresh);
  assert_memory_equal(b, f, len_b);
  assert_int_equal(len_d, len_fresh);
  assert_memory_equal(d, f, len_d);
  uint8_t *c_dec = decode(j, c, len_c, W2, H2);
  assert_true(psnr_db(src2, c_dec, (size_t)W2 * H2 * 3) >
              PSNR_MIN_SMALL_Q90_DB);
  free(a);
  free(b);
  free(c);
  free(c_dec);
  free(d);
  free(f);
  free(src);
  free(src2);
  st_jpeg_free(j);
  st_jpeg_free(fresh);
}

static void test_arguments(void **state) {
  (void)state;
  st_jpeg_free(NULL);
  assert_int_equal(st_jpeg_new(NULL), ST_EINVAL);
  st_jpeg *j = new_codec();
  uint8_t rgb[3 * 4 * 4] = {0};
  uint8_t *out = (uint8_t *)1;
  size_t out_len = 7;
  assert_int_equal(st_jpeg_encode(j, rgb, 4, 4, 0, &out, &out_len), ST_EINVAL);
  assert_null(out);
  assert_int_equal(out_len, 0);
  assert_int_equal(st_jpeg_encode(j, rgb, 4, 4, 101, &out, &out_len),
                   ST_EINVAL);
  assert_int_equal(st_jpeg_encode(j, rgb, 0, 4, 90, &out, &out_len), ST_EINVAL);
  assert_int_equal(st_jpeg_encode(j, rgb, 4, 65536, 90, &out, &out_len),
                   ST_EINVAL);
  assert_int_equal(st_jpeg_encode(j, NULL, 4, 4, 90, &out, &out_len),
                   ST_EINVAL);
  assert_int_equal(st_jpeg_encode(NULL, rgb, 4, 4, 90, &out, &out_len),
                   ST_EINVAL);
  assert_int_equal(st_jpeg_encode(j, rgb, 4, 4, 90, NULL, &out_len), ST_EINVAL);
  const uint8_t data[4] = {0xFF, 0xD8, 0xFF, 0xD9};
  assert_int_equal(st_jpeg_decode(j, data, sizeof data, 0, 4, rgb), ST_EINVAL);
  assert_int_equal(st_jpeg_decode(j, data, sizeof data, 4, -1, rgb), ST_EINVAL);
  assert_int_equal(st_jpeg_decode(j, data, sizeof data, 4, 4, NULL), ST_EINVAL);
  assert_int_equal(st_jpeg_decode(NULL, data, sizeof data, 4, 4, rgb),
                   ST_EINVAL);
  assert_int_equal(st_jpeg_decode(j, NULL, 4, 4, 4, rgb), ST_EINVAL);
  /* Quality at both ends works. */
  for (int q = 1; q <= 100; q += 99) {
    ST_ASSERT_OK(st_jpeg_encode(j, rgb, 4, 4, q, &out, &out_len));
    free(out);
  }
  st_jpeg_free(j);
}

/* ---- timing (printed only) --------------------------------------------- */

static void test_timing_720x1280(void **state) {
  (void)state;
  enum { W = 720, H = 1280 };
  st_jpeg *j = new_codec();
  uint8_t *src = synthetic_rgb(W, H);
  uint8_t *rgb = malloc((size_t)W * H * 3);
  assert_non_null(rgb);
  size_t len = 0;
  uint8_t *jpg = NULL;
  for (int i = 0; i < TIMING_WARMUP; i++) {
    free(jpg);
    jpg = encode(j, src, W, H, 90, &len);
  }
  double t0 = st_test_now_ms();
  for (int i = 0; i < TIMING_RUNS; i++) {
    free(jpg);
    jpg = encode(j, src, W, H, 90, &len);
  }
  double enc_ms = (st_test_now_ms() - t0) / TIMING_RUNS;
  for (int i = 0; i < TIMING_WARMUP; i++)
    ST_ASSERT_OK(st_jpeg_decode(j, jpg, len, W, H, rgb));
  t0 = st_test_now_ms();
  for (int i = 0; i < TIMING_RUNS; i++)
    ST_ASSERT_OK(st_jpeg_decode(j, jpg, len, W, H, rgb));
  double dec_ms = (st_test_now_ms() - t0) / TIMING_RUNS;
  double p = psnr_db(src, rgb, (size_t)W * H * 3);
  printf("  %dx%d q90 (%zu bytes, %.2f dB): decode %.2f ms, encode %.2f ms "
         "(mean of %d after %d warm-up, one thread)\n",
         W, H, len, p, dec_ms, enc_ms, TIMING_RUNS, TIMING_WARMUP);
  assert_true(p > PSNR_MIN_Q90_DB);
  free(jpg);
  free(rgb);
  free(src);
  st_jpeg_free(j);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_quality),
      cmocka_unit_test(test_quality_range),
      cmocka_unit_test(test_matches_pil),
      cmocka_unit_test(test_size_mismatch),
      cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_unpadded_exact_buffer),
      cmocka_unit_test(test_odd_sizes),
      cmocka_unit_test(test_repeated_decode_identical),
      cmocka_unit_test(test_encoder_reuse_deterministic),
      cmocka_unit_test(test_arguments),
      cmocka_unit_test(test_timing_720x1280),
  };
  return cmocka_run_group_tests_name("jpeg", tests, NULL, NULL);
}
