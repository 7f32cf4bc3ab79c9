/* The one-row paged attention (attend_seq in paged_decode.c) for head_dim 64 on x86 with AVX2,
 * FMA and F16C (the avx2 and avx512vnni builds), bitwise what attend_seq computes.
 *
 * attend_seq spends most of a decode step's attention in work around its arithmetic: every
 * score ends in lanes_total's horizontal sum (about ten shuffles and scalar adds for eight
 * fused multiply-adds), and every value update loads and stores the row's outputs once per key.
 * Here a tile of TILE_TOKENS cached tokens is widened at once; each query head keeps its vector
 * in registers over the tile's keys, and lanes_total's tree runs on eight keys' partial sums at
 * a time, as vertical adds between shuffles; each head's outputs stay in registers over the
 * tile's values. The arithmetic is that of the C code, value for value:
 * - a score's 16 lane sums are lane_dot's as GCC compiles it for head_dim 64 (the zero start
 *   folded away, the first two products of a lane contracted into fma(a[l], b[l], a[l + 16] *
 *   b[l + 16]), the later ones fused in order), then lanes_total's tree, (s4[0] + s4[2]) +
 *   (s4[1] + s4[3]) with s4 = (lo + hi)[0:4] + (lo + hi)[4:8], then the multiply by the scale;
 * - each output element is fma(p, v, o) over the keys in position order, from zero.
 * Only float addition's commutativity is used (exact in IEEE arithmetic), never associativity.
 * The tests compare this kernel with the blocked prefill kernel and with the other variants'
 * builds, bit for bit.
 */
#ifndef ZIGGURAT_ATTEND_ROW_X86_H
#define ZIGGURAT_ATTEND_ROW_X86_H

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define HAVE_ATTEND_ROW_X86 1
#include <immintrin.h>
#include <stdint.h>
#include "paged_common.h"

/* Cached tokens widened and scored per tile: 16 tokens of all kv heads stay in L1. */
#define TILE_TOKENS 16

/* The dots of 8 keys from their sums s8 = lo + hi (8 floats each, in v[0..7]): lanes_total's
 * tree for each, returned in key order. */
static inline __attribute__((always_inline)) __m256 totals8(const __m256 *v) {
    __m256 u[4];
    for (int i = 0; i < 4; i++) /* [s4 of key 2i | s4 of key 2i + 1], s4 = low half + high half */
        u[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20),
                             _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
    /* s4[0] + s4[2] and s4[1] + s4[3], for keys (0, 2 | 1, 3) and (4, 6 | 5, 7) */
    const __m256 r0 = _mm256_add_ps(_mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 r1 = _mm256_add_ps(_mm256_shuffle_ps(u[2], u[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm256_shuffle_ps(u[2], u[3], _MM_SHUFFLE(3, 2, 3, 2)));
    /* (s4[0] + s4[2]) + (s4[1] + s4[3]): keys 0, 2, 4, 6 in the low half, 1, 3, 5, 7 high */
    const __m256 d = _mm256_add_ps(_mm256_shuffle_ps(r0, r1, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm256_shuffle_ps(r0, r1, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_permutevar8x32_ps(d, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* The scores of one query head (q: 64 floats) against n <= TILE_TOKENS keys k[j] (64 floats
 * each), times scale, into dst[0 .. n). */
static inline __attribute__((always_inline)) void score_tile(const float *restrict q,
                                                             const float *const *k, int64_t n,
                                                             float scale, float *restrict dst) {
    __m256 qv[8];
    for (int i = 0; i < 8; i++) qv[i] = _mm256_loadu_ps(q + 8 * i);
    __m256 s8[TILE_TOKENS];
    for (int64_t j = 0; j < n; j++) {
        const float *kj = k[j];
        /* lanes 0-7 (lo) hold elements l, l + 16, l + 32, l + 48; lanes 8-15 (hi) the rest */
        __m256 lo = _mm256_fmadd_ps(qv[0], _mm256_loadu_ps(kj),
                                    _mm256_mul_ps(qv[2], _mm256_loadu_ps(kj + 16)));
        __m256 hi = _mm256_fmadd_ps(qv[1], _mm256_loadu_ps(kj + 8),
                                    _mm256_mul_ps(qv[3], _mm256_loadu_ps(kj + 24)));
        lo = _mm256_fmadd_ps(qv[4], _mm256_loadu_ps(kj + 32), lo);
        hi = _mm256_fmadd_ps(qv[5], _mm256_loadu_ps(kj + 40), hi);
        lo = _mm256_fmadd_ps(qv[6], _mm256_loadu_ps(kj + 48), lo);
        hi = _mm256_fmadd_ps(qv[7], _mm256_loadu_ps(kj + 56), hi);
        s8[j] = _mm256_add_ps(lo, hi);
    }
    for (int64_t j = n; j < (n + 7) / 8 * 8; j++) s8[j] = _mm256_setzero_ps();
    const __m256 sv = _mm256_set1_ps(scale);
    for (int64_t j = 0; j < n; j += 8) {
        const __m256 scores = _mm256_mul_ps(totals8(s8 + j), sv);
        if (n - j >= 8) {
            _mm256_storeu_ps(dst + j, scores);
        } else {
            float part[8];
            _mm256_storeu_ps(part, scores);
            memcpy(dst + j, part, sizeof(float) * (size_t)(n - j));
        }
    }
}

/* o (64 floats) = fma(p[j], v[j], o) for j < n, in order. */
static inline __attribute__((always_inline)) void accumulate_tile(float *restrict o,
                                                                  const float *restrict p,
                                                                  const float *const *v,
                                                                  int64_t n) {
    __m256 ov[8];
    for (int i = 0; i < 8; i++) ov[i] = _mm256_loadu_ps(o + 8 * i);
    for (int64_t j = 0; j < n; j++) {
        const __m256 pj = _mm256_broadcast_ss(p + j);
        for (int i = 0; i < 8; i++) ov[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v[j] + 8 * i), ov[i]);
    }
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(o + 8 * i, ov[i]);
}

/* A position of a row's context and the cache slot holding it, advanced without a division per
 * position. */
typedef struct {
    int64_t position, block, offset;
} cache_cursor;

static inline cache_cursor cursor_at(int64_t position, int block_size) {
    return (cache_cursor){position, position / block_size, position % block_size};
}

static inline __attribute__((always_inline)) void cursor_next(cache_cursor *c, int block_size) {
    c->position++;
    if (++c->offset == block_size) {
        c->offset = 0;
        c->block++;
    }
}

/* Blocks are scattered, so the hardware prefetcher cannot follow a row's cache. The row reads
 * its keys, then its values, as one stream, and this cursor walks that stream PREFETCH_TOKENS
 * tokens ahead of the reads, one token's prefetch beside each token read; into L2
 * (_MM_HINT_T1), as the int8 GEMM does: prefetches into L1 hold the L1's few miss buffers, and
 * the reads wait on them. */
#define PREFETCH_TOKENS 16

typedef struct {
    cache_cursor at;
    int values; /* 0 while `at` walks the keys, 1 the values */
} prefetch_stream;

static inline __attribute__((always_inline)) void prefetch_next(
    prefetch_stream *ahead, const void *k_cache, const void *v_cache, const int64_t *table,
    int64_t context_len, int block_size, int64_t token_bytes) {
    if (ahead->at.position == context_len) {
        if (ahead->values) return; /* past the last value */
        ahead->values = 1;
        ahead->at = cursor_at(0, block_size);
    }
    const char *cache = (const char *)(ahead->values ? v_cache : k_cache);
    const char *token = cache + (table[ahead->at.block] * block_size + ahead->at.offset) * token_bytes;
    for (int64_t b = 0; b < token_bytes; b += 64) _mm_prefetch(token + b, _MM_HINT_T1);
    cursor_next(&ahead->at, block_size);
}

/* Pointers to the n tokens from `at` on (all kv heads each) as float32: into the cache for a
 * float32 one, else widened into buf; `at` moves past them, `ahead` as many tokens. */
static inline __attribute__((always_inline)) void tile_tokens(
    const void *cache, const void *k_cache, const void *v_cache, const int64_t *restrict table,
    int64_t context_len, cache_cursor *at, prefetch_stream *ahead, int64_t n, int block_size,
    int64_t token_stride, int half, float *restrict buf, const float **tokens) {
    const int64_t token_bytes = token_stride * (half ? 2 : 4);
    for (int64_t j = 0; j < n; j++) {
        prefetch_next(ahead, k_cache, v_cache, table, context_len, block_size, token_bytes);
        tokens[j] = token_as_floats(cache, (table[at->block] * block_size + at->offset) * token_stride,
                                    token_stride, half, buf + j * token_stride);
        cursor_next(at, block_size);
    }
}

/* attend_seq's contract and result for head_dim 64; `tile` holds TILE_TOKENS tokens
 * (num_kv_heads * 64 floats each). */
static inline __attribute__((always_inline)) void attend_row_x86(
    const float *restrict query, const void *k_cache, const void *v_cache,
    const int64_t *restrict table, int64_t context_len, int64_t q_row, float *restrict out,
    int num_heads, int num_kv_heads, int block_size, float scale, int half,
    float *restrict scores, float *restrict tile) {
    const int group = num_heads / num_kv_heads;
    const int64_t token_stride = (int64_t)num_kv_heads * 64;
    const int64_t token_bytes = token_stride * (half ? 2 : 4);
    const float *q = query + q_row * num_heads * 64;
    const float *tokens[TILE_TOKENS], *heads[TILE_TOKENS];
    /* The stream's first tokens, before any read can walk it. */
    prefetch_stream ahead = {cursor_at(0, block_size), 0};
    for (int64_t t = 0; t < PREFETCH_TOKENS; t++)
        prefetch_next(&ahead, k_cache, v_cache, table, context_len, block_size, token_bytes);

    cache_cursor at = cursor_at(0, block_size);
    for (int64_t t0 = 0; t0 < context_len; t0 += TILE_TOKENS) {
        const int64_t n = context_len - t0 < TILE_TOKENS ? context_len - t0 : TILE_TOKENS;
        tile_tokens(k_cache, k_cache, v_cache, table, context_len, &at, &ahead, n, block_size,
                    token_stride, half, tile, tokens);
        for (int kvh = 0; kvh < num_kv_heads; kvh++) {
            for (int64_t j = 0; j < n; j++) heads[j] = tokens[j] + (int64_t)kvh * 64;
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
                score_tile(q + (int64_t)h * 64, heads, n, scale, scores + h * context_len + t0);
        }
    }
    for (int h = 0; h < num_heads; h++) softmax_row(scores + h * context_len, context_len);
    float *o = out + q_row * num_heads * 64;
    memset(o, 0, sizeof(float) * (size_t)num_heads * 64);
    at = cursor_at(0, block_size);
    for (int64_t t0 = 0; t0 < context_len; t0 += TILE_TOKENS) {
        const int64_t n = context_len - t0 < TILE_TOKENS ? context_len - t0 : TILE_TOKENS;
        tile_tokens(v_cache, k_cache, v_cache, table, context_len, &at, &ahead, n, block_size,
                    token_stride, half, tile, tokens);
        for (int kvh = 0; kvh < num_kv_heads; kvh++) {
            for (int64_t j = 0; j < n; j++) heads[j] = tokens[j] + (int64_t)kvh * 64;
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
                accumulate_tile(o + (int64_t)h * 64, scores + h * context_len + t0, heads, n);
        }
    }
}

#endif
#endif
