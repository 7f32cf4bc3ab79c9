/* The portable int8 GEMM (see int8_gemm.h): the reference every SIMD variant is tested
 * against, and the path of CPUs with none of them. Plain loops over the packed layout. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "int8_gemm.h"

int int8_gemm_reference(const int8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                        const int8_t *packed, const float *col_scale, const float *bias,
                        float *out, int num_threads) {
    if (M <= 0 || K <= 0 || N <= 0) return 1;
    const int64_t tiles = (N + 15) / 16, groups = (K + 3) / 4;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t tile = 0; tile < tiles; tile++) {
        const int8_t *w = packed + tile * groups * 64;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = x + m * K;
            int32_t acc[16] = {0};
            for (int64_t g = 0; g < groups; g++)
                for (int j = 0; j < 16; j++)
                    for (int i = 0; i < 4 && g * 4 + i < K; i++)
                        acc[j] += (int32_t)xr[g * 4 + i] * (int32_t)w[(g * 16 + j) * 4 + i];
            for (int j = 0; j < 16 && tile * 16 + j < N; j++) {
                const int64_t n = tile * 16 + j;
                /* Spelled out so that no compiler flag (contraction, reassociation) can change
                 * the rounding: (float)acc * row_scale rounded, then one fused multiply-add;
                 * every variant computes these same bits (int8_gemm.h). */
                const float scaled = (float)acc[j] * row_scale[m];
                out[m * N + n] = fmaf(scaled, col_scale[n], bias != NULL ? bias[n] : 0.0f);
            }
        }
    }
    return 0;
}
