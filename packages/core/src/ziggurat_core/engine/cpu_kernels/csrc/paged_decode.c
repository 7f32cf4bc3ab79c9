/* Paged attention on CPU for every new token of a step: each query row against the first
 * context_lens[i] cached keys and values of its sequence, read in place through the block table.
 * Replaces "gather the blocks into a contiguous buffer, then run SDPA", which moved every cached
 * byte three times per layer.
 *
 * Layouts (contiguous):
 *   query   [num_tokens, num_heads, head_dim] float32; token_rows gives each row's query row
 *   k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim]: float32
 *           (paged_decode_attention_f32) or IEEE half (paged_decode_attention_f16, in builds
 *           where paged_decode_has_f16() returns 1)
 *   block_tables [num_rows, max_blocks] (int64), context_lens [num_rows] (int64)
 *   out     [num_tokens, num_heads, head_dim] float32; only the rows in token_rows are written
 * Query heads h = kv_head * group + g share kv head kv_head (GQA). A decode row is one work item
 * (attend_seq), so each cache block is read front to back as one contiguous run of memory (all
 * kv heads of its tokens): decode attention is bound by memory, and the hardware prefetcher
 * follows such runs where it would miss scattered per-head slices. Consecutive rows that read
 * the same block table (a prefill chunk, one row per new token) are instead attended in blocks
 * of PREFILL_BLOCK_ROWS rows per kv head (paged_prefill.c), which read and widen each cached
 * key and value once per block rather than once per row and score a vector of keys at a time;
 * a row's result is bitwise the same either way, so how a step's rows fall into blocks changes
 * only the speed.
 *
 * A half cache halves the bytes read. Each cached token (all its kv heads) is widened to float32
 * into a small per-thread buffer that stays in L1, and the float32 code then runs on that buffer
 * (attend_row_x86.h widens into registers instead):
 * all arithmetic is float32, the same as the float32 kernel on the upcast cache. (GCC 12 does not
 * vectorise loops over _Float16 loads without AVX512-FP16, hence the explicit F16C / AVX-512
 * conversions.)
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "attend_row_x86.h"
#include "decode_parts.h"
#include "paged_common.h"

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
    for (int h = 0; h < num_heads; h++) softmax_row(scores + h * context_len, context_len);
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
/* head_dim 64 through attend_row_x86 where the build has it (same bits, fewer instructions). */
#if defined(HAVE_ATTEND_ROW_X86)
#define SPECIALISE_64(NAME, HALF)                                                                \
    static void NAME(const float *query, const void *k_cache, const void *v_cache,               \
                     const int64_t *table, int64_t context_len, int64_t q_row, float *out,       \
                     int num_heads, int num_kv_heads, int head_dim, int block_size, float scale, \
                     float *scores, float *token_buf) {                                          \
        (void)head_dim;                                                                          \
        (void)token_buf;                                                                         \
        attend_row_x86(query, k_cache, v_cache, table, context_len, q_row, out, num_heads,       \
                       num_kv_heads, block_size, scale, HALF, scores);                           \
    }
#else
#define SPECIALISE_64(NAME, HALF) SPECIALISE(NAME, HALF, 64)
#endif
SPECIALISE_64(attend_f32_64, 0)
SPECIALISE(attend_f32_128, 0, 128)
SPECIALISE(attend_f32_any, 0, 0)
#if HAVE_F16
SPECIALISE_64(attend_f16_64, 1)
SPECIALISE(attend_f16_128, 1, 128)
SPECIALISE(attend_f16_any, 1, 0)
#endif

typedef void (*attend_fn)(const float *, const void *, const void *, const int64_t *, int64_t,
                          int64_t, float *, int, int, int, int, float, float *, float *);

/* One work item: a single row (kv_head < 0), attended by attend_seq over all its heads, or up
 * to PREFILL_BLOCK_ROWS rows [first, first + rows) that read the same block table, attended by
 * paged_prefill_block for one kv head. */
typedef struct {
    int first, rows, kv_head;
    int64_t cost;
} work_item;

static int costlier_first(const void *a, const void *b) {
    const int64_t x = ((const work_item *)a)->cost, y = ((const work_item *)b)->cost;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Whether row r reads the same cache blocks as row `first` (a later row of the same prefill
 * chunk; the grouping is only about speed, as a row's result is the same either way). */
static int same_blocks(const int64_t *block_tables, int max_blocks, const int64_t *context_lens,
                       int first, int r, int block_size) {
    const int64_t used = (context_lens[r] + block_size - 1) / block_size;
    return memcmp(block_tables + (int64_t)first * max_blocks,
                  block_tables + (int64_t)r * max_blocks, sizeof(int64_t) * (size_t)used) == 0;
}

/* Every row of the step, one call: consecutive rows that read the same block table (a prefill
 * chunk) are attended in blocks of rows per kv head, every other row alone; the items run in
 * parallel, the costliest first. `grouped` 0 attends every row alone (the reference the tests
 * compare the blocks with). Returns 0 on success, 2 if scratch memory ran out. */
static int paged_rows(attend_fn attend, const float *query, const void *k_cache,
                      const void *v_cache, const int64_t *block_tables,
                      const int64_t *context_lens, const int64_t *token_rows, float *out,
                      int num_rows, int max_blocks, int num_heads, int num_kv_heads,
                      int head_dim, int block_size, float scale, int half, int grouped,
                      int num_threads) {
    int64_t longest = 1;
    for (int s = 0; s < num_rows; s++)
        longest = context_lens[s] > longest ? context_lens[s] : longest;
    work_item *items = (work_item *)malloc(sizeof(work_item) * ((size_t)num_rows * (size_t)num_kv_heads + 1));
    if (items == NULL) return 2;
    int num_items = 0, blocked = 0;
    for (int first = 0; first < num_rows;) {
        int end = first + 1;
        while (grouped && end < num_rows &&
               same_blocks(block_tables, max_blocks, context_lens, first, end, block_size))
            end++;
        if (end - first == 1) {
            items[num_items++] = (work_item){first, 1, -1, context_lens[first] * num_kv_heads};
        } else {
            blocked = 1;
            for (int b = first; b < end; b += PREFILL_BLOCK_ROWS) {
                const int rows = end - b < PREFILL_BLOCK_ROWS ? end - b : PREFILL_BLOCK_ROWS;
                int64_t block_longest = 1;
                for (int r = b; r < b + rows; r++)
                    block_longest = context_lens[r] > block_longest ? context_lens[r] : block_longest;
                for (int kvh = 0; kvh < num_kv_heads; kvh++)
                    items[num_items++] = (work_item){b, rows, kvh, block_longest * rows};
            }
        }
        first = end;
    }
    qsort(items, (size_t)num_items, sizeof(work_item), costlier_first);
    size_t scratch_floats = (size_t)num_heads * (size_t)longest +
                            (size_t)num_kv_heads * (size_t)head_dim;
    const int group = num_heads / num_kv_heads;
    const size_t block_floats =
        (size_t)paged_prefill_scratch_floats(PREFILL_BLOCK_ROWS, group, longest, head_dim);
    if (blocked && block_floats > scratch_floats) scratch_floats = block_floats;
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
        for (int i = 0; i < num_items; i++) {
            if (scratch == NULL) continue;
            const work_item item = items[i];
            if (item.kv_head < 0)
                attend(query, k_cache, v_cache, block_tables + (int64_t)item.first * max_blocks,
                       context_lens[item.first], token_rows[item.first], out, num_heads,
                       num_kv_heads, head_dim, block_size, scale, scratch,
                       scratch + (size_t)num_heads * (size_t)longest);
            else
                paged_prefill_block(query, k_cache, v_cache,
                                    block_tables + (int64_t)item.first * max_blocks,
                                    context_lens + item.first, token_rows + item.first, item.rows,
                                    item.kv_head, out, num_heads, num_kv_heads, head_dim,
                                    block_size, scale, half, scratch);
        }
        free(scratch);
    }
    free(items);
    return failed;
}

static attend_fn row_kernel(int half, int head_dim) {
#if HAVE_F16
    if (half) return head_dim == 64 ? attend_f16_64 : head_dim == 128 ? attend_f16_128 : attend_f16_any;
#endif
    (void)half;
    return head_dim == 64 ? attend_f32_64 : head_dim == 128 ? attend_f32_128 : attend_f32_any;
}

int paged_decode_attention_f32(const float *query, const float *k_cache, const float *v_cache,
                               const int64_t *block_tables, const int64_t *context_lens,
                               const int64_t *token_rows, float *out, int num_seqs,
                               int max_blocks, int num_heads, int num_kv_heads, int head_dim,
                               int block_size, float scale, int num_threads) {
    return paged_rows(row_kernel(0, head_dim), query, k_cache, v_cache, block_tables,
                      context_lens, token_rows, out, num_seqs, max_blocks, num_heads,
                      num_kv_heads, head_dim, block_size, scale, 0, 1, num_threads);
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
    return paged_rows(row_kernel(1, head_dim), query, k_cache, v_cache, block_tables,
                      context_lens, token_rows, out, num_seqs, max_blocks, num_heads,
                      num_kv_heads, head_dim, block_size, scale, 1, 1, num_threads);
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

/* paged_decode_attention with every row attended alone by the one-row kernel, never in blocks:
 * what the tests hold the blocked path to, bit for bit. */
int paged_attention_rows_alone(const float *query, const void *k_cache, const void *v_cache,
                               const int64_t *block_tables, const int64_t *context_lens,
                               const int64_t *token_rows, float *out, int num_rows,
                               int max_blocks, int num_heads, int num_kv_heads, int head_dim,
                               int block_size, float scale, int half, int num_threads) {
#if !HAVE_F16
    if (half) return 3;
#endif
    return paged_rows(row_kernel(half, head_dim), query, k_cache, v_cache, block_tables,
                      context_lens, token_rows, out, num_rows, max_blocks, num_heads,
                      num_kv_heads, head_dim, block_size, scale, half, 0, num_threads);
}
