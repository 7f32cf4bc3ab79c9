/* Paged attention for a block of query rows that read the same block table (a prefill chunk's
 * rows: row r attends to the first context_lens[r] positions of the sequence), for one kv head
 * and the query heads that share it. paged_decode.c groups a step's rows into such blocks and
 * hands every other row to its one-row kernel.
 *
 * Every row's result is bitwise what the one-row kernel (attend_seq) computes for it: each score
 * is the same 16-lane dot product (lane_sum.h) in the same order, the softmax is the same code
 * (softmax_row), and each output element sums p * v over the keys in position order. So a
 * prefill token at position p is computed exactly as a decode at p, and a row's result depends
 * neither on how the prompt was chunked nor on the other rows of the step. What changes is only
 * the work around that arithmetic:
 * - each cached key and value (kv head `kv_head` of a token) is read and widened to float32 once
 *   per block of rows instead of once per row;
 * - scores are computed for KEY_LANES keys at once: the keys of a tile are transposed into a
 *   small buffer (dimension-major), so lane l of the dot product becomes a vector of KEY_LANES
 *   running sums (one per key), and lanes_total's fixed tree becomes vertical adds. No horizontal
 *   sum per (row, key) is left, and up to TILE_QUERIES (row, head) pairs share each load of the
 *   tile;
 * - the outputs of a row's heads stay in registers over a tile of VALUE_TILE values (kept in
 *   L1), sharing each load of a value, instead of a load and a store per key;
 * - the next tile's scattered cache slices are prefetched while this one is computed.
 * Work items are (block of rows, kv head): one long prompt keeps every thread busy.
 */
#include <stdint.h>
#include <string.h>
#include "paged_common.h"

/* Keys per vector of scores. Each key's arithmetic is its own lane, so the width changes no
 * bit; it only fits the registers (16 lane sums of this type stay in registers). */
#if defined(ZIG_ISA_AVX512VNNI)
#define KEY_LANES 16
#elif defined(ZIG_ISA_AVX2)
#define KEY_LANES 8
#else
#define KEY_LANES 4
#endif
#define VALUE_TILE 64

typedef float keyvec __attribute__((vector_size(KEY_LANES * sizeof(float))));

/* Scores have a row stride rounded up to whole key vectors. */
static inline int64_t padded_len(int64_t n) {
    return (n + KEY_LANES - 1) / KEY_LANES * KEY_LANES;
}

int64_t paged_prefill_scratch_floats(int64_t rows, int group, int64_t longest, int head_dim) {
    return rows * group * padded_len(longest) /* scores */
           + (int64_t)head_dim * KEY_LANES      /* transposed key tile */
           + (int64_t)VALUE_TILE * head_dim;    /* widened values */
}

/* kv head `kv_head` of cached token `token` (a slot) as float32: in place for a float32 cache,
 * else widened into `buf`. `half` is a constant in every caller. */
static inline __attribute__((always_inline)) const float *slice_as_floats(
    const void *cache, int64_t token, int64_t token_stride, int kv_head, int head_dim, int half,
    float *buf) {
    return token_as_floats(cache, token * token_stride + (int64_t)kv_head * head_dim, head_dim,
                           half, buf);
}

static inline __attribute__((always_inline)) keyvec key_row(const float *restrict kt, int i) {
    keyvec k;
    memcpy(&k, kt + (int64_t)i * KEY_LANES, sizeof k);
    return k;
}

/* Query vectors scored together against one key tile: they share each load of the tile. */
#if KEY_LANES == 16
#define TILE_QUERIES 4
#else
#define TILE_QUERIES 2
#endif

/* Lane l of lane_dot (elements l, l + 16, ...) of each of nq query vectors against the
 * transposed key tile kt[head_dim][KEY_LANES], as a vector over the tile's keys, for a
 * compile-time head_dim that is a multiple of 16 (at least 32).
 *
 * Each lane sum is formed exactly as GCC compiles lane_dot for such a head_dim: its loop is
 * unrolled, its zero start folds away, and the first two products contract into one fused
 * multiply-add, fma(a[l], b[l], a[l + 16] * b[l + 16]), the later ones fused in order. (The
 * tests compare the two paths bit for bit, in every variant this machine builds and under qemu
 * for NEON.) */
static inline __attribute__((always_inline)) void lane_sums(const float *const *restrict q,
                                                            int nq, const float *restrict kt,
                                                            int head_dim, int l,
                                                            keyvec *restrict dst) {
    const keyvec k0 = key_row(kt, l), k1 = key_row(kt, l + SUM_LANES);
    for (int h = 0; h < nq; h++) dst[h] = q[h][l] * k0 + q[h][l + SUM_LANES] * k1;
    for (int i = l + 2 * SUM_LANES; i < head_dim; i += SUM_LANES) {
        const keyvec k = key_row(kt, i);
        for (int h = 0; h < nq; h++) dst[h] += q[h][i] * k;
    }
}

/* lanes_total's s8[l] = lane l + lane l + 8, and s4[l] = s8[l] + s8[l + 4]. */
static inline __attribute__((always_inline)) void pair_sums(const float *const *restrict q,
                                                            int nq, const float *restrict kt,
                                                            int head_dim, int l,
                                                            keyvec *restrict dst) {
    keyvec hi[TILE_QUERIES];
    lane_sums(q, nq, kt, head_dim, l, dst);
    lane_sums(q, nq, kt, head_dim, l + 8, hi);
    for (int h = 0; h < nq; h++) dst[h] += hi[h];
}

static inline __attribute__((always_inline)) void quad_sums(const float *const *restrict q,
                                                            int nq, const float *restrict kt,
                                                            int head_dim, int l,
                                                            keyvec *restrict dst) {
    keyvec hi[TILE_QUERIES];
    pair_sums(q, nq, kt, head_dim, l, dst);
    pair_sums(q, nq, kt, head_dim, l + 4, hi);
    for (int h = 0; h < nq; h++) dst[h] += hi[h];
}

/* The dot products of nq (<= TILE_QUERIES) query vectors with every key of the tile, each
 * bitwise lane_dot: the lane sums above, then lanes_total's tree (s4[0] + s4[2]) + (s4[1] +
 * s4[3]), built depth first so that few partial sums are live at once. */
static inline __attribute__((always_inline)) void tile_scores(const float *const *restrict q,
                                                              int nq, const float *restrict kt,
                                                              int head_dim,
                                                              keyvec *restrict out) {
    keyvec a[TILE_QUERIES], b[TILE_QUERIES];
    quad_sums(q, nq, kt, head_dim, 0, out);
    quad_sums(q, nq, kt, head_dim, 2, a);
    for (int h = 0; h < nq; h++) out[h] += a[h];
    quad_sums(q, nq, kt, head_dim, 1, a);
    quad_sums(q, nq, kt, head_dim, 3, b);
    for (int h = 0; h < nq; h++) out[h] += a[h] + b[h];
}

/* One query vector against the tile for a head_dim known only at run time, where lane_dot's
 * loop stays a loop: every product fused into its lane in order from zero, a partial last
 * block of 16 contributing to its first lanes only (lane_dot pads it with zeros). */
static inline keyvec tile_scores_any(const float *restrict q, const float *restrict kt,
                                     int head_dim) {
    keyvec lane[SUM_LANES];
    for (int l = 0; l < SUM_LANES; l++) lane[l] = (keyvec){0.0f};
    int i = 0;
    for (; i + SUM_LANES <= head_dim; i += SUM_LANES)
        for (int l = 0; l < SUM_LANES; l++) lane[l] += q[i + l] * key_row(kt, i + l);
    for (int l = 0; i + l < head_dim; l++) lane[l] += q[i + l] * key_row(kt, i + l);
    keyvec s8[8], s4[4];
    for (int l = 0; l < 8; l++) s8[l] = lane[l] + lane[l + 8];
    for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

/* Scores (dot products times `scale`) of nq query vectors against the tile, stored at dst[h]. */
static inline __attribute__((always_inline)) void store_scores(const float *const *restrict q,
                                                               int nq, const float *restrict kt,
                                                               int head_dim, int unrolled,
                                                               float scale, float *const *dst) {
    keyvec s[TILE_QUERIES];
    if (!unrolled || head_dim % SUM_LANES != 0 || head_dim < 2 * SUM_LANES) {
        for (int h = 0; h < nq; h++) s[h] = tile_scores_any(q[h], kt, head_dim);
    } else {
        switch (nq) { /* a compile-time count, so that the sums stay in registers */
#if TILE_QUERIES == 4
            case 4: tile_scores(q, 4, kt, head_dim, s); break;
            case 3: tile_scores(q, 3, kt, head_dim, s); break;
#endif
            case 2: tile_scores(q, 2, kt, head_dim, s); break;
            case 1: tile_scores(q, 1, kt, head_dim, s); break;
            default: __builtin_unreachable(); /* 1 <= nq <= TILE_QUERIES */
        }
    }
    for (int h = 0; h < nq; h++) {
        const keyvec scaled = s[h] * scale;
        memcpy(dst[h], &scaled, sizeof scaled);
    }
}

/* o[h][d] += p[h][j] * v[j][d] for j < n and HEADS query heads h (p rows p_stride apart), in
 * order of j (attend_seq's sum), the outputs kept in registers over the tile. The heads share
 * each value load; more than one head gives more independent sums than one head's few
 * vectors where vectors are wide. */
#define ACCUMULATE_VALUES(NAME, HEADS)                                                         \
    static inline __attribute__((always_inline)) void NAME(                                   \
        float *restrict o, const float *restrict p, int64_t p_stride,                          \
        const float *const *restrict v, int64_t n, int head_dim) {                             \
        keyvec acc[HEADS][128 / KEY_LANES];                                                    \
        const int parts = head_dim / KEY_LANES;                                                \
        for (int h = 0; h < HEADS; h++)                                                        \
            for (int k = 0; k < parts; k++)                                                    \
                memcpy(&acc[h][k], o + h * head_dim + k * KEY_LANES, sizeof(keyvec));          \
        for (int64_t j = 0; j < n; j++) {                                                      \
            _Pragma("GCC unroll 32") for (int k = 0; k < parts; k++) {                         \
                keyvec vk;                                                                     \
                memcpy(&vk, v[j] + k * KEY_LANES, sizeof vk);                                  \
                _Pragma("GCC unroll 4") for (int h = 0; h < HEADS; h++) acc[h][k] +=           \
                    p[h * p_stride + j] * vk;                                                  \
            }                                                                                  \
        }                                                                                      \
        for (int h = 0; h < HEADS; h++)                                                        \
            for (int k = 0; k < parts; k++)                                                    \
                memcpy(o + h * head_dim + k * KEY_LANES, &acc[h][k], sizeof(keyvec));          \
    }
ACCUMULATE_VALUES(accumulate_one_head, 1)
ACCUMULATE_VALUES(accumulate_two_heads, 2)
ACCUMULATE_VALUES(accumulate_three_heads, 3)
ACCUMULATE_VALUES(accumulate_four_heads, 4)

/* The same sum for any head_dim, one element at a time. */
static inline void accumulate_any(float *restrict o, const float *restrict p,
                                  const float *const *restrict v, int64_t n, int head_dim) {
    for (int64_t j = 0; j < n; j++) {
        const float pj = p[j];
        const float *restrict vj = v[j];
        for (int d = 0; d < head_dim; d++) o[d] += pj * vj[d];
    }
}

/* Up to four heads together where one head's output is at most four vectors (AVX-512 at
 * head_dim 64: 16 registers at most), else one head at a time (which already has eight or more
 * independent sums). */
static inline __attribute__((always_inline)) void accumulate_values(
    float *restrict o, const float *restrict p, int64_t p_stride, int heads,
    const float *const *restrict v, int64_t n, int head_dim) {
    if (head_dim % KEY_LANES != 0 || head_dim > 128) {
        for (int h = 0; h < heads; h++)
            accumulate_any(o + (int64_t)h * head_dim, p + h * p_stride, v, n, head_dim);
        return;
    }
    int h = 0;
    if (head_dim / KEY_LANES <= 4) {
        for (; h + 4 <= heads; h += 4)
            accumulate_four_heads(o + (int64_t)h * head_dim, p + h * p_stride, p_stride, v, n,
                                  head_dim);
        float *oh = o + (int64_t)h * head_dim;
        const float *ph = p + h * p_stride;
        switch (heads - h) {
            case 3: accumulate_three_heads(oh, ph, p_stride, v, n, head_dim); return;
            case 2: accumulate_two_heads(oh, ph, p_stride, v, n, head_dim); return;
            default: break;
        }
    }
    for (; h < heads; h++)
        accumulate_one_head(o + (int64_t)h * head_dim, p + h * p_stride, p_stride, v, n,
                            head_dim);
}

/* The cache slots of positions t0 .. t0 + n - 1 (one division, not one per position). */
static inline void positions_to_slots(const int64_t *restrict table, int64_t t0, int64_t n,
                                      int block_size, int64_t *restrict slots) {
    int64_t block = t0 / block_size, offset = t0 % block_size;
    for (int64_t j = 0; j < n; j++) {
        slots[j] = table[block] * block_size + offset;
        if (++offset == block_size) {
            offset = 0;
            block++;
        }
    }
}

/* Blocks are scattered in memory: ask for kv head `kv_head` of positions t0 .. t0 + n - 1
 * (the next tile) while the current one is computed. */
static inline void prefetch_slices(const void *cache, const int64_t *restrict table, int64_t t0,
                                   int64_t n, int block_size, int64_t token_stride, int kv_head,
                                   int head_dim, int half) {
    int64_t slots[VALUE_TILE];
    positions_to_slots(table, t0, n, block_size, slots);
    const int64_t element = half ? 2 : 4;
    for (int64_t j = 0; j < n; j++)
        prefetch_bytes((const char *)cache +
                           (slots[j] * token_stride + (int64_t)kv_head * head_dim) * element,
                       head_dim * element);
}

static inline __attribute__((always_inline)) void attend_block(
    const float *restrict query, const void *k_cache, const void *v_cache,
    const int64_t *restrict table, const int64_t *restrict context_lens,
    const int64_t *restrict token_rows, int rows, int kv_head, float *restrict out, int num_heads,
    int num_kv_heads, int head_dim, int block_size, float scale, int half, int unrolled,
    float *restrict scratch) {
    const int group = num_heads / num_kv_heads;
    const int64_t token_stride = (int64_t)num_kv_heads * head_dim;
    int64_t longest = 1;
    for (int r = 0; r < rows; r++) longest = context_lens[r] > longest ? context_lens[r] : longest;
    const int64_t stride = padded_len(longest);
    float *restrict scores = scratch; /* [rows * group][stride] */
    float *restrict kt = scores + (int64_t)rows * group * stride;
    float *restrict widened = kt + (int64_t)head_dim * KEY_LANES;
    const int64_t head0 = (int64_t)kv_head * group;
    int64_t slots[VALUE_TILE > KEY_LANES ? VALUE_TILE : KEY_LANES];

    for (int64_t t0 = 0; t0 < longest; t0 += KEY_LANES) {
        const int64_t n = longest - t0 < KEY_LANES ? longest - t0 : KEY_LANES;
        positions_to_slots(table, t0, n, block_size, slots);
        if (t0 + KEY_LANES < longest)
            prefetch_slices(k_cache, table, t0 + KEY_LANES,
                            longest - t0 - KEY_LANES < KEY_LANES ? longest - t0 - KEY_LANES
                                                                 : KEY_LANES,
                            block_size, token_stride, kv_head, head_dim, half);
        for (int64_t j = 0; j < KEY_LANES; j++) {
            if (j < n) {
                const float *k = slice_as_floats(k_cache, slots[j], token_stride, kv_head,
                                                 head_dim, half, widened);
                for (int i = 0; i < head_dim; i++) kt[(int64_t)i * KEY_LANES + j] = k[i];
            } else {
                for (int i = 0; i < head_dim; i++) kt[(int64_t)i * KEY_LANES + j] = 0.0f;
            }
        }
        /* Every (row, head) that sees keys of this tile, TILE_QUERIES at a time. */
        const float *q[TILE_QUERIES];
        float *dst[TILE_QUERIES];
        int nq = 0;
        for (int r = 0; r < rows; r++) {
            if (context_lens[r] <= t0) continue;
            for (int g = 0; g < group; g++) {
                q[nq] = query + (token_rows[r] * num_heads + head0 + g) * head_dim;
                dst[nq++] = scores + ((int64_t)r * group + g) * stride + t0;
                if (nq == TILE_QUERIES) {
                    store_scores(q, nq, kt, head_dim, unrolled, scale, dst);
                    nq = 0;
                }
            }
        }
        if (nq > 0) store_scores(q, nq, kt, head_dim, unrolled, scale, dst);
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < group; g++)
            softmax_row(scores + ((int64_t)r * group + g) * stride, context_lens[r]);

    for (int r = 0; r < rows; r++)
        memset(out + (token_rows[r] * num_heads + head0) * head_dim, 0,
               sizeof(float) * (size_t)group * (size_t)head_dim);
    const float *v[VALUE_TILE];
    for (int64_t t0 = 0; t0 < longest; t0 += VALUE_TILE) {
        const int64_t n = longest - t0 < VALUE_TILE ? longest - t0 : VALUE_TILE;
        positions_to_slots(table, t0, n, block_size, slots);
        for (int64_t j = 0; j < n; j++)
            v[j] = slice_as_floats(v_cache, slots[j], token_stride, kv_head, head_dim, half,
                                   widened + j * head_dim);
        if (t0 + VALUE_TILE < longest)
            prefetch_slices(v_cache, table, t0 + VALUE_TILE,
                            longest - t0 - VALUE_TILE < VALUE_TILE ? longest - t0 - VALUE_TILE
                                                                   : VALUE_TILE,
                            block_size, token_stride, kv_head, head_dim, half);
        for (int r = 0; r < rows; r++) {
            if (context_lens[r] <= t0) continue;
            const int64_t m = context_lens[r] - t0 < n ? context_lens[r] - t0 : n;
            float *o = out + (token_rows[r] * num_heads + head0) * head_dim;
            accumulate_values(o, scores + (int64_t)r * group * stride + t0, stride, group, v, m,
                              head_dim);
        }
    }
}

/* The same code with the cache type and head_dim compile-time constants. */
#define SPECIALISE(NAME, HALF, DIM)                                                             \
    static void NAME(const float *query, const void *k_cache, const void *v_cache,              \
                     const int64_t *table, const int64_t *context_lens,                         \
                     const int64_t *token_rows, int rows, int kv_head, float *out,              \
                     int num_heads, int num_kv_heads, int head_dim, int block_size,             \
                     float scale, float *scratch) {                                             \
        attend_block(query, k_cache, v_cache, table, context_lens, token_rows, rows, kv_head,   \
                     out, num_heads, num_kv_heads, DIM == 0 ? head_dim : DIM, block_size,       \
                     scale, HALF, DIM != 0, scratch);                                                     \
    }
SPECIALISE(block_f32_64, 0, 64)
SPECIALISE(block_f32_128, 0, 128)
SPECIALISE(block_f32_any, 0, 0)
#if HAVE_F16
SPECIALISE(block_f16_64, 1, 64)
SPECIALISE(block_f16_128, 1, 128)
SPECIALISE(block_f16_any, 1, 0)
#endif

/* Rows `rows` of query (token_rows[r], context_lens[r]), all reading block table `table`,
 * against kv head `kv_head`: writes those rows' query heads of that kv head in `out`. Scratch:
 * paged_prefill_scratch_floats(rows, group, longest context, head_dim) floats. The caller checks
 * `half` against HAVE_F16. */
void paged_prefill_block(const float *query, const void *k_cache, const void *v_cache,
                         const int64_t *table, const int64_t *context_lens,
                         const int64_t *token_rows, int rows, int kv_head, float *out,
                         int num_heads, int num_kv_heads, int head_dim, int block_size,
                         float scale, int half, float *scratch) {
#if HAVE_F16
    if (half) {
        (head_dim == 64    ? block_f16_64
         : head_dim == 128 ? block_f16_128
                           : block_f16_any)(query, k_cache, v_cache, table, context_lens,
                                            token_rows, rows, kv_head, out, num_heads,
                                            num_kv_heads, head_dim, block_size, scale, scratch);
        return;
    }
#endif
    (void)half;
    (head_dim == 64    ? block_f32_64
     : head_dim == 128 ? block_f32_128
                       : block_f32_any)(query, k_cache, v_cache, table, context_lens, token_rows,
                                        rows, kv_head, out, num_heads, num_kv_heads, head_dim,
                                        block_size, scale, scratch);
}
