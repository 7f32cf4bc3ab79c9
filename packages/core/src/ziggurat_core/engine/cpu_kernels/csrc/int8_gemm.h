/* int8 x int8 -> float32 GEMM, one signature over one packed weight layout for every
 * instruction-set variant (isa.h picks the variant at build time; int8_gemm() dispatches).
 *
 *   out[m, n] = (sum_k x[m, k] * W[n, k]) * row_scale[m] * col_scale[n] (+ bias[n])
 *
 * x        [M, K] row-major, row stride K: signed int8 in [-127, 127] (symmetric quantisation
 *          never yields -128, which keeps the AVX2 sign trick exact); variants for which
 *          int8_gemm_input_offset() returns 128 take x + 128 as uint8 instead.
 * packed   [ceil(N/16)][ceil(K/4)][16][4] int8: for 16 outputs, 4 consecutive inputs each,
 *          zero past N and past K (so K and N need not be multiples of the vector width).
 * offset   [N] int32 = 128 * sum_k W[n, k]: the correction for offset inputs (unused otherwise).
 * col_scale [N] float32, bias [N] float32 or NULL, row_scale [M] float32, out [M, N] float32.
 *
 * The float epilogue is fixed to the bit: out = fmaf((float)acc * row_scale[m], col_scale[n],
 * bias[n] or 0), the product rounded, then one fused multiply-add, written explicitly (fmaf or
 * an FMA intrinsic) so that no contraction or reassociation flag changes it.
 * Accumulation is exact int32 arithmetic and each row is computed on its own, so a row's
 * result never depends on the other rows (batch invariance) or on the thread count.
 * Returns 0, or 1 when a shape is unusable (M, N or K <= 0).
 */
#ifndef ZIGGURAT_INT8_GEMM_H
#define ZIGGURAT_INT8_GEMM_H
#include <stdint.h>

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
                   const int8_t *packed, const float *col_scale, const float *bias, float *out,
                   int num_threads);
int int8_gemm_neon(const int8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                   const int8_t *packed, const float *col_scale, const float *bias, float *out,
                   int num_threads);

#endif
