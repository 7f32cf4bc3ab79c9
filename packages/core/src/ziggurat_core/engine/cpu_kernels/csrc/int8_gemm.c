/* The one entry point of the int8 GEMM (contract in int8_gemm.h): each build of the library
 * holds one SIMD variant, chosen by isa.h, and the portable reference. */
#include "int8_gemm.h"

#include "isa.h"

int int8_gemm_input_offset(void) {
#if defined(ZIG_ISA_AVX512VNNI)
    return 128; /* vpdpbusd multiplies unsigned activations by signed weights */
#else
    return 0;
#endif
}

int int8_gemm(const void *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
              const int8_t *packed, const int32_t *offset, const float *col_scale,
              const float *bias, float *out, int num_threads) {
#if defined(ZIG_ISA_AVX512VNNI)
    return int8_gemm_avx512vnni((const uint8_t *)x, row_scale, M, K, N, packed, offset, col_scale,
                                bias, out, num_threads);
#elif defined(ZIG_ISA_AVX2)
    /* offset's second row: the negative weights' magnitudes (int8_gemm.h) */
    return int8_gemm_avx2((const int8_t *)x, row_scale, M, K, N, packed, offset + N, col_scale,
                          bias, out, num_threads);
#else
    (void)offset;
#if defined(ZIG_ISA_NEON)
    return int8_gemm_neon((const int8_t *)x, row_scale, M, K, N, packed, col_scale, bias, out,
                          num_threads);
#else
    return int8_gemm_reference((const int8_t *)x, row_scale, M, K, N, packed, col_scale, bias,
                               out, num_threads);
#endif
#endif
}
