/* What the paged attention kernels share (paged_decode.c: one query row at a time;
 * paged_prefill.c: blocks of rows of one sequence): the float16 cache conversions, the
 * prefetch of scattered blocks, a cached token read as float32, the per-row softmax, and the
 * blocked kernel's entry point. One copy of each, so the two paths round every value the same way. */
#ifndef ZIGGURAT_PAGED_COMMON_H
#define ZIGGURAT_PAGED_COMMON_H

#include <stdint.h>
#include <string.h>
#include "isa.h"
#include "exp_approx.h"
#include "lane_sum.h"
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(ZIG_ISA_NEON)
/* AArch64 converts between half and float32 in hardware (fcvtl / fcvtn, 4 lanes at a time), in
 * every NEON build: no _Float16 support needed from the compiler. */
#include <arm_neon.h>
#define ZIG_F16_NEON 1
#endif

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


/* The `floats` values from `index` of a cache as float32: in place for a float32 cache, else widened into `buf`.
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

/* Softmax in place over one row of n scores, as every paged path computes it: the max, exp
 * of the differences, then one multiply by the inverse of their lane sum. */
static inline __attribute__((always_inline)) void softmax_row(float *restrict s, int64_t n) {
    float m = s[0];
    for (int64_t t = 1; t < n; t++) m = s[t] > m ? s[t] : m;
    for (int64_t t = 0; t < n; t++) s[t] = exp_approx(s[t] - m);
    const float inv = 1.0f / lane_sum(s, n);
    for (int64_t t = 0; t < n; t++) s[t] *= inv;
}

/* paged_prefill.c: query rows that read one block table (a prefill chunk's rows), each row's
 * result bitwise what the one-row kernel computes for it. A block's scores (rows x heads of a
 * kv head x context, float32) stay within a core's L2 for contexts of a few thousand tokens. */
#define PREFILL_BLOCK_ROWS 16
int64_t paged_prefill_scratch_floats(int64_t rows, int group, int64_t longest, int head_dim);
void paged_prefill_block(const float *query, const void *k_cache, const void *v_cache,
                         const int64_t *table, const int64_t *context_lens,
                         const int64_t *token_rows, int rows, int kv_head, float *out,
                         int num_heads, int num_kv_heads, int head_dim, int block_size,
                         float scale, int half, float *scratch);

#endif
