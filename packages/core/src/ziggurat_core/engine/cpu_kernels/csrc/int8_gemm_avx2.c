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
 * Fewer than TALL_ROWS rows (decode steps): a register tile is up to ROWS rows x 16 outputs over
 * all of K (ROWS x 2 accumulators, plus the weights' magnitudes and sign masks, fit the 16 ymm
 * registers); one or two rows take two weight tiles at once instead, for more independent work
 * per activation load. The full 4-row tile's loop is written in assembly: compiled from
 * intrinsics, GCC keeps some of its accumulators in memory. Each weight is streamed from memory
 * once, prefetched ahead.
 *
 * TALL_ROWS rows or more (prefill, large decode batches): 12 rows x 8 outputs at a time, with the
 * activations pre-broadcast to memory (tall_groups). Each thread takes its own share of the
 * weight tiles, the same for every row block of TALL_BLOCK rows, in batches of up to TILE_BATCH
 * tiles whose weights stay in L2 while the block's 12-row tiles pass over them; the rows a block
 * has beyond whole 12-row tiles take the few-row tiles above.
 */
#include "isa.h"

#if defined(ZIG_ISA_AVX2)
#include <immintrin.h>
#include <string.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "int8_gemm.h"

#define ROWS 4
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

/* Rows [0, rows) of 8 summed outputs from n0 (row r's in acc[r * stride]) through
 * int8_gemm_epilogue, lane by lane, into out's rows m0 on: in vectors where 8 outputs remain,
 * one by one for the last ones of an N that is not a multiple of 8. */
static inline __attribute__((always_inline)) void store_eight(
    const __m256i *acc, int64_t stride, int64_t rows, int64_t m0, int64_t n0, int64_t N,
    const int32_t *negative_sum, const float *row_scale, const float *col_scale,
    const float *bias, float *out) {
    if (N - n0 >= 8) {
        const __m256 cs = _mm256_loadu_ps(col_scale + n0);
        const __m256i neg = _mm256_loadu_si256((const __m256i *)(negative_sum + n0));
        const __m256 b = bias != NULL ? _mm256_loadu_ps(bias + n0) : _mm256_setzero_ps();
        for (int64_t r = 0; r < rows; r++) {
            const __m256 v = _mm256_cvtepi32_ps(_mm256_add_epi32(acc[r * stride], neg));
            __m256 scale = _mm256_mul_ps(_mm256_set1_ps(row_scale[m0 + r]), cs);
            INT8_GEMM_OPAQUE(scale);
            const __m256 y = bias != NULL ? _mm256_fmadd_ps(v, scale, b) : _mm256_mul_ps(v, scale);
            _mm256_storeu_ps(out + (m0 + r) * N + n0, y);
        }
    } else {
        for (int64_t r = 0; r < rows; r++) {
            int32_t lanes[8];
            _mm256_storeu_si256((__m256i *)lanes, acc[r * stride]);
            for (int64_t n = n0; n < N; n++)
                out[(m0 + r) * N + n] = int8_gemm_epilogue(
                    lanes[n - n0] + negative_sum[n], row_scale[m0 + r], col_scale[n],
                    bias != NULL ? bias + n : NULL);
        }
    }
}

/* The tall register tile of prefill-sized row counts: TALL_ROWS rows x 8 outputs (half of a
 * 16-output weight tile), 12 accumulators. The weights' per-group work (load, |w|, sign mask) is
 * shared by 12 rows instead of 4, and the activations come pre-broadcast from memory as the
 * operand of the xor (a 32-byte copy of each row's 4-byte group, made once per chunk of K and
 * used by every weight tile of a batch): a vpbroadcastd per row and group costs the loop about as
 * much as the weights' own work, while a load folded into the xor costs it nothing. */
#define TALL_ROWS 12
/* Groups of 4 inputs per pre-broadcast chunk: 12 rows x 32 groups x 32 bytes, which stay in L1
 * while every tile of a batch passes over them. */
#define CHUNK_GROUPS 32
/* Weight tiles whose accumulators are kept (in memory, 2 x 12 ymm each) across the chunks of K:
 * as many as BATCH_WEIGHT_BYTES of weights, which stay in L2 while a row block's 12-row tiles pass
 * over them, and at most TILE_BATCH. The more tiles a batch has, the more of them share each
 * chunk's pre-broadcast copy. */
#define TILE_BATCH 32
#define BATCH_WEIGHT_BYTES (384 * 1024)
/* Rows per block of the tall path (a multiple of TALL_ROWS); a thread's weights are read from
 * beyond L2 once per block. */
#define TALL_BLOCK 120
/* How far ahead, in weight tiles of a chunk, the tall loop prefetches: a decode step reads each
 * weight from memory once, in the first 12-row tile, where the loop's 64 bytes per group come in
 * too slowly for the memory's latency to hide behind the arithmetic of one tile (into L2, as the
 * few-row loop does: a prefetch into L1 holds one of the L1's few miss buffers). */
#define PREFETCH_TILES 2

static const int16_t ONES16[16] __attribute__((aligned(32))) = {1, 1, 1, 1, 1, 1, 1, 1,
                                                                1, 1, 1, 1, 1, 1, 1, 1};

/* acc[0..11] (+)= the `count` groups of pre-broadcast activations e (per group, TALL_ROWS rows x
 * 32 bytes) times the 8-output weights from w on (one group every 64 bytes); `first`: start from
 * zero instead of acc. The whole loop is assembly with the registers named (ymm0-11 the
 * accumulators, 12 the sign mask, 13 |w|, 14 the products, 15 `ones`): accumulators as
 * operands would take more operands than an asm statement may have, and compiled from
 * intrinsics GCC keeps some of them in memory. Each group also prefetches, into L2, the group
 * `ahead` bytes on, which tall_rows reads PREFETCH_TILES tiles later: the tiles of a chunk are
 * not one sequential stream that the hardware prefetchers would follow. */
static inline __attribute__((always_inline)) void tall_groups(__m256i *acc, const int8_t *e,
                                                              const int8_t *w, int64_t count,
                                                              int first, int64_t ahead) {
    /* volatile: its outputs are only the pointers it advanced; what counts is what it stores. */
    __asm__ volatile(
        "test %[first], %[first]\n\t"
        "jz 3f\n\t"
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
        "jmp 4f\n\t"
        "3:\n\t"
        "vmovdqu (%[acc]), %%ymm0\n\t"
        "vmovdqu 32(%[acc]), %%ymm1\n\t"
        "vmovdqu 64(%[acc]), %%ymm2\n\t"
        "vmovdqu 96(%[acc]), %%ymm3\n\t"
        "vmovdqu 128(%[acc]), %%ymm4\n\t"
        "vmovdqu 160(%[acc]), %%ymm5\n\t"
        "vmovdqu 192(%[acc]), %%ymm6\n\t"
        "vmovdqu 224(%[acc]), %%ymm7\n\t"
        "vmovdqu 256(%[acc]), %%ymm8\n\t"
        "vmovdqu 288(%[acc]), %%ymm9\n\t"
        "vmovdqu 320(%[acc]), %%ymm10\n\t"
        "vmovdqu 352(%[acc]), %%ymm11\n\t"
        "4:\n\t"
        "vmovdqa %[ones], %%ymm15\n\t"
        "test %[n], %[n]\n\t"
        "jz 2f\n\t"
        "1:\n\t"
        "vmovdqu (%[w]), %%ymm12\n\t"
        "prefetcht1 (%[w],%[ahead],1)\n\t"
        "vpabsb %%ymm12, %%ymm13\n\t"
        "vpxor %%ymm14, %%ymm14, %%ymm14\n\t"
        "vpcmpgtb %%ymm12, %%ymm14, %%ymm12\n\t"
#define ZIG_TALL_ROW(OFFSET, C)                        \
        "vpxor " OFFSET "(%[e]), %%ymm12, %%ymm14\n\t" \
        "vpmaddubsw %%ymm14, %%ymm13, %%ymm14\n\t"     \
        "vpmaddwd %%ymm15, %%ymm14, %%ymm14\n\t"       \
        "vpaddd %%ymm14, %%" C ", %%" C "\n\t"
        ZIG_TALL_ROW("0", "ymm0") ZIG_TALL_ROW("32", "ymm1") ZIG_TALL_ROW("64", "ymm2")
        ZIG_TALL_ROW("96", "ymm3") ZIG_TALL_ROW("128", "ymm4") ZIG_TALL_ROW("160", "ymm5")
        ZIG_TALL_ROW("192", "ymm6") ZIG_TALL_ROW("224", "ymm7") ZIG_TALL_ROW("256", "ymm8")
        ZIG_TALL_ROW("288", "ymm9") ZIG_TALL_ROW("320", "ymm10") ZIG_TALL_ROW("352", "ymm11")
#undef ZIG_TALL_ROW
        "add $64, %[w]\n\t"
        "add $384, %[e]\n\t" /* TALL_ROWS * 32 */
        "dec %[n]\n\t"
        "jnz 1b\n\t"
        "2:\n\t"
        "vmovdqu %%ymm0, (%[acc])\n\t"
        "vmovdqu %%ymm1, 32(%[acc])\n\t"
        "vmovdqu %%ymm2, 64(%[acc])\n\t"
        "vmovdqu %%ymm3, 96(%[acc])\n\t"
        "vmovdqu %%ymm4, 128(%[acc])\n\t"
        "vmovdqu %%ymm5, 160(%[acc])\n\t"
        "vmovdqu %%ymm6, 192(%[acc])\n\t"
        "vmovdqu %%ymm7, 224(%[acc])\n\t"
        "vmovdqu %%ymm8, 256(%[acc])\n\t"
        "vmovdqu %%ymm9, 288(%[acc])\n\t"
        "vmovdqu %%ymm10, 320(%[acc])\n\t"
        "vmovdqu %%ymm11, 352(%[acc])\n\t"
        : [w] "+r"(w), [e] "+r"(e), [n] "+r"(count)
        : [acc] "r"(acc), [first] "r"(first), [ahead] "r"(ahead),
          [ones] "m"(*(const __m256i *)ONES16)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
}

/* Rows m0 .. m0 + TALL_ROWS - 1 x weight tiles [t0, t1) (at most TILE_BATCH), stored to out. */
static void tall_rows(const int8_t *x, const float *row_scale, int64_t m0, int64_t K, int64_t N,
                      const int8_t *packed, int64_t t0, int64_t t1, const int32_t *negative_sum,
                      const float *col_scale, const float *bias, float *out) {
    const int64_t groups = (K + 3) / 4, full = K / 4, tile_stride = groups * 64;
    const int8_t *x0 = x + m0 * K;
    __m256i e[CHUNK_GROUPS * TALL_ROWS];
    __m256i acc[TILE_BATCH * 2][TALL_ROWS];
    for (int64_t c0 = 0; c0 < full; c0 += CHUNK_GROUPS) {
        const int64_t count = full - c0 < CHUNK_GROUPS ? full - c0 : CHUNK_GROUPS;
        for (int64_t g = 0; g < count; g++)
            for (int r = 0; r < TALL_ROWS; r++) {
                int32_t a4;
                memcpy(&a4, x0 + r * K + (c0 + g) * 4, 4);
                e[g * TALL_ROWS + r] = _mm256_set1_epi32(a4);
            }
        for (int64_t tile = t0; tile < t1; tile++) {
            /* Where the weights read PREFETCH_TILES tiles later in this order start (bytes into
             * `packed`): the same chunk of a later tile of the batch, else the next chunk of the
             * batch's first tiles, else the first chunk of the tiles after the batch (the next
             * batch's, or none: a prefetch past the weights reads nothing and cannot fault). */
            const int64_t later = tile + PREFETCH_TILES, at = tile * tile_stride + c0 * 64;
            const int64_t next = later < t1            ? later * tile_stride + c0 * 64
                                 : c0 + count < full ? (t0 + later - t1) * tile_stride +
                                                           (c0 + count) * 64
                                                     : later * tile_stride;
            for (int h = 0; h < 2 && tile * 16 + 8 * h < N; h++)
                tall_groups(acc[(tile - t0) * 2 + h], (const int8_t *)e, packed + at + 32 * h,
                            count, c0 == 0, next - at);
        }
    }
    const __m256i ones = _mm256_load_si256((const __m256i *)ONES16);
    for (int64_t tile = t0; tile < t1; tile++) {
        for (int h = 0; h < 2; h++) {
            const int64_t n0 = tile * 16 + 8 * h;
            if (n0 >= N) break;
            __m256i *c = acc[(tile - t0) * 2 + h];
            if (full == 0)
                for (int r = 0; r < TALL_ROWS; r++) c[r] = _mm256_setzero_si256();
            if (full < groups) {
                /* The last group of a K that is not a multiple of 4. */
                const int8_t *w = packed + tile * tile_stride + full * 64 + 32 * h;
                const __m256i wk = _mm256_loadu_si256((const __m256i *)w);
                const __m256i w_abs = _mm256_abs_epi8(wk);
                const __m256i w_neg = _mm256_cmpgt_epi8(_mm256_setzero_si256(), wk);
                for (int r = 0; r < TALL_ROWS; r++)
                    c[r] = dot(c[r], _mm256_set1_epi32(int8_gemm_group(x0 + r * K, full, K)),
                               w_abs, w_neg, ones);
            }
            store_eight(c, 1, TALL_ROWS, m0, n0, N, negative_sum, row_scale, col_scale, bias, out);
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
    for (int t = 0; t < TILES; t++)
        for (int h = 0; h < 2 && (tile + t) * 16 + 8 * h < N; h++)
            store_eight(&acc[0][2 * t + h], 4, rows, m0, (tile + t) * 16 + 8 * h, N, negative_sum,
                        row_scale, col_scale, bias, out);
}

/* The rows of [b0, b1) left over by whole 12-row tiles (fewer than 12) x weight tile `tile`, in
 * register tiles of up to ROWS rows. */
static inline __attribute__((always_inline)) void short_rows(
    const int8_t *x, const float *row_scale, int64_t b0, int64_t b1, int64_t K, int64_t N,
    const int8_t *packed, int64_t tile, const int32_t *negative_sum, const float *col_scale,
    const float *bias, float *out) {
    for (int64_t m0 = b0; m0 < b1; m0 += ROWS) {
        const int64_t rows = b1 - m0 < ROWS ? b1 - m0 : ROWS;
        /* Constant tile shapes so the loops unroll. */
#define ROW_TILE(R)                                                                          \
    row_tile(x, row_scale, m0, rows, K, N, packed, tile, 1, R, negative_sum, col_scale, bias, \
             out)
        if (rows == 4) {
            ROW_TILE(4);
        } else if (rows == 3) {
            ROW_TILE(3);
        } else if (rows == 2) {
            ROW_TILE(2);
        } else {
            ROW_TILE(1);
        }
#undef ROW_TILE
    }
}

/* M >= TALL_ROWS, on one thread of the team: its share of the weight tiles (the same for every
 * row block, so its weights stay in its caches), in batches (see TILE_BATCH); each batch takes a
 * row block's 12-row tiles, then the rows left over. */
static void tall_gemm(const int8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                      const int8_t *packed, const int32_t *negative_sum, const float *col_scale,
                      const float *bias, float *out, int thread, int threads) {
    const int64_t tiles = (N + 15) / 16, share = (tiles + threads - 1) / threads;
    const int64_t tile_bytes = (K + 3) / 4 * 64;
    const int64_t fit = BATCH_WEIGHT_BYTES / tile_bytes;
    const int64_t batch = fit < 1 ? 1 : fit > TILE_BATCH ? TILE_BATCH : fit;
    const int64_t ta = thread * share < tiles ? thread * share : tiles;
    const int64_t tb = tiles - ta < share ? tiles : ta + share;
    for (int64_t b0 = 0; b0 < M; b0 += TALL_BLOCK) {
        const int64_t b1 = M - b0 < TALL_BLOCK ? M : b0 + TALL_BLOCK;
        const int64_t tall_end = b0 + (b1 - b0) / TALL_ROWS * TALL_ROWS;
        for (int64_t t0 = ta; t0 < tb; t0 += batch) {
            const int64_t t1 = tb - t0 < batch ? tb : t0 + batch;
            for (int64_t m0 = b0; m0 < tall_end; m0 += TALL_ROWS)
                tall_rows(x, row_scale, m0, K, N, packed, t0, t1, negative_sum, col_scale, bias,
                          out);
            for (int64_t tile = t0; tile < t1; tile++)
                short_rows(x, row_scale, tall_end, b1, K, N, packed, tile, negative_sum, col_scale,
                           bias, out);
        }
    }
}

int int8_gemm_avx2(const int8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                   const int8_t *packed, const int32_t *negative_sum, const float *col_scale,
                   const float *bias, float *out, int num_threads) {
    if (M <= 0 || K <= 0 || N <= 0) return 1;
    if (M >= TALL_ROWS) {
#pragma omp parallel num_threads(num_threads)
        {
#if defined(_OPENMP)
            const int thread = omp_get_thread_num(), threads = omp_get_num_threads();
#else
            const int thread = 0, threads = 1;
#endif
            tall_gemm(x, row_scale, M, K, N, packed, negative_sum, col_scale, bias, out, thread,
                      threads);
        }
        return 0;
    }
    const int64_t tiles = (N + 15) / 16;
    /* Decode-sized steps take two tiles per register tile (one row needs few registers). */
    const int64_t step = M <= 2 ? 2 : 1;
    const int64_t units = (tiles + step - 1) / step;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t unit = 0; unit < units; unit++) {
        const int64_t tile = unit * step;
        const int width = tile + 1 < tiles && step == 2 ? 2 : 1;
        if (width == 2) {
            /* M <= 2: one register tile of every row over two weight tiles. */
            if (M == 2)
                row_tile(x, row_scale, 0, 2, K, N, packed, tile, 2, 2, negative_sum, col_scale,
                         bias, out);
            else
                row_tile(x, row_scale, 0, 1, K, N, packed, tile, 2, 1, negative_sum, col_scale,
                         bias, out);
        } else {
            short_rows(x, row_scale, 0, M, K, N, packed, tile, negative_sum, col_scale, bias, out);
        }
    }
    return 0;
}

#endif
