/* int8 GEMM with AVX-512 VNNI (contract in int8_gemm.h), for decode steps and prefill alike.
 *
 * One 64-byte group of the packed weight (16 outputs x 4 inputs) feeds one vpdpbusd per
 * activation row. vpdpbusd multiplies unsigned by signed bytes, so activations come shifted to
 * uint8 (x + 128, by quantize_rows_u8) and the product is corrected by `offset`
 * (128 * sum_k W[n, k], precomputed with the packing).
 *
 * A register tile is up to 8 rows x 2 weight tiles (32 outputs) over all of K, so each
 * broadcast activation feeds two vpdpbusd and each weight load feeds up to 8; or, for more than
 * 8 rows, 16 rows x 1 weight tile, each weight load feeding 16. Rows go in blocks of ROW_BLOCK;
 * within a block every thread sweeps its own weight tiles (the same ones for every block, static
 * schedule), so a block's activations are read from cache for each tile and a thread's weights
 * from its L2 for each block. A decode step (few rows) is one block: each weight is streamed
 * from memory once, prefetched ahead.
 *
 * Why 16-row tiles: the first pass of rows over a weight tile streams it from memory and the
 * later passes find it in cache. With 8 rows the first pass asks for weights faster than one core
 * streams them (it waits on memory) and the later ones leave memory idle, so a decode step of 16
 * rows paid the memory time and the compute time one after the other; 16 rows per pass ask for
 * half the bytes per vpdpbusd, and the stream keeps up with the arithmetic.
 */
#include "isa.h"

#if defined(ZIG_ISA_AVX512VNNI)
#include <immintrin.h>
#include <string.h>

#include "int8_gemm.h"

/* Register rows per tile: 8 rows x 2 tiles or 16 rows x 1 tile is 16 accumulators of the 32 zmm
 * registers (wider tiles spill). */
#define ROWS 8
#define WIDE_ROWS 16
/* Rows whose activations stay cached while a thread's weight tiles pass over them. */
#define ROW_BLOCK 64
/* Bytes ahead of the current position to prefetch in each weight stream, into L2 (_MM_HINT_T1):
 * a decode step streams every weight once, and one core keeps enough lines in flight to cover
 * memory latency only when it asks this far ahead; asking into L2 leaves the L1's few miss
 * buffers to the loads, which then find their lines in L2. */
#define PREFETCH_BYTES 4096

static inline __attribute__((always_inline)) void row_tile(
    const uint8_t *x, const float *row_scale, int64_t m0, int64_t rows, int64_t K, int64_t N,
    const int8_t *packed, int64_t tile, const int TILES, const int R, const int32_t *offset,
    const float *col_scale, const float *bias, float *out) {
    const int64_t groups = (K + 3) / 4, full = K / 4;
    /* R >= rows register rows; those past `rows` repeat the last row and are not stored. */
    const uint8_t *xr[WIDE_ROWS];
    for (int r = 0; r < R; r++) xr[r] = x + (m0 + (r < rows ? r : rows - 1)) * K;
    const int8_t *w[2];
    for (int t = 0; t < TILES; t++) w[t] = packed + (tile + t) * groups * 64;
    __m512i acc[WIDE_ROWS][2];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < TILES; t++) acc[r][t] = _mm512_setzero_si512();
    for (int64_t g = 0; g < full; g++) {
        __m512i wk[2];
        for (int t = 0; t < TILES; t++) {
            _mm_prefetch((const char *)(w[t] + g * 64 + PREFETCH_BYTES), _MM_HINT_T1);
            wk[t] = _mm512_loadu_si512((const void *)(w[t] + g * 64));
        }
        for (int r = 0; r < R; r++) {
            int32_t a4;
            memcpy(&a4, xr[r] + g * 4, 4);
            const __m512i a = _mm512_set1_epi32(a4);
            for (int t = 0; t < TILES; t++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], a, wk[t]);
        }
    }
    if (full < groups) {
        for (int r = 0; r < R; r++) {
            const __m512i a = _mm512_set1_epi32(int8_gemm_group(xr[r], full, K));
            for (int t = 0; t < TILES; t++)
                acc[r][t] = _mm512_dpbusd_epi32(
                    acc[r][t], a, _mm512_loadu_si512((const void *)(w[t] + full * 64)));
        }
    }
    for (int t = 0; t < TILES; t++) {
        const int64_t n0 = (tile + t) * 16;
        /* The last tile of an N that is not a multiple of 16 is read and stored partially. */
        const __mmask16 valid = N - n0 >= 16 ? (__mmask16)0xFFFF
                                             : (__mmask16)((1u << (N - n0)) - 1u);
        const __m512i off = _mm512_maskz_loadu_epi32(valid, offset + n0);
        const __m512 cs = _mm512_maskz_loadu_ps(valid, col_scale + n0);
        const __m512 b = bias != NULL ? _mm512_maskz_loadu_ps(valid, bias + n0)
                                      : _mm512_setzero_ps();
        for (int r = 0; r < rows; r++) {
            /* int8_gemm_epilogue, lane by lane */
            const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][t], off));
            __m512 scale = _mm512_mul_ps(_mm512_set1_ps(row_scale[m0 + r]), cs);
            INT8_GEMM_OPAQUE(scale);
            const __m512 y = bias != NULL ? _mm512_fmadd_ps(v, scale, b) : _mm512_mul_ps(v, scale);
            _mm512_mask_storeu_ps(out + (m0 + r) * N + n0, valid, y);
        }
    }
}

int int8_gemm_avx512vnni(const uint8_t *x, const float *row_scale, int64_t M, int64_t K,
                         int64_t N, const int8_t *packed, const int32_t *offset,
                         const float *col_scale, const float *bias, float *out, int num_threads) {
    if (M <= 0 || K <= 0 || N <= 0) return 1;
    const int64_t tiles = (N + 15) / 16;
    const int64_t pairs = (tiles + 1) / 2;
#pragma omp parallel num_threads(num_threads)
    for (int64_t b0 = 0; b0 < M; b0 += ROW_BLOCK) {
        const int64_t b1 = M - b0 < ROW_BLOCK ? M : b0 + ROW_BLOCK;
#pragma omp for schedule(static) nowait
        for (int64_t pair = 0; pair < pairs; pair++) {
            const int64_t tile = pair * 2;
            const int width = tile + 1 < tiles ? 2 : 1;
            for (int64_t m0 = b0; m0 < b1;) {
                const int64_t left = b1 - m0;
                /* Constant tile shapes so the loops unroll: 16 register rows and 1 tile (twice
                 * for a pair), or 8, 4 or 1 register rows and 1 or 2 tiles. */
#define ROW_TILE(FIRST, T, R, ROWS_HERE)                                                     \
    row_tile(x, row_scale, m0, ROWS_HERE, K, N, packed, FIRST, T, R, offset, col_scale, bias, \
             out)
                if (left > ROWS) {
                    const int64_t rows = left < WIDE_ROWS ? left : WIDE_ROWS;
                    ROW_TILE(tile, 1, WIDE_ROWS, rows);
                    if (width == 2) ROW_TILE(tile + 1, 1, WIDE_ROWS, rows);
                    m0 += rows;
                } else {
                    if (left > 4) {
                        if (width == 2) ROW_TILE(tile, 2, 8, left); else ROW_TILE(tile, 1, 8, left);
                    } else if (left > 1) {
                        if (width == 2) ROW_TILE(tile, 2, 4, left); else ROW_TILE(tile, 1, 4, left);
                    } else {
                        if (width == 2) ROW_TILE(tile, 2, 1, left); else ROW_TILE(tile, 1, 1, left);
                    }
                    m0 = b1;
                }
#undef ROW_TILE
            }
        }
    }
    return 0;
}

#endif
