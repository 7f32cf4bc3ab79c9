/* Paged decode attention on CPU: one new query token per sequence against its cached keys and
 * values, read in place through the block table. Replaces "gather the blocks into a contiguous
 * buffer, then run SDPA", which moved every cached byte three times per layer.
 *
 * Layouts (contiguous):
 *   query   [num_tokens, num_heads, head_dim] float32; token_rows gives the decode tokens' rows
 *   k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim]: float32
 *           (paged_decode_attention_f32) or IEEE half (paged_decode_attention_f16, in builds
 *           where paged_decode_has_f16() returns 1)
 *   block_tables [num_seqs, max_blocks] (int64), context_lens [num_seqs] (int64)
 *   out     [num_tokens, num_heads, head_dim] float32; only the decode rows are written
 * Query heads h = kv_head * group + g share kv head kv_head (GQA). One work item is one
 * sequence, so each cache block is read front to back as one contiguous run of memory (all kv
 * heads of its tokens): decode attention is bound by memory, and the hardware prefetcher
 * follows such runs where it would miss scattered per-head slices.
 *
 * A half cache halves the bytes read. Each cached token (all its kv heads) is widened to float32
 * into a small per-thread buffer that stays in L1, and the float32 code then runs on that buffer:
 * all arithmetic is float32, the same as the float32 kernel on the upcast cache. (GCC 12 does not
 * vectorise loops over _Float16 loads without AVX512-FP16, hence the explicit F16C / AVX-512
 * conversions.)
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "decode_parts.h"
#include "isa.h"
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(ZIG_ISA_NEON)
/* AArch64 converts between half and float32 in hardware (fcvtl / fcvtn, 4 lanes at a time), in
 * every NEON build: no _Float16 support needed from the compiler. */
#include <arm_neon.h>
#define ZIG_F16_NEON 1
#endif

#include "exp_approx.h"
#include "lane_sum.h"

#if defined(__F16C__) || defined(__FLT16_MAX__) || defined(ZIG_F16_NEON)
#define HAVE_F16 1
#else
#define HAVE_F16 0
#endif

/* Blocks are scattered in memory, so the prefetcher cannot guess the next one: ask for the next
 * block's token while computing on this block's. */
static inline void prefetch_bytes(const void *start, int64_t bytes) {
    const char *p = (const char *)start;
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
}

#if HAVE_F16
/* n IEEE halves (raw bits) -> float32. */
static inline void halves_to_floats(const uint16_t *restrict src, float *restrict dst, int64_t n) {
    int64_t i = 0;
#if defined(ZIG_F16_NEON)
    for (; i + 8 <= n; i += 8) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(src + i));
        vst1q_f32(dst + i, vcvt_f32_f16(vget_low_f16(h)));
        vst1q_f32(dst + i + 4, vcvt_high_f32_f16(h));
    }
    if (i < n) {
        /* The last n % 8 through a zero-padded vector: nothing read or written past n. */
        uint16_t h[8] = {0};
        float f[8];
        memcpy(h, src + i, sizeof(uint16_t) * (size_t)(n - i));
        const float16x8_t v = vreinterpretq_f16_u16(vld1q_u16(h));
        vst1q_f32(f, vcvt_f32_f16(vget_low_f16(v)));
        vst1q_f32(f + 4, vcvt_high_f32_f16(v));
        memcpy(dst + i, f, sizeof(float) * (size_t)(n - i));
    }
#else
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
#endif
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
#else
    for (; i < n; i++) {
        _Float16 h;
        memcpy(&h, src + i, sizeof h);
        dst[i] = (float)h;
    }
#endif
#endif
}
#endif

#if HAVE_F16
/* n float32 -> IEEE halves (raw bits), rounded to nearest even as torch's .to(float16) does. */
static inline void floats_to_halves(const float *restrict src, uint16_t *restrict dst, int64_t n) {
    int64_t i = 0;
#if defined(ZIG_F16_NEON)
    /* fcvtn rounds by FPCR's mode, which is round to nearest even unless a program changes it. */
    for (; i + 8 <= n; i += 8) {
        const float16x8_t h =
            vcvt_high_f16_f32(vcvt_f16_f32(vld1q_f32(src + i)), vld1q_f32(src + i + 4));
        vst1q_u16(dst + i, vreinterpretq_u16_f16(h));
    }
    if (i < n) {
        float f[8] = {0};
        uint16_t h[8];
        memcpy(f, src + i, sizeof(float) * (size_t)(n - i));
        vst1q_u16(h, vreinterpretq_u16_f16(
                         vcvt_high_f16_f32(vcvt_f16_f32(vld1q_f32(f)), vld1q_f32(f + 4))));
        memcpy(dst + i, h, sizeof(uint16_t) * (size_t)(n - i));
    }
#else
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    for (; i < n; i++) {
        const _Float16 h = (_Float16)src[i];
        memcpy(dst + i, &h, sizeof h);
    }
#endif
#endif
}
#endif

/* Stores num_tokens tokens' keys and values into cache slots slot_mapping[t]. Each token is
 * `floats` float32 values (all its kv heads), rows key_stride / value_stride floats apart; the
 * caches hold float32, or IEEE halves when `half`. Returns 0, or 3 for `half` in a build
 * without half support. One call instead of two index_copy_ and two dtype conversions. */
int write_kv_cache(const float *key, int64_t key_stride, const float *value, int64_t value_stride,
                   const int64_t *slot_mapping, int64_t num_tokens, int64_t floats, void *k_cache,
                   void *v_cache, int half) {
#if !HAVE_F16
    if (half) return 3;
#endif
    for (int64_t t = 0; t < num_tokens; t++) {
        const int64_t slot = slot_mapping[t];
        const float *k = key + t * key_stride;
        const float *v = value + t * value_stride;
        if (half) {
#if HAVE_F16
            floats_to_halves(k, (uint16_t *)k_cache + slot * floats, floats);
            floats_to_halves(v, (uint16_t *)v_cache + slot * floats, floats);
#endif
        } else {
            memcpy((float *)k_cache + slot * floats, k, sizeof(float) * (size_t)floats);
            memcpy((float *)v_cache + slot * floats, v, sizeof(float) * (size_t)floats);
        }
    }
    return 0;
}

/* Token `index` of a cache as float32: in place for a float32 cache, else widened into `buf`.
 * `half` is a constant in every caller, so the branch folds away. */
static inline __attribute__((always_inline)) const float *token_as_floats(
    const void *cache, int64_t index, int64_t floats, int half, float *buf) {
#if HAVE_F16
    if (half) {
        halves_to_floats((const uint16_t *)cache + index, buf, floats);
        return buf;
    }
#else
    (void)floats;
    (void)half;
    (void)buf;
#endif
    return (const float *)cache + index;
}

static inline __attribute__((always_inline)) void attend_seq(
    const float *restrict query, const void *k_cache, const void *v_cache,
    const int64_t *restrict table, int64_t context_len, int64_t q_row, float *restrict out,
    int num_heads, int num_kv_heads, int head_dim, int block_size, float scale, int half,
    float *restrict scores /* [num_heads * context_len] */,
    float *restrict token_buf /* [num_kv_heads * head_dim], used when half */) {
    const int group = num_heads / num_kv_heads;
    const int64_t token_stride = (int64_t)num_kv_heads * head_dim;
    const int64_t block_stride = (int64_t)block_size * token_stride;
    const int64_t element = half ? 2 : 4;
    const int64_t token_bytes = token_stride * element;
    const char *k_bytes = (const char *)k_cache;
    const char *v_bytes = (const char *)v_cache;
    const float *q = query + q_row * num_heads * head_dim;

    for (int64_t t0 = 0; t0 < context_len; t0 += block_size) {
        const int64_t block = table[t0 / block_size] * block_stride;
        const int64_t n = context_len - t0 < block_size ? context_len - t0 : block_size;
        const char *k_next = t0 + block_size < context_len
                                 ? k_bytes + table[t0 / block_size + 1] * block_stride * element
                                 : NULL;
        for (int64_t i = 0; i < n; i++) {
            if (k_next != NULL) prefetch_bytes(k_next + i * token_bytes, token_bytes);
            const float *restrict k =
                token_as_floats(k_cache, block + i * token_stride, token_stride, half, token_buf);
            for (int kvh = 0; kvh < num_kv_heads; kvh++) {
                const float *kv = k + (int64_t)kvh * head_dim;
                for (int h = kvh * group; h < (kvh + 1) * group; h++)
                    scores[h * context_len + t0 + i] =
                        lane_dot(q + (int64_t)h * head_dim, kv, head_dim) * scale;
            }
        }
    }
    for (int h = 0; h < num_heads; h++) {
        float *s = scores + h * context_len;
        float m = s[0];
        for (int64_t t = 1; t < context_len; t++) m = s[t] > m ? s[t] : m;
        for (int64_t t = 0; t < context_len; t++) s[t] = exp_approx(s[t] - m);
        const float inv = 1.0f / lane_sum(s, context_len);
        for (int64_t t = 0; t < context_len; t++) s[t] *= inv;
    }
    float *o = out + q_row * num_heads * head_dim;
    for (int i = 0; i < num_heads * head_dim; i++) o[i] = 0.0f;
    for (int64_t t0 = 0; t0 < context_len; t0 += block_size) {
        const int64_t block = table[t0 / block_size] * block_stride;
        const int64_t n = context_len - t0 < block_size ? context_len - t0 : block_size;
        const char *v_next = t0 + block_size < context_len
                                 ? v_bytes + table[t0 / block_size + 1] * block_stride * element
                                 : NULL;
        for (int64_t i = 0; i < n; i++) {
            if (v_next != NULL) prefetch_bytes(v_next + i * token_bytes, token_bytes);
            const float *restrict v =
                token_as_floats(v_cache, block + i * token_stride, token_stride, half, token_buf);
            for (int kvh = 0; kvh < num_kv_heads; kvh++) {
                const float *vv = v + (int64_t)kvh * head_dim;
                for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                    const float p = scores[h * context_len + t0 + i];
                    float *oh = o + (int64_t)h * head_dim;
                    for (int d = 0; d < head_dim; d++) oh[d] += p * vv[d];
                }
            }
        }
    }
}

/* The same code with the cache type and head_dim compile-time constants, so the inner loops
 * unroll and vectorise. */
#define SPECIALISE(NAME, HALF, DIM)                                                              \
    static void NAME(const float *query, const void *k_cache, const void *v_cache,               \
                     const int64_t *table, int64_t context_len, int64_t q_row, float *out,       \
                     int num_heads, int num_kv_heads, int head_dim, int block_size, float scale, \
                     float *scores, float *token_buf) {                                          \
        attend_seq(query, k_cache, v_cache, table, context_len, q_row, out, num_heads,           \
                   num_kv_heads, DIM == 0 ? head_dim : DIM, block_size, scale, HALF, scores,     \
                   token_buf);                                                                   \
    }
SPECIALISE(attend_f32_64, 0, 64)
SPECIALISE(attend_f32_128, 0, 128)
SPECIALISE(attend_f32_any, 0, 0)
#if HAVE_F16
SPECIALISE(attend_f16_64, 1, 64)
SPECIALISE(attend_f16_128, 1, 128)
SPECIALISE(attend_f16_any, 1, 0)
#endif

typedef void (*attend_fn)(const float *, const void *, const void *, const int64_t *, int64_t,
                          int64_t, float *, int, int, int, int, float, float *, float *);

/* Every decode sequence, one OpenMP work item each. Returns 0 on success, 2 if scratch memory
 * ran out. */
static int paged_decode(attend_fn attend, const float *query, const void *k_cache,
                        const void *v_cache, const int64_t *block_tables,
                        const int64_t *context_lens, const int64_t *token_rows, float *out,
                        int num_seqs, int max_blocks, int num_heads, int num_kv_heads,
                        int head_dim, int block_size, float scale, int num_threads) {
    int64_t longest = 1;
    for (int s = 0; s < num_seqs; s++)
        longest = context_lens[s] > longest ? context_lens[s] : longest;
    const size_t score_floats = (size_t)num_heads * (size_t)longest;
    const size_t scratch_floats = score_floats + (size_t)num_kv_heads * (size_t)head_dim;
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        float *scratch = (float *)malloc(sizeof(float) * scratch_floats);
        if (scratch == NULL) {
#pragma omp atomic write
            failed = 2;
        }
        /* Every thread must reach the worksharing loop, even one without scratch memory. */
#pragma omp for schedule(dynamic, 1)
        for (int s = 0; s < num_seqs; s++) {
            if (scratch == NULL) continue;
            attend(query, k_cache, v_cache, block_tables + (int64_t)s * max_blocks, context_lens[s],
                   token_rows[s], out, num_heads, num_kv_heads, head_dim, block_size, scale,
                   scratch, scratch + score_floats);
        }
        free(scratch);
    }
    return failed;
}

int paged_decode_attention_f32(const float *query, const float *k_cache, const float *v_cache,
                               const int64_t *block_tables, const int64_t *context_lens,
                               const int64_t *token_rows, float *out, int num_seqs,
                               int max_blocks, int num_heads, int num_kv_heads, int head_dim,
                               int block_size, float scale, int num_threads) {
    attend_fn attend = head_dim == 64    ? attend_f32_64
                       : head_dim == 128 ? attend_f32_128
                                         : attend_f32_any;
    return paged_decode(attend, query, k_cache, v_cache, block_tables, context_lens, token_rows,
                        out, num_seqs, max_blocks, num_heads, num_kv_heads, head_dim, block_size,
                        scale, num_threads);
}

/* The half cache needs F16C (x86-64), NEON (AArch64) or the _Float16 type (GCC >= 12, clang).
 * Without any of them only this entry point is left out, so the float32 kernel and every other
 * kernel in the library still build; callers ask paged_decode_has_f16() first. */
#if HAVE_F16
int paged_decode_attention_f16(const float *query, const uint16_t *k_cache,
                               const uint16_t *v_cache, const int64_t *block_tables,
                               const int64_t *context_lens, const int64_t *token_rows, float *out,
                               int num_seqs, int max_blocks, int num_heads, int num_kv_heads,
                               int head_dim, int block_size, float scale, int num_threads) {
    attend_fn attend = head_dim == 64    ? attend_f16_64
                       : head_dim == 128 ? attend_f16_128
                                         : attend_f16_any;
    return paged_decode(attend, query, k_cache, v_cache, block_tables, context_lens, token_rows,
                        out, num_seqs, max_blocks, num_heads, num_kv_heads, head_dim, block_size,
                        scale, num_threads);
}
#endif

/* 1 when this build has paged_decode_attention_f16, else 0. */
int paged_decode_has_f16(void) { return HAVE_F16; }

int paged_decode_attention(const float *query, const void *k_cache, const void *v_cache,
                           const int64_t *block_tables, const int64_t *context_lens,
                           const int64_t *token_rows, float *out, int num_seqs, int max_blocks,
                           int num_heads, int num_kv_heads, int head_dim, int block_size,
                           float scale, int half, int num_threads) {
    if (!half)
        return paged_decode_attention_f32(query, (const float *)k_cache, (const float *)v_cache,
                                          block_tables, context_lens, token_rows, out, num_seqs,
                                          max_blocks, num_heads, num_kv_heads, head_dim,
                                          block_size, scale, num_threads);
#if HAVE_F16
    return paged_decode_attention_f16(query, (const uint16_t *)k_cache, (const uint16_t *)v_cache,
                                      block_tables, context_lens, token_rows, out, num_seqs,
                                      max_blocks, num_heads, num_kv_heads, head_dim, block_size,
                                      scale, num_threads);
#else
    return 3;
#endif
}
