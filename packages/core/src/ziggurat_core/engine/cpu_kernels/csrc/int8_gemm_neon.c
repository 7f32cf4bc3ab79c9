/* int8 x int8 -> float32 GEMM for ARM NEON (see int8_gemm.h for the contract and layout).
 *
 * The packed layout [ceil(N/16)][ceil(K/4)][16][4] stores one group of 4 inputs for 16 outputs
 * as four 16-byte vectors of 4 outputs x 4 inputs each, which is exactly the lane shape of the
 * dot-product extension's sdot: lane j of vdotq_s32(acc, w, x) adds w[4j..4j+3] . x[4j..4j+3].
 * Sixteen activation bytes are loaded once per row and each 4-byte lane of them is broadcast by
 * vdotq_laneq_s32, so one weight load feeds every register row.
 *
 * Without the extension (plain ARMv8 NEON) the same vectors are multiplied with vmull_s8 into
 * int16 and two groups are summed there (vmlal_s8) before vpadalq_s16 widens into int32: one
 * product of values in [-127, 127] is at most 16129, two are at most 32258 and still fit int16,
 * a third could not. The int32 lanes then hold pairs of partial sums per output that one
 * vpaddq_s32 folds in the epilogue.
 *
 * Accumulation is exact int32 arithmetic in both paths, rows are computed independently, and
 * the epilogue is the contract's int8_gemm_epilogue (int8_gemm.h) lane by lane, so results
 * are bitwise those of int8_gemm_reference. Activations are never read past K: the
 * last partial 16 bytes of a row are copied into a zero-padded buffer (the packed weights are
 * zero past K, so the padding adds nothing).
 */
#include "isa.h"

#if defined(ZIG_ISA_NEON)
#include <arm_neon.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "int8_gemm.h"

/* Register rows and 16-output tiles of one register block, at most. With sdot an output tile
 * holds 4 int32x4 accumulators per row, without it 8 (pairs of partial sums). */
#define MAX_ROWS 4
#define MAX_TILES 2
#if defined(__ARM_FEATURE_DOTPROD)
#define ACCS 4
#else
#define ACCS 8
#endif

/* acc[r][t][*] += the products of 16 activation bytes x[r] with `groups` (1..4, a constant in
 * the main loop) consecutive 4-input groups of tile t's weights starting at w[t]. */
static inline __attribute__((always_inline)) void chunk(
    const int8x16_t *x, const int8_t *const *w, int groups, const int T, const int R,
    int32x4_t acc[MAX_ROWS][MAX_TILES][ACCS]) {
#if defined(__ARM_FEATURE_DOTPROD)
/* vdotq_laneq_s32 needs its lane as an immediate: one expansion per lane. */
#define DOT_LANE(L)                                                                 \
    for (int t = 0; t < T; t++) {                                                   \
        const int8_t *g = w[t] + (L) * 64;                                          \
        const int8x16_t w0 = vld1q_s8(g), w1 = vld1q_s8(g + 16);                    \
        const int8x16_t w2 = vld1q_s8(g + 32), w3 = vld1q_s8(g + 48);               \
        for (int r = 0; r < R; r++) {                                               \
            acc[r][t][0] = vdotq_laneq_s32(acc[r][t][0], w0, x[r], L);              \
            acc[r][t][1] = vdotq_laneq_s32(acc[r][t][1], w1, x[r], L);              \
            acc[r][t][2] = vdotq_laneq_s32(acc[r][t][2], w2, x[r], L);              \
            acc[r][t][3] = vdotq_laneq_s32(acc[r][t][3], w3, x[r], L);              \
        }                                                                           \
    }
    DOT_LANE(0)
    if (groups > 1) DOT_LANE(1)
    if (groups > 2) DOT_LANE(2)
    if (groups > 3) DOT_LANE(3)
#undef DOT_LANE
#else
/* Groups L and L+1 (or L alone where SECOND is 0): x's 4 bytes of a group, repeated, times
 * each weight vector's 2 x (2 outputs x 4 inputs) halves, summed in int16 over the two groups,
 * then pairwise widened into the accumulators [2q] (outputs 4q, 4q+1) and [2q+1] (4q+2, 4q+3). */
#define MUL_PAIR(L, SECOND)                                                                  \
    for (int t = 0; t < T; t++) {                                                            \
        const int8_t *g = w[t] + (L) * 64;                                                   \
        for (int q = 0; q < 4; q++) {                                                        \
            const int8x16_t wa = vld1q_s8(g + 16 * q);                                       \
            const int8x16_t wb = (SECOND) ? vld1q_s8(g + 64 + 16 * q) : vdupq_n_s8(0);       \
            for (int r = 0; r < R; r++) {                                                    \
                const int8x16_t xa =                                                         \
                    vreinterpretq_s8_s32(vdupq_laneq_s32(vreinterpretq_s32_s8(x[r]), L));    \
                int16x8_t lo = vmull_s8(vget_low_s8(wa), vget_low_s8(xa));                   \
                int16x8_t hi = vmull_high_s8(wa, xa);                                        \
                if (SECOND) {                                                                \
                    const int8x16_t xb = vreinterpretq_s8_s32(                               \
                        vdupq_laneq_s32(vreinterpretq_s32_s8(x[r]), (L) + 1));               \
                    lo = vmlal_s8(lo, vget_low_s8(wb), vget_low_s8(xb));                     \
                    hi = vmlal_high_s8(hi, wb, xb);                                          \
                }                                                                            \
                acc[r][t][2 * q] = vpadalq_s16(acc[r][t][2 * q], lo);                        \
                acc[r][t][2 * q + 1] = vpadalq_s16(acc[r][t][2 * q + 1], hi);                \
            }                                                                                \
        }                                                                                    \
    }
    if (groups > 1) {
        MUL_PAIR(0, 1)
    } else {
        MUL_PAIR(0, 0)
    }
    if (groups > 3) {
        MUL_PAIR(2, 1)
    } else if (groups > 2) {
        MUL_PAIR(2, 0)
    }
#undef MUL_PAIR
#endif
}

/* Rows m0 .. m0 + rows - 1 (rows <= R) x tiles tile .. tile + T - 1, over all of K. Register
 * rows past `rows` repeat the last row and are not stored. */
static inline __attribute__((always_inline)) void block(
    const int8_t *x, const float *row_scale, int64_t m0, int64_t rows, int64_t K, int64_t N,
    const int8_t *packed, int64_t groups, int64_t tile, const int T, const int R,
    const float *col_scale, const float *bias, float *out) {
    const int8_t *xr[MAX_ROWS];
    for (int r = 0; r < R; r++) xr[r] = x + (m0 + (r < rows ? r : rows - 1)) * K;
    const int8_t *w[MAX_TILES];
    for (int t = 0; t < T; t++) w[t] = packed + (tile + t) * groups * 64;
    int32x4_t acc[MAX_ROWS][MAX_TILES][ACCS];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            for (int a = 0; a < ACCS; a++) acc[r][t][a] = vdupq_n_s32(0);

    const int64_t chunks = K / 16;
    for (int64_t c = 0; c < chunks; c++) {
        int8x16_t xv[MAX_ROWS];
        for (int r = 0; r < R; r++) xv[r] = vld1q_s8(xr[r] + c * 16);
        const int8_t *wc[MAX_TILES];
        for (int t = 0; t < T; t++) wc[t] = w[t] + c * 4 * 64;
        chunk(xv, wc, 4, T, R, acc);
    }
    const int64_t rest = K - chunks * 16;
    if (rest > 0) {
        int8x16_t xv[MAX_ROWS];
        for (int r = 0; r < R; r++) {
            int8_t padded[16] = {0};
            memcpy(padded, xr[r] + chunks * 16, (size_t)rest);
            xv[r] = vld1q_s8(padded);
        }
        const int8_t *wc[MAX_TILES];
        for (int t = 0; t < T; t++) wc[t] = w[t] + chunks * 4 * 64;
        chunk(xv, wc, (int)((rest + 3) / 4), T, R, acc);
    }

    for (int t = 0; t < T; t++) {
        for (int r = 0; r < rows; r++) {
            const int64_t m = m0 + r;
            const float32x4_t rs = vdupq_n_f32(row_scale[m]);
            for (int q = 0; q < 4; q++) {
                const int64_t n0 = (tile + t) * 16 + 4 * q;
                if (n0 >= N) break;
#if defined(__ARM_FEATURE_DOTPROD)
                const int32x4_t sums = acc[r][t][q];
#else
                const int32x4_t sums = vpaddq_s32(acc[r][t][2 * q], acc[r][t][2 * q + 1]);
#endif
                /* int8_gemm_epilogue (int8_gemm.h) on 4 lanes: the scale product made opaque,
                 * then one multiply, or one explicit fused multiply-add with the bias. */
                if (n0 + 4 <= N) {
                    float32x4_t scale = vmulq_f32(rs, vld1q_f32(col_scale + n0));
                    INT8_GEMM_OPAQUE(scale);
                    const float32x4_t v = vcvtq_f32_s32(sums);
                    vst1q_f32(out + m * N + n0, bias != NULL
                                                    ? vfmaq_f32(vld1q_f32(bias + n0), v, scale)
                                                    : vmulq_f32(v, scale));
                } else {
                    /* The last outputs of a partial tile: col_scale and bias end at N. */
                    int32_t lanes[4];
                    vst1q_s32(lanes, sums);
                    for (int j = 0; n0 + j < N; j++)
                        out[m * N + n0 + j] = int8_gemm_epilogue(
                            lanes[j], row_scale[m], col_scale[n0 + j],
                            bias != NULL ? bias + n0 + j : NULL);
                }
            }
        }
    }
}

int int8_gemm_neon(const int8_t *x, const float *row_scale, int64_t M, int64_t K, int64_t N,
                   const int8_t *packed, const float *col_scale, const float *bias, float *out,
                   int num_threads) {
    if (M <= 0 || K <= 0 || N <= 0) return 1;
    const int64_t tiles = (N + 15) / 16, groups = (K + 3) / 4;
    const int64_t pairs = (tiles + 1) / 2;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t pair = 0; pair < pairs; pair++) {
        const int64_t tile = pair * 2;
        const int width = tile + 1 < tiles ? 2 : 1;
        for (int64_t m0 = 0; m0 < M; m0 += MAX_ROWS) {
            const int64_t rows = M - m0 < MAX_ROWS ? M - m0 : MAX_ROWS;
/* Constant block shapes so the loops unroll and the accumulators stay in registers: one row
 * over both tiles (decode), or 2 or 4 rows over one tile at a time. */
#define BLOCK(M0, ROWS, TILE, T, R)                                                          \
    block(x, row_scale, M0, ROWS, K, N, packed, groups, TILE, T, R, col_scale, bias, out)
            if (rows == 1) {
                if (width == 2) BLOCK(m0, 1, tile, 2, 1); else BLOCK(m0, 1, tile, 1, 1);
            } else {
                for (int t = 0; t < width; t++) {
#if defined(__ARM_FEATURE_DOTPROD)
                    if (rows > 2)
                        BLOCK(m0, rows, tile + t, 1, 4);
                    else
                        BLOCK(m0, rows, tile + t, 1, 2);
#else
                    /* Twice the accumulators per row without sdot: two rows at a time. */
                    BLOCK(m0, 2, tile + t, 1, 2);
                    if (rows > 2) BLOCK(m0 + 2, rows - 2, tile + t, 1, 2);
#endif
                }
            }
#undef BLOCK
        }
    }
    return 0;
}

#endif
