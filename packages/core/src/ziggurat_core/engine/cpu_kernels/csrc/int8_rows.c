/* The elementwise halves of a W8A8 linear layer (see layers/packed.py), one pass each instead
 * of the six to eight torch ops they take otherwise:
 *   quantize_rows_s8: x [rows, cols] float32 (row stride x_stride) -> q int8, scales [rows], with
 *     x[r, c] * inv_smoothing[c] ~= q[r, c] * scales[r] (inv_smoothing may be NULL);
 *   quantize_rows_u8: the same q stored as q + 128 in uint8, the input the AVX-512 VNNI GEMM takes;
 *   dequantize_rows_s32: out[r, c] = acc[r, c] * row_scale[r] * col_scale[c] (+ bias[c]), as
 *     int8_gemm_epilogue computes it;
 *     `out` may be the same memory as `acc` (each element is read before it is written).
 * Rows are independent, so results do not depend on how many rows come together.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "decode_parts.h"
#include "int8_gemm.h"
#include "isa.h"

#if defined(ZIG_ISA_AVX512VNNI)
#include <immintrin.h>
#endif

/* Below this many elements a parallel region costs more than it saves. */
#define PARALLEL_MIN_ELEMENTS 65536

/* `flip` 0x80 stores q + 128 as uint8 (what vpdpbusd's unsigned operand needs), 0 stores q. */
static inline __attribute__((always_inline)) void quantize_rows(
    const float *restrict x, int64_t rows, int64_t cols, int64_t x_stride,
    const float *restrict inv_smoothing, uint8_t *restrict q, float *restrict scales,
    int num_threads, const uint8_t flip) {
    const int threads = rows * cols >= PARALLEL_MIN_ELEMENTS ? num_threads : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * x_stride;
        uint8_t *qr = q + r * cols;
        float absmax = 0.0f;
        if (inv_smoothing != NULL) {
            for (int64_t c = 0; c < cols; c++) absmax = fmaxf(absmax, fabsf(xr[c] * inv_smoothing[c]));
        } else {
            for (int64_t c = 0; c < cols; c++) absmax = fmaxf(absmax, fabsf(xr[c]));
        }
        const float scale = fmaxf(absmax, 1e-12f) / 127.0f;
        const float inv_scale = 1.0f / scale;
        scales[r] = scale;
        if (inv_smoothing != NULL) {
            for (int64_t c = 0; c < cols; c++)
                qr[c] = (uint8_t)(int8_t)nearbyintf(xr[c] * inv_smoothing[c] * inv_scale) ^ flip;
        } else {
            for (int64_t c = 0; c < cols; c++) qr[c] = (uint8_t)(int8_t)nearbyintf(xr[c] * inv_scale) ^ flip;
        }
    }
}

void quantize_rows_s8(const float *x, int64_t rows, int64_t cols, int64_t x_stride,
                      const float *inv_smoothing, int8_t *q, float *scales, int num_threads) {
    quantize_rows(x, rows, cols, x_stride, inv_smoothing, (uint8_t *)q, scales, num_threads, 0);
}

void quantize_rows_u8(const float *x, int64_t rows, int64_t cols, int64_t x_stride,
                      const float *inv_smoothing, uint8_t *q, float *scales, int num_threads) {
    quantize_rows(x, rows, cols, x_stride, inv_smoothing, q, scales, num_threads, 0x80);
}

void dequantize_rows_s32(const int32_t *acc, int64_t rows, int64_t cols,
                         const float *restrict row_scale, const float *restrict col_scale,
                         const float *restrict bias, float *out, int num_threads) {
    const int threads = rows * cols >= PARALLEL_MIN_ELEMENTS ? num_threads : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *ar = acc + r * cols;
        float *outr = out + r * cols;
        const float rs = row_scale[r];
        int64_t c = 0;
#if defined(ZIG_ISA_AVX512VNNI)
        /* Only AVX-512 VNNI builds run _int_mm (layers/packed.py): the epilogue vectorised by
         * hand, as the opaque scale keeps the compiler from doing it. */
        for (; c < cols; c += 16) {
            const __mmask16 valid = cols - c >= 16 ? (__mmask16)0xFFFF
                                                   : (__mmask16)((1u << (cols - c)) - 1u);
            const __m512 v = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(valid, ar + c));
            __m512 scale = _mm512_mul_ps(_mm512_set1_ps(rs), _mm512_maskz_loadu_ps(valid, col_scale + c));
            INT8_GEMM_OPAQUE(scale);
            const __m512 y = bias != NULL
                                 ? _mm512_fmadd_ps(v, scale, _mm512_maskz_loadu_ps(valid, bias + c))
                                 : _mm512_mul_ps(v, scale);
            _mm512_mask_storeu_ps(outr + c, valid, y);
        }
#endif
        for (; c < cols; c++)
            outr[c] = int8_gemm_epilogue(ar[c], rs, col_scale[c], bias != NULL ? bias + c : NULL);
    }
}
