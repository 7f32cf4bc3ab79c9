/* int8 x int8 -> float32 GEMM, one signature over one packed weight layout for every
 * instruction-set variant (isa.h picks the variant at build time; int8_gemm() dispatches).
 *
 *   out[m, n] = (sum_k x[m, k] * W[n, k]) * row_scale[m] * col_scale[n] (+ bias[n])
 *
 * x        [M, K] row-major, row stride K: signed int8 in [-127, 127] (symmetric quantisation
 *          never yields -128); variants for which int8_gemm_input_offset() returns 128 take
 *          x + 128 as uint8 instead.
 * packed   [ceil(N/16)][ceil(K/4)][16][4] int8: for 16 outputs, 4 consecutive inputs each,
 *          zero past N and past K (so K and N need not be multiples of the vector width).
 * offset   [2][N] int32, per-variant corrections (each variant reads only its own row):
 *          offset[0][n] = 128 * sum_k W[n, k], for offset inputs (AVX-512 VNNI);
 *          offset[1][n] = sum of -W[n, k] over the k where W[n, k] < 0, for the AVX2 variant's
 *          sign mask (int8_gemm_avx2.c).
 * col_scale [N] float32, bias [N] float32 or NULL, row_scale [M] float32, out [M, N] float32.
 *
 * Accumulation is exact int32 arithmetic and each row is computed on its own, so a row's
 * result never depends on the other rows (batch invariance) or on the thread count.
 * Every variant turns an accumulator into its output with exactly the operations of
 * int8_gemm_epilogue() below, in that order, so all variants return bitwise equal outputs
 * (SIMD code uses the same multiply, INT8_GEMM_OPAQUE and fused multiply-add per lane).
 * Returns 0, or 1 when a shape is unusable (M, N or K <= 0).
 */
#ifndef ZIGGURAT_INT8_GEMM_H
#define ZIGGURAT_INT8_GEMM_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* An empty asm that claims to change v: the optimiser cannot see through it, so a build that
 * allows reassociation (-ffast-math) cannot regroup acc * (row_scale * col_scale) into
 * (acc * row_scale) * col_scale in one variant and not in another. Works on scalars and on
 * SIMD vectors alike. */
#if defined(__x86_64__) || defined(__i386__)
#define INT8_GEMM_OPAQUE(v) __asm__("" : "+v"(v))
#elif defined(__aarch64__)
#define INT8_GEMM_OPAQUE(v) __asm__("" : "+w"(v))
#else
#define INT8_GEMM_OPAQUE(v) ((void)0)
#endif

/* out = acc * (row_scale * col_scale) (+ bias): one multiply for the scale, made opaque, then
 * one multiply, or one fused multiply-add with the bias. The fma is explicit, never left to
 * the compiler's contraction, which would differ between variants and compilers. */
static inline float int8_gemm_epilogue(int32_t acc, float row_scale, float col_scale,
                                       const float *bias_n) {
    float scale = row_scale * col_scale;
    INT8_GEMM_OPAQUE(scale);
    return bias_n != NULL ? fmaf((float)acc, scale, *bias_n) : (float)acc * scale;
}

/* The 4 activation bytes of group g of a row, as one int32 to broadcast; past K (the last group
 * of a K that is not a multiple of 4) zero, without reading past the row: the packed weights
 * there are zero anyway. */
static inline __attribute__((always_inline)) int32_t int8_gemm_group(const void *row, int64_t g,
                                                                     int64_t K) {
    int32_t a4 = 0;
    const int64_t k = g * 4;
    memcpy(&a4, (const char *)row + k, K - k >= 4 ? 4 : (size_t)(K - k));
    return a4;
}

int int8_gemm(const void *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
              const int8_t *packed, const int32_t *offset, const float *col_scale,
              const float *bias, float *out, int num_threads);

/* 128 where the dispatched variant takes x + 128 as uint8 (AVX-512 VNNI's vpdpbusd multiplies
 * unsigned by signed bytes), 0 where it takes signed x. */
int int8_gemm_input_offset(void);

/* The portable scalar reference, in every build: signed x, same layout and epilogue. */
int int8_gemm_reference(const int8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                        const int8_t *packed, const float *col_scale, const float *bias,
                        float *out, int num_threads);

/* One implementation per instruction set, each defined only in builds for it. */
int int8_gemm_avx512vnni(const uint8_t *x, const float *row_scale, int64_t M, int64_t K,
                         int64_t N, const int8_t *packed, const int32_t *offset,
                         const float *col_scale, const float *bias, float *out, int num_threads);
int int8_gemm_avx2(const int8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                   const int8_t *packed, const int32_t *negative_sum, const float *col_scale,
                   const float *bias, float *out, int num_threads);
int int8_gemm_neon(const int8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                   const int8_t *packed, const float *col_scale, const float *bias, float *out,
                   int num_threads);

#endif
