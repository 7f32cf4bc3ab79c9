/* int8 x int8 -> float GEMM for the few-row case (decode steps), with AVX-512 VNNI.
 *
 * torch._int_mm is fast when its weight stays in cache, but a decode step streams every weight
 * of the model from memory once, and there it reached 4-8 GB/s of the ~30 GB/s this CPU reads.
 * This kernel reads a weight laid out for `vpdpbusd` in one sequential pass:
 *   packed [N/16][K/4][16][4] int8: for 16 outputs, 4 consecutive inputs each, so one 64-byte
 *   load feeds one vpdpbusd per activation row.
 * vpdpbusd multiplies unsigned by signed bytes, so activations come shifted from int8 to uint8
 * (x + 128, by quantize_rows_u8) and the product is corrected by 128 * sum_k W[n, k]
 * (`offset`, precomputed). The epilogue applies the row and column scales and the bias, so
 * the float output is written once. Rows are independent and accumulation is exact integer
 * arithmetic: results do not depend on the batch.
 *
 *   x      [M, K] uint8 (int8 + 128, row stride K), row_scale [M] float
 *   packed as above, offset [N] int32 (= 128 * column sums), col_scale [N], bias [N] or NULL
 *   out    [M, N] float32
 * Requires K % 4 == 0 and N % 16 == 0; returns 1 otherwise, and 2 without AVX-512 VNNI.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
#include <immintrin.h>

/* At most this many rows per register tile (int32 accumulators of 16 lanes, two per row). */
#define ROWS 8
/* Bytes ahead of the current position to prefetch in each weight stream. */
#define PREFETCH_BYTES 1024

int int8_gemm_supported(void) { return 1; }

/* ROWS rows x (16 * TILES) outputs, all K: the accumulators stay in registers and each
 * broadcast activation feeds TILES vpdpbusd. */
static inline __attribute__((always_inline)) void row_tile(
    const uint8_t *x, const float *row_scale, int64_t m0, int64_t rows, int64_t K, int64_t N,
    const int8_t *packed, int64_t tile, const int TILES, const int R, const int32_t *offset,
    const float *col_scale, const float *bias, float *out) {
    /* R >= rows register rows; ones past `rows` repeat the last row and are not stored. */
    const uint8_t *xr[ROWS];
    for (int r = 0; r < R; r++) xr[r] = x + (m0 + (r < rows ? r : rows - 1)) * K;
    const int8_t *w[2];
    for (int t = 0; t < TILES; t++) w[t] = packed + (tile + t) * K * 16;
    __m512i acc[ROWS][2];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < TILES; t++) acc[r][t] = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 4) {
        __m512i wk[2];
        for (int t = 0; t < TILES; t++) {
            _mm_prefetch((const char *)(w[t] + k * 16 + PREFETCH_BYTES), _MM_HINT_T0);
            wk[t] = _mm512_loadu_si512((const void *)(w[t] + k * 16));
        }
        for (int r = 0; r < R; r++) {
            int32_t a4;
            memcpy(&a4, xr[r] + k, 4);
            const __m512i a = _mm512_set1_epi32(a4);
            for (int t = 0; t < TILES; t++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], a, wk[t]);
        }
    }
    for (int t = 0; t < TILES; t++) {
        const int64_t n0 = (tile + t) * 16;
        const __m512i off = _mm512_loadu_si512((const void *)(offset + n0));
        const __m512 cs = _mm512_loadu_ps(col_scale + n0);
        const __m512 b = bias != NULL ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
        for (int r = 0; r < rows; r++) {
            const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][t], off));
            const __m512 scaled = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(row_scale[m0 + r])), cs);
            _mm512_storeu_ps(out + (m0 + r) * N + n0, _mm512_add_ps(scaled, b));
        }
    }
}

/* x holds activations already shifted to unsigned (int8 + 128, see quantize_rows_u8). */
int int8_gemm_vnni(const uint8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                   const int8_t *packed, const int32_t *offset, const float *col_scale,
                   const float *bias, float *out, int num_threads) {
    if (K % 4 != 0 || N % 16 != 0) return 1;
    const int64_t tiles = N / 16;
    const int64_t pairs = (tiles + 1) / 2;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t pair = 0; pair < pairs; pair++) {
        const int64_t tile = pair * 2;
        for (int64_t m0 = 0; m0 < M; m0 += ROWS) {
            const int64_t rows = M - m0 < ROWS ? M - m0 : ROWS;
            const int width = tile + 1 < tiles ? 2 : 1;
            /* Constant tile shapes so the loops unroll: 8, 4 or 1 register rows, 1 or 2 tiles. */
#define ROW_TILE(T, R) row_tile(x, row_scale, m0, rows, K, N, packed, tile, T, R, offset, col_scale, bias, out)
            if (rows > 4) {
                if (width == 2) ROW_TILE(2, 8); else ROW_TILE(1, 8);
            } else if (rows > 1) {
                if (width == 2) ROW_TILE(2, 4); else ROW_TILE(1, 4);
            } else {
                if (width == 2) ROW_TILE(2, 1); else ROW_TILE(1, 1);
            }
#undef ROW_TILE
        }
    }
    return 0;
}

#else

int int8_gemm_supported(void) { return 0; }

int int8_gemm_vnni(const uint8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                   const int8_t *packed, const int32_t *offset, const float *col_scale,
                   const float *bias, float *out, int num_threads) {
    (void)x; (void)row_scale; (void)M; (void)K; (void)N; (void)packed; (void)offset;
    (void)col_scale; (void)bias; (void)out; (void)num_threads;
    return 2;
}

#endif
