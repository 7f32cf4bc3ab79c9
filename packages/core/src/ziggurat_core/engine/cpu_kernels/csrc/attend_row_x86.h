/* The one-row paged attention (attend_seq in paged_decode.c) for head_dim 64 on x86 with AVX2,
 * FMA and F16C (the avx2 and avx512vnni builds), bitwise what attend_seq computes.
 *
 * attend_seq spends most of a decode step's attention in work around its arithmetic: every
 * score ends in lanes_total's horizontal sum (about ten shuffles and scalar adds for eight
 * fused multiply-adds), every value update loads and stores the row's outputs once per key, and
 * a half cache is widened into a buffer, stored and loaded again. Here the keys and values come
 * a tile of TILE_TOKENS tokens at a time, and each key or value vector is widened straight into
 * a register, once for all the query heads of its kv head (up to HEAD_CHUNK at a time): a key's
 * 8 vectors meet each head's query from L1, and lanes_total's tree runs on eight keys' partial
 * sums at a time, as vertical adds between shuffles; the heads' outputs stay in registers over
 * the tile's values, 16 elements per pass.
 * The arithmetic is that of the C code, value for value:
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

/* Query heads that share a kv head, taken together over a tile (a model's group is usually 1 to
 * 8): each key or value vector is widened once for all of them, straight into a register. */
#define HEAD_CHUNK 4

/* Elements [i, i + 8) of a cached token as float32: widened from IEEE halves, or loaded as they
 * are. `half` is a constant in every caller, so the branch folds away. */
static inline __attribute__((always_inline)) __m256 token8(const void *token, int i, int half) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)token + i)))
                : _mm256_loadu_ps((const float *)token + i);
}

/* The scores of `heads` <= HEAD_CHUNK query heads (q: 64 floats each, consecutive) against
 * n <= TILE_TOKENS keys (k[j]: 64 cached elements), times scale, into dst[c * dst_stride + j]
 * for head c. Each key is widened once, into registers, for all the heads. */
static inline __attribute__((always_inline)) void score_tile(const float *restrict q, int heads,
                                                             const void *const *k, int64_t n,
                                                             float scale, int half,
                                                             float *restrict dst,
                                                             int64_t dst_stride) {
    __m256 s8[HEAD_CHUNK][TILE_TOKENS];
    for (int64_t j = 0; j < n; j++) {
        __m256 kv[8];
        for (int i = 0; i < 8; i++) kv[i] = token8(k[j], 8 * i, half);
        for (int c = 0; c < heads; c++) {
            const float *qc = q + 64 * c;
            /* lanes 0-7 (lo) hold elements l, l + 16, l + 32, l + 48; lanes 8-15 (hi) the rest */
            __m256 lo = _mm256_fmadd_ps(_mm256_loadu_ps(qc), kv[0],
                                        _mm256_mul_ps(_mm256_loadu_ps(qc + 16), kv[2]));
            __m256 hi = _mm256_fmadd_ps(_mm256_loadu_ps(qc + 8), kv[1],
                                        _mm256_mul_ps(_mm256_loadu_ps(qc + 24), kv[3]));
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(qc + 32), kv[4], lo);
            hi = _mm256_fmadd_ps(_mm256_loadu_ps(qc + 40), kv[5], hi);
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(qc + 48), kv[6], lo);
            hi = _mm256_fmadd_ps(_mm256_loadu_ps(qc + 56), kv[7], hi);
            s8[c][j] = _mm256_add_ps(lo, hi);
        }
    }
    const __m256 sv = _mm256_set1_ps(scale);
    for (int c = 0; c < heads; c++) {
        for (int64_t j = n; j < (n + 7) / 8 * 8; j++) s8[c][j] = _mm256_setzero_ps();
        float *d = dst + c * dst_stride;
        for (int64_t j = 0; j < n; j += 8) {
            const __m256 scores = _mm256_mul_ps(totals8(s8[c] + j), sv);
            if (n - j >= 8) {
                _mm256_storeu_ps(d + j, scores);
            } else {
                float part[8];
                _mm256_storeu_ps(part, scores);
                memcpy(d + j, part, sizeof(float) * (size_t)(n - j));
            }
        }
    }
}

/* o_c (64 floats each, consecutive) = fma(p_c[j], v[j], o_c) for j < n, in order, for HEADS
 * query heads (p_c = p + c * p_stride; v[j]: 64 cached elements). Sixteen elements at a time, so
 * that every head's sums stay in registers while each value vector is widened once for all. */
static inline __attribute__((always_inline)) void accumulate_tile(float *restrict o,
                                                                  const float *restrict p,
                                                                  int64_t p_stride,
                                                                  const void *const *v, int64_t n,
                                                                  int half, const int HEADS) {
    for (int i = 0; i < 8; i += 2) {
        __m256 acc[HEAD_CHUNK][2];
        for (int c = 0; c < HEADS; c++) {
            acc[c][0] = _mm256_loadu_ps(o + 64 * c + 8 * i);
            acc[c][1] = _mm256_loadu_ps(o + 64 * c + 8 * i + 8);
        }
        for (int64_t j = 0; j < n; j++) {
            const __m256 v0 = token8(v[j], 8 * i, half), v1 = token8(v[j], 8 * i + 8, half);
            for (int c = 0; c < HEADS; c++) {
                const __m256 pj = _mm256_broadcast_ss(p + c * p_stride + j);
                acc[c][0] = _mm256_fmadd_ps(pj, v0, acc[c][0]);
                acc[c][1] = _mm256_fmadd_ps(pj, v1, acc[c][1]);
            }
        }
        for (int c = 0; c < HEADS; c++) {
            _mm256_storeu_ps(o + 64 * c + 8 * i, acc[c][0]);
            _mm256_storeu_ps(o + 64 * c + 8 * i + 8, acc[c][1]);
        }
    }
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

/* Pointers to the n cached tokens from `at` on (all kv heads each, as the cache holds them);
 * `at` moves past them, `ahead` as many tokens. */
static inline __attribute__((always_inline)) void tile_tokens(
    const void *cache, const void *k_cache, const void *v_cache, const int64_t *restrict table,
    int64_t context_len, cache_cursor *at, prefetch_stream *ahead, int64_t n, int block_size,
    int64_t token_bytes, const char **tokens) {
    for (int64_t j = 0; j < n; j++) {
        prefetch_next(ahead, k_cache, v_cache, table, context_len, block_size, token_bytes);
        tokens[j] = (const char *)cache + (table[at->block] * block_size + at->offset) * token_bytes;
        cursor_next(at, block_size);
    }
}

/* The value tiles of a kv head's query heads, in chunks of HEAD_CHUNK with the chunk's size a
 * constant (so that its sums stay in registers). */
static inline __attribute__((always_inline)) void accumulate_heads(float *restrict o,
                                                                   const float *restrict p,
                                                                   int64_t p_stride,
                                                                   const void *const *v,
                                                                   int64_t n, int half,
                                                                   int heads) {
    for (int c0 = 0; c0 < heads; c0 += HEAD_CHUNK) {
        float *oc = o + 64 * c0;
        const float *pc = p + c0 * p_stride;
        switch (heads - c0 < HEAD_CHUNK ? heads - c0 : HEAD_CHUNK) {
            case 4: accumulate_tile(oc, pc, p_stride, v, n, half, 4); break;
            case 3: accumulate_tile(oc, pc, p_stride, v, n, half, 3); break;
            case 2: accumulate_tile(oc, pc, p_stride, v, n, half, 2); break;
            default: accumulate_tile(oc, pc, p_stride, v, n, half, 1); break;
        }
    }
}

/* attend_seq's contract and result for head_dim 64. */
static inline __attribute__((always_inline)) void attend_row_x86(
    const float *restrict query, const void *k_cache, const void *v_cache,
    const int64_t *restrict table, int64_t context_len, int64_t q_row, float *restrict out,
    int num_heads, int num_kv_heads, int block_size, float scale, int half,
    float *restrict scores) {
    const int group = num_heads / num_kv_heads;
    const int64_t token_bytes = (int64_t)num_kv_heads * 64 * (half ? 2 : 4);
    const int64_t head_bytes = 64 * (half ? 2 : 4);
    const float *q = query + q_row * num_heads * 64;
    const char *tokens[TILE_TOKENS];
    const void *heads[TILE_TOKENS];
    /* The stream's first tokens, before any read can walk it. */
    prefetch_stream ahead = {cursor_at(0, block_size), 0};
    for (int64_t t = 0; t < PREFETCH_TOKENS; t++)
        prefetch_next(&ahead, k_cache, v_cache, table, context_len, block_size, token_bytes);

    cache_cursor at = cursor_at(0, block_size);
    for (int64_t t0 = 0; t0 < context_len; t0 += TILE_TOKENS) {
        const int64_t n = context_len - t0 < TILE_TOKENS ? context_len - t0 : TILE_TOKENS;
        tile_tokens(k_cache, k_cache, v_cache, table, context_len, &at, &ahead, n, block_size,
                    token_bytes, tokens);
        for (int kvh = 0; kvh < num_kv_heads; kvh++) {
            for (int64_t j = 0; j < n; j++) heads[j] = tokens[j] + kvh * head_bytes;
            for (int h = kvh * group; h < (kvh + 1) * group; h += HEAD_CHUNK)
                score_tile(q + (int64_t)h * 64,
                           (kvh + 1) * group - h < HEAD_CHUNK ? (kvh + 1) * group - h : HEAD_CHUNK,
                           heads, n, scale, half, scores + h * context_len + t0, context_len);
        }
    }
    for (int h = 0; h < num_heads; h++) softmax_row(scores + h * context_len, context_len);
    float *o = out + q_row * num_heads * 64;
    memset(o, 0, sizeof(float) * (size_t)num_heads * 64);
    at = cursor_at(0, block_size);
    for (int64_t t0 = 0; t0 < context_len; t0 += TILE_TOKENS) {
        const int64_t n = context_len - t0 < TILE_TOKENS ? context_len - t0 : TILE_TOKENS;
        tile_tokens(v_cache, k_cache, v_cache, table, context_len, &at, &ahead, n, block_size,
                    token_bytes, tokens);
        for (int kvh = 0; kvh < num_kv_heads; kvh++) {
            for (int64_t j = 0; j < n; j++) heads[j] = tokens[j] + kvh * head_bytes;
            accumulate_heads(o + (int64_t)kvh * group * 64, scores + kvh * group * context_len + t0,
                             context_len, heads, n, half, group);
        }
    }
}

#endif
#endif
