/* int8 GEMM with AVX2 (contract in int8_gemm.h), for decode steps and prefill alike.
 *
 * A 64-byte group of the packed weight (16 outputs x 4 inputs) is two ymm registers. vpmaddubsw
 * multiplies unsigned by signed bytes and adds pairs into int16, saturating; vpmaddwd by ones
 * then widens the pairs to int32. The unsigned operand is |w|, and the weight's sign goes onto
 * the activation as a ^ m, m = -1 where w < 0 and 0 elsewhere: ~a = -a - 1, so each negative
 * weight's product comes out |w| too small, and the sum over k is sum_k w * a minus
 * `negative_sum` (sum of |w| over the negative weights, int8_gemm.h), which the epilogue adds
 * back. An int16 pair is at most 2 * 128 * 128 = 2^15 in magnitude, reached only as -2^15: no
 * saturation for any int8 weight and activation. The point of the mask: vpxor runs on all four
 * vector pipes of AMD Zen cores, vpsignb (the plain sign transfer) on only two of them, shared
 * with the two multiplies of each step (one of them on Zen 3 by LLVM's scheduling model; a Zen 4
 * ran the vpsignb loop as if both), which held the loop below the multipliers' rate.
 *
 * A register tile is up to ROWS rows x 16 outputs over all of K (ROWS x 2 accumulators, plus the
 * weights' magnitudes and sign masks, fit the 16 ymm registers); a few-row step (decode) takes
 * two weight tiles at once instead, for more independent work per activation load. The full
 * 4-row tile's loop is written in assembly: compiled from intrinsics, GCC keeps some of its
 * accumulators in memory. Rows go in blocks of ROW_BLOCK; within a block every thread sweeps its
 * own weight tiles (the same ones for every block, static schedule), so a block's activations are
 * read from cache for each tile and a thread's weights from its L2 for each block. A decode step
 * is one block: each weight is streamed from memory once, prefetched ahead.
 */
#include "isa.h"

#if defined(ZIG_ISA_AVX2)
#include <immintrin.h>
#include <string.h>

#include "int8_gemm.h"

#define ROWS 4
/* Rows whose activations stay cached while a thread's weight tiles pass over them. */
#ifndef ROW_BLOCK
#define ROW_BLOCK 64
#endif
/* Bytes ahead of the current position to prefetch in each weight stream, into L2 (_MM_HINT_T1):
 * a decode step streams every weight once, and one core keeps enough lines in flight to cover
 * memory latency only when it asks this far ahead; asking into L2 leaves the L1's few miss
 * buffers to the loads, which then find their lines in L2. */
#define PREFETCH_BYTES 4096
#define PREFETCH_TEXT "4096" /* the same, for the assembly */

/* acc + the 8 outputs x 4 inputs of w times the broadcast activations a, less the magnitudes
 * of the negative weights (see the top of the file). w_abs = |w|, w_neg = -1 where w < 0. */
static inline __attribute__((always_inline)) __m256i dot(__m256i acc, __m256i a, __m256i w_abs,
                                                         __m256i w_neg, __m256i ones) {
    const __m256i pairs = _mm256_maddubs_epi16(w_abs, _mm256_xor_si256(a, w_neg));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
}

/* Adds group g (4 inputs) of R rows x TILES weight tiles into acc; `tail`: the last group of
 * a K that is not a multiple of 4. */
static inline __attribute__((always_inline)) void group_step(
    __m256i acc[][4], const int8_t *const *xr, const int8_t *const *w, int64_t g, int64_t K,
    const int tail, const int TILES, const int R, const __m256i ones) {
    __m256i wk_neg[4], wk_abs[4];
    for (int t = 0; t < TILES; t++) {
        _mm_prefetch((const char *)(w[t] + g * 64 + PREFETCH_BYTES), _MM_HINT_T1);
        for (int h = 0; h < 2; h++) {
            const __m256i wk = _mm256_loadu_si256((const __m256i *)(w[t] + g * 64 + 32 * h));
            wk_abs[2 * t + h] = _mm256_abs_epi8(wk);
            wk_neg[2 * t + h] = _mm256_cmpgt_epi8(_mm256_setzero_si256(), wk);
        }
    }
    for (int r = 0; r < R; r++) {
        int32_t a4;
        if (tail)
            a4 = int8_gemm_group(xr[r], g, K);
        else
            memcpy(&a4, xr[r] + g * 4, 4);
        const __m256i a = _mm256_set1_epi32(a4);
        for (int h = 0; h < 2 * TILES; h++) acc[r][h] = dot(acc[r][h], a, wk_abs[h], wk_neg[h], ones);
    }
}

/* Adds the `full` complete groups of 4 rows x one weight tile into acc: group_step's arithmetic
 * for TILES = 1 and R = 4, with every accumulator in a register. */
static inline __attribute__((always_inline)) void four_row_groups(__m256i acc[][4],
                                                                  const int8_t *const *xr,
                                                                  const int8_t *w, int64_t full,
                                                                  const __m256i ones) {
    __m256i c00 = acc[0][0], c01 = acc[0][1], c10 = acc[1][0], c11 = acc[1][1];
    __m256i c20 = acc[2][0], c21 = acc[2][1], c30 = acc[3][0], c31 = acc[3][1];
    __m256i neg0, neg1, abs0, abs1, a, t;
    for (int64_t g = 0; g < full; g++, w += 64) {
        __asm__(
            "vmovdqu (%[w]), %[neg0]\n\t"
            "vmovdqu 32(%[w]), %[neg1]\n\t"
            "prefetcht1 " PREFETCH_TEXT "(%[w])\n\t"
            "vpabsb %[neg0], %[abs0]\n\t"
            "vpabsb %[neg1], %[abs1]\n\t"
            "vpxor %[t], %[t], %[t]\n\t"
            "vpcmpgtb %[neg0], %[t], %[neg0]\n\t"
            "vpcmpgtb %[neg1], %[t], %[neg1]\n\t"
#define ZIG_ROW(X, C0, C1)                          \
            "vpbroadcastd (%[" X "],%[g],4), %[a]\n\t" \
            "vpxor %[neg0], %[a], %[t]\n\t"           \
            "vpmaddubsw %[t], %[abs0], %[t]\n\t"      \
            "vpmaddwd %[ones], %[t], %[t]\n\t"        \
            "vpaddd %[t], %[" C0 "], %[" C0 "]\n\t"    \
            "vpxor %[neg1], %[a], %[t]\n\t"           \
            "vpmaddubsw %[t], %[abs1], %[t]\n\t"      \
            "vpmaddwd %[ones], %[t], %[t]\n\t"        \
            "vpaddd %[t], %[" C1 "], %[" C1 "]\n\t"
            ZIG_ROW("x0", "c00", "c01") ZIG_ROW("x1", "c10", "c11")
            ZIG_ROW("x2", "c20", "c21") ZIG_ROW("x3", "c30", "c31")
#undef ZIG_ROW
            : [c00] "+x"(c00), [c01] "+x"(c01), [c10] "+x"(c10), [c11] "+x"(c11),
              [c20] "+x"(c20), [c21] "+x"(c21), [c30] "+x"(c30), [c31] "+x"(c31),
              [neg0] "=&x"(neg0), [neg1] "=&x"(neg1), [abs0] "=&x"(abs0), [abs1] "=&x"(abs1),
              [a] "=&x"(a), [t] "=&x"(t)
            : [w] "r"(w), [g] "r"(g), [x0] "r"(xr[0]), [x1] "r"(xr[1]), [x2] "r"(xr[2]),
              [x3] "r"(xr[3]), [ones] "x"(ones)
            : "memory");
    }
    acc[0][0] = c00, acc[0][1] = c01, acc[1][0] = c10, acc[1][1] = c11;
    acc[2][0] = c20, acc[2][1] = c21, acc[3][0] = c30, acc[3][1] = c31;
}

/* The tall register tile of prefill-sized blocks: TALL_ROWS rows x 8 outputs (half of a 16-output
 * weight tile). 12 accumulators leave room for |w|, the sign mask, one activation/product
 * temporary and `ones`, and the per-group weight work (load, |w|, mask) is shared by 12 rows
 * instead of 4, which leaves the loop mostly the per-row multiply-adds. */
#define TALL_ROWS 12

/* The integer sums of the `full` complete groups of TALL_ROWS rows (row r at x0 + r * K) x the 8
 * outputs whose weights are the first 32 bytes of each 64-byte group from w on, into c: the
 * whole loop in assembly with the registers named (ymm0-11 the accumulators, 12 the sign mask,
 * 13 |w|, 14 the activations and products, 15 `ones`), as the accumulators as operands would
 * take more operands than an asm statement may have. */
static inline __attribute__((always_inline)) void tall_groups(__m256i c[TALL_ROWS],
                                                              const int8_t *x0, int64_t K,
                                                              const int8_t *w, int64_t full) {
    static const int16_t ones[16] __attribute__((aligned(32))) = {1, 1, 1, 1, 1, 1, 1, 1,
                                                                  1, 1, 1, 1, 1, 1, 1, 1};
    /* Rows 0-3, 4-7 and 8-11 from three base pointers: (p), (p + K), (p + 2K), (p + 3K). */
    const int8_t *p0 = x0, *p4 = x0 + 4 * K, *p8 = x0 + 8 * K;
    const int64_t k3 = 3 * K;
    int64_t n = full;
    /* volatile: its outputs are only the pointers it advanced; what counts is what it stores. */
    __asm__ volatile(
        "vpxor %%ymm0, %%ymm0, %%ymm0\n\t"
        "vpxor %%ymm1, %%ymm1, %%ymm1\n\t"
        "vpxor %%ymm2, %%ymm2, %%ymm2\n\t"
        "vpxor %%ymm3, %%ymm3, %%ymm3\n\t"
        "vpxor %%ymm4, %%ymm4, %%ymm4\n\t"
        "vpxor %%ymm5, %%ymm5, %%ymm5\n\t"
        "vpxor %%ymm6, %%ymm6, %%ymm6\n\t"
        "vpxor %%ymm7, %%ymm7, %%ymm7\n\t"
        "vpxor %%ymm8, %%ymm8, %%ymm8\n\t"
        "vpxor %%ymm9, %%ymm9, %%ymm9\n\t"
        "vpxor %%ymm10, %%ymm10, %%ymm10\n\t"
        "vpxor %%ymm11, %%ymm11, %%ymm11\n\t"
        "vmovdqa %[ones], %%ymm15\n\t"
        "test %[n], %[n]\n\t"
        "jz 2f\n\t"
        "1:\n\t"
        "vmovdqu (%[w]), %%ymm12\n\t"
        "vpabsb %%ymm12, %%ymm13\n\t"
        "vpxor %%ymm14, %%ymm14, %%ymm14\n\t"
        "vpcmpgtb %%ymm12, %%ymm14, %%ymm12\n\t"
#define ZIG_TALL_ROW(ADDR, C)                        \
        "vpbroadcastd " ADDR ", %%ymm14\n\t"         \
        "vpxor %%ymm12, %%ymm14, %%ymm14\n\t"        \
        "vpmaddubsw %%ymm14, %%ymm13, %%ymm14\n\t"   \
        "vpmaddwd %%ymm15, %%ymm14, %%ymm14\n\t"     \
        "vpaddd %%ymm14, %%" C ", %%" C "\n\t"
        ZIG_TALL_ROW("(%[p0])", "ymm0") ZIG_TALL_ROW("(%[p0],%[K],1)", "ymm1")
        ZIG_TALL_ROW("(%[p0],%[K],2)", "ymm2") ZIG_TALL_ROW("(%[p0],%[k3],1)", "ymm3")
        ZIG_TALL_ROW("(%[p4])", "ymm4") ZIG_TALL_ROW("(%[p4],%[K],1)", "ymm5")
        ZIG_TALL_ROW("(%[p4],%[K],2)", "ymm6") ZIG_TALL_ROW("(%[p4],%[k3],1)", "ymm7")
        ZIG_TALL_ROW("(%[p8])", "ymm8") ZIG_TALL_ROW("(%[p8],%[K],1)", "ymm9")
        ZIG_TALL_ROW("(%[p8],%[K],2)", "ymm10") ZIG_TALL_ROW("(%[p8],%[k3],1)", "ymm11")
#undef ZIG_TALL_ROW
        "add $64, %[w]\n\t"
        "add $4, %[p0]\n\t"
        "add $4, %[p4]\n\t"
        "add $4, %[p8]\n\t"
        "dec %[n]\n\t"
        "jnz 1b\n\t"
        "2:\n\t"
        "vmovdqu %%ymm0, (%[c])\n\t"
        "vmovdqu %%ymm1, 32(%[c])\n\t"
        "vmovdqu %%ymm2, 64(%[c])\n\t"
        "vmovdqu %%ymm3, 96(%[c])\n\t"
        "vmovdqu %%ymm4, 128(%[c])\n\t"
        "vmovdqu %%ymm5, 160(%[c])\n\t"
        "vmovdqu %%ymm6, 192(%[c])\n\t"
        "vmovdqu %%ymm7, 224(%[c])\n\t"
        "vmovdqu %%ymm8, 256(%[c])\n\t"
        "vmovdqu %%ymm9, 288(%[c])\n\t"
        "vmovdqu %%ymm10, 320(%[c])\n\t"
        "vmovdqu %%ymm11, 352(%[c])\n\t"
        : [w] "+r"(w), [p0] "+r"(p0), [p4] "+r"(p4), [p8] "+r"(p8), [n] "+r"(n)
        : [c] "r"(c), [K] "r"(K), [k3] "r"(k3), [ones] "m"(*(const __m256i *)ones)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
}

/* Rows m0 .. m0 + TALL_ROWS - 1 x the (up to) 16 outputs of weight tile `tile`, as two tall tiles
 * of 8 outputs, one after the other while the rows' activations are still in L1. */
static inline __attribute__((always_inline)) void tall_tile(
    const int8_t *x, const float *row_scale, int64_t m0, int64_t K, int64_t N,
    const int8_t *packed, int64_t tile, const int32_t *negative_sum, const float *col_scale,
    const float *bias, float *out) {
    const int64_t groups = (K + 3) / 4, full = K / 4;
    const __m256i ones = _mm256_set1_epi16(1);
    const int8_t *x0 = x + m0 * K;
    for (int h = 0; h < 2; h++) {
        const int64_t n0 = tile * 16 + 8 * h;
        if (n0 >= N) break;
        const int8_t *w = packed + tile * groups * 64 + 32 * h;
        if (h == 0)
            for (int r = 0; r < TALL_ROWS; r++)
                __builtin_prefetch(out + (m0 + r) * N + n0, 1 /* write */, 3);
        __m256i c[TALL_ROWS];
        tall_groups(c, x0, K, w, full);
        if (full < groups) {
            const __m256i wk = _mm256_loadu_si256((const __m256i *)(w + full * 64));
            const __m256i w_abs = _mm256_abs_epi8(wk);
            const __m256i w_neg = _mm256_cmpgt_epi8(_mm256_setzero_si256(), wk);
            for (int r = 0; r < TALL_ROWS; r++)
                c[r] = dot(c[r], _mm256_set1_epi32(int8_gemm_group(x0 + r * K, full, K)), w_abs,
                           w_neg, ones);
        }
        if (N - n0 >= 8) {
            const __m256 cs = _mm256_loadu_ps(col_scale + n0);
            const __m256i neg = _mm256_loadu_si256((const __m256i *)(negative_sum + n0));
            const __m256 b = bias != NULL ? _mm256_loadu_ps(bias + n0) : _mm256_setzero_ps();
            for (int r = 0; r < TALL_ROWS; r++) {
                /* int8_gemm_epilogue, lane by lane */
                const __m256 v = _mm256_cvtepi32_ps(_mm256_add_epi32(c[r], neg));
                __m256 scale = _mm256_mul_ps(_mm256_set1_ps(row_scale[m0 + r]), cs);
                INT8_GEMM_OPAQUE(scale);
                const __m256 y = bias != NULL ? _mm256_fmadd_ps(v, scale, b) : _mm256_mul_ps(v, scale);
                _mm256_storeu_ps(out + (m0 + r) * N + n0, y);
            }
        } else {
            /* The last outputs of an N that is not a multiple of 8. */
            for (int r = 0; r < TALL_ROWS; r++) {
                int32_t lanes[8];
                _mm256_storeu_si256((__m256i *)lanes, c[r]);
                for (int64_t n = n0; n < N; n++)
                    out[(m0 + r) * N + n] = int8_gemm_epilogue(
                        lanes[n - n0] + negative_sum[n], row_scale[m0 + r], col_scale[n],
                        bias != NULL ? bias + n : NULL);
            }
        }
    }
}

static inline __attribute__((always_inline)) void row_tile(
    const int8_t *x, const float *row_scale, int64_t m0, int64_t rows, int64_t K, int64_t N,
    const int8_t *packed, int64_t tile, const int TILES, const int R,
    const int32_t *negative_sum, const float *col_scale, const float *bias, float *out) {
    const int64_t groups = (K + 3) / 4, full = K / 4;
    const __m256i ones = _mm256_set1_epi16(1);
    /* R >= rows register rows; those past `rows` repeat the last row and are not stored. */
    const int8_t *xr[ROWS];
    for (int r = 0; r < R; r++) xr[r] = x + (m0 + (r < rows ? r : rows - 1)) * K;
    const int8_t *w[2];
    for (int t = 0; t < TILES; t++) w[t] = packed + (tile + t) * groups * 64;
    /* The output lines this tile writes, fetched for writing while the sum runs: with a wide N
     * each row's line is in a page of its own, and a store waiting for one would stall. */
    for (int r = 0; r < rows; r++)
        for (int t = 0; t < TILES; t++)
            __builtin_prefetch(out + (m0 + r) * N + (tile + t) * 16, 1 /* write */, 3);
    __m256i acc[ROWS][4];
    for (int r = 0; r < R; r++)
        for (int h = 0; h < 2 * TILES; h++) acc[r][h] = _mm256_setzero_si256();
    if (TILES == 1 && R == 4) {
        four_row_groups(acc, xr, w[0], full, ones);
    } else {
        for (int64_t g = 0; g < full; g++) group_step(acc, xr, w, g, K, 0, TILES, R, ones);
    }
    if (full < groups) group_step(acc, xr, w, full, K, 1, TILES, R, ones);
    for (int t = 0; t < TILES; t++) {
        const int64_t n0 = (tile + t) * 16;
        if (N - n0 >= 16) {
            const __m256 cs[2] = {_mm256_loadu_ps(col_scale + n0), _mm256_loadu_ps(col_scale + n0 + 8)};
            const __m256i neg[2] = {_mm256_loadu_si256((const __m256i *)(negative_sum + n0)),
                                    _mm256_loadu_si256((const __m256i *)(negative_sum + n0 + 8))};
            __m256 b[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
            if (bias != NULL) {
                b[0] = _mm256_loadu_ps(bias + n0);
                b[1] = _mm256_loadu_ps(bias + n0 + 8);
            }
            for (int r = 0; r < rows; r++) {
                const __m256 rs = _mm256_set1_ps(row_scale[m0 + r]);
                for (int h = 0; h < 2; h++) {
                    /* int8_gemm_epilogue, lane by lane */
                    const __m256 v = _mm256_cvtepi32_ps(_mm256_add_epi32(acc[r][2 * t + h], neg[h]));
                    __m256 scale = _mm256_mul_ps(rs, cs[h]);
                    INT8_GEMM_OPAQUE(scale);
                    const __m256 y = bias != NULL ? _mm256_fmadd_ps(v, scale, b[h])
                                                  : _mm256_mul_ps(v, scale);
                    _mm256_storeu_ps(out + (m0 + r) * N + n0 + 8 * h, y);
                }
            }
        } else {
            /* The last tile of an N that is not a multiple of 16: only N's outputs. */
            for (int r = 0; r < rows; r++) {
                int32_t lanes[16];
                _mm256_storeu_si256((__m256i *)lanes, acc[r][2 * t]);
                _mm256_storeu_si256((__m256i *)(lanes + 8), acc[r][2 * t + 1]);
                for (int64_t n = n0; n < N; n++)
                    out[(m0 + r) * N + n] = int8_gemm_epilogue(
                        lanes[n - n0] + negative_sum[n], row_scale[m0 + r], col_scale[n],
                        bias != NULL ? bias + n : NULL);
            }
        }
    }
}

int int8_gemm_avx2(const int8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                   const int8_t *packed, const int32_t *negative_sum, const float *col_scale,
                   const float *bias, float *out, int num_threads) {
    if (M <= 0 || K <= 0 || N <= 0) return 1;
    const int64_t tiles = (N + 15) / 16;
    /* Decode-sized steps take two tiles per register tile (one row needs few registers). */
    const int64_t step = M <= 2 ? 2 : 1;
    const int64_t units = (tiles + step - 1) / step;
#pragma omp parallel num_threads(num_threads)
    for (int64_t b0 = 0; b0 < M; b0 += ROW_BLOCK) {
        const int64_t b1 = M - b0 < ROW_BLOCK ? M : b0 + ROW_BLOCK;
#pragma omp for schedule(static) nowait
        for (int64_t unit = 0; unit < units; unit++) {
            const int64_t tile = unit * step;
            const int width = tile + 1 < tiles && step == 2 ? 2 : 1;
            for (int64_t m0 = b0; m0 < b1; m0 += ROWS) {
                if (width == 1 && b1 - m0 >= TALL_ROWS) {
                    tall_tile(x, row_scale, m0, K, N, packed, tile, negative_sum, col_scale, bias,
                              out);
                    m0 += TALL_ROWS - ROWS;
                    continue;
                }
                const int64_t rows = b1 - m0 < ROWS ? b1 - m0 : ROWS;
                /* Constant tile shapes so the loops unroll. */
#define ROW_TILE(T, R)                                                                       \
    row_tile(x, row_scale, m0, rows, K, N, packed, tile, T, R, negative_sum, col_scale, bias, \
             out)
                if (width == 2) {
                    if (rows == 2) ROW_TILE(2, 2); else ROW_TILE(2, 1);
                } else if (rows == 4) {
                    ROW_TILE(1, 4);
                } else if (rows == 3) {
                    ROW_TILE(1, 3);
                } else if (rows == 2) {
                    ROW_TILE(1, 2);
                } else {
                    ROW_TILE(1, 1);
                }
#undef ROW_TILE
            }
        }
    }
    return 0;
}

#endif
