/* exp for float32 inside vectorised loops (softmax, SiLU), with the same bits at every vector
 * width.
 *
 * glibc's SIMD expf (libmvec) has one implementation per vector width, and its 8- and 16-lane
 * versions round differently: an AVX2 and an AVX-512 build of the same kernel would disagree in
 * the last bit, and greedy decoding may not depend on the CPU's vector width. This one uses only
 * +, *, a compare-and-select and integer bit casts, every lane on its own, so the compiler
 * vectorises it at any width (or not at all) to the same results.
 *
 * exp(x) = 2^n * exp(r): n = x / ln2 rounded to nearest (by adding and subtracting 1.5 * 2^23),
 * r = x - n * ln2 in [-ln2/2, ln2/2] (ln2 split in two so n * ln2_hi is exact), exp(r) by a
 * degree-6 polynomial fitted for the least maximum relative error on that interval (3.6e-9 with
 * the coefficients rounded to float32, far below float32's own rounding), and 2^n built in the
 * exponent bits as two factors so that n = 128 (x up to ln(FLT_MAX)) needs no special case.
 *
 * It relies on build.py's float flags: no -fassociative-math (which would fold the rounding
 * step's add and subtract away), -ffp-contract=fast (the steps' multiply-adds fuse alike in every
 * x86 SIMD build).
 *
 * Range: below ln(FLT_MIN) ~ -87.34 (including -inf) the result is 0 rather than a subnormal
 * (softmax and SiLU cannot tell, and subnormal results slow x86 down); above ln(FLT_MAX) ~ 88.72
 * it saturates at exp(88.72) ~ 3.4e38, finite, as the kernels compile with -ffinite-math-only.
 */
#ifndef ZIGGURAT_EXP_APPROX_H
#define ZIGGURAT_EXP_APPROX_H

#include <stdint.h>
#include <string.h>

#define EXP_APPROX_MIN_X (-87.33f)
#define EXP_APPROX_MAX_X 88.72f

static inline __attribute__((always_inline)) float exp_approx(float x) {
    const float log2e = 0x1.715476p+0f;
    const float ln2_hi = 0x1.62e4p-1f;       /* 16 significant bits: n * ln2_hi is exact */
    const float ln2_lo = 0x1.7f7d1cp-20f;    /* ln2 - ln2_hi */
    const float round_magic = 0x1.8p23f;     /* t + 1.5 * 2^23 rounds t to an integer */
    const float y = x < EXP_APPROX_MIN_X ? EXP_APPROX_MIN_X
                    : x > EXP_APPROX_MAX_X ? EXP_APPROX_MAX_X
                                           : x;
    const float n = (y * log2e + round_magic) - round_magic;
    float r = y - n * ln2_hi;
    r = r - n * ln2_lo;
    float q = 0x1.6a23d0p-10f;
    q = q * r + 0x1.123a20p-7f;
    q = q * r + 0x1.5558f2p-5f;
    q = q * r + 0x1.555492p-3f;
    q = q * r + 0x1.fffffcp-2f;
    const float p = q * (r * r) + r + 1.0f;
    /* 2^n as 2^(n/2) * 2^(n - n/2): each factor is a normal float for n in [-126, 128]. */
    const int32_t ni = (int32_t)n;
    const int32_t n1 = ni / 2;
    const int32_t b1 = (n1 + 127) << 23;
    const int32_t b2 = (ni - n1 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    const float result = p * s1 * s2;
    return x < EXP_APPROX_MIN_X ? 0.0f : result;
}

#endif
