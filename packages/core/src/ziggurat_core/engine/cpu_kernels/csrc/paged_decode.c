/* Paged decode attention on CPU: one new query token per sequence against its cached keys and
 * values, read in place through the block table. Replaces "gather the blocks into a contiguous
 * buffer, then run SDPA", which moved every cached byte three times per layer.
 *
 * Layouts (float32, contiguous):
 *   query   [num_tokens, num_heads, head_dim]; rows of decode tokens are given by token_rows
 *   k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim]
 *   block_tables [num_seqs, max_blocks] (int64), context_lens [num_seqs] (int64)
 *   out     [num_tokens, num_heads, head_dim]; only the decode rows are written
 * Query heads h = kv_head * group + g share kv head kv_head (GQA). One work item is one
 * sequence, so each cache block is read front to back as one contiguous run of memory (all kv
 * heads of its tokens): decode attention is bound by memory, and the hardware prefetcher
 * follows such runs where it would miss scattered per-head slices.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Blocks are scattered in memory, so the prefetcher cannot guess the next one: ask for the next
 * block's token while computing on this block's. */
static inline void prefetch_token(const float *token, int64_t floats) {
    for (int64_t f = 0; f < floats; f += 16) __builtin_prefetch(token + f, 0, 3);
}

static inline __attribute__((always_inline)) void attend_seq(
    const float *restrict query, const float *restrict k_cache, const float *restrict v_cache,
    const int64_t *restrict table, int64_t context_len, int64_t q_row, float *restrict out,
    int num_heads, int num_kv_heads, int head_dim, int block_size, float scale,
    float *restrict scores /* [num_heads * context_len] */) {
    const int group = num_heads / num_kv_heads;
    const int64_t token_stride = (int64_t)num_kv_heads * head_dim;
    const int64_t block_stride = (int64_t)block_size * token_stride;
    const float *q = query + q_row * num_heads * head_dim;

    for (int64_t t0 = 0; t0 < context_len; t0 += block_size) {
        const float *k = k_cache + table[t0 / block_size] * block_stride;
        const int64_t n = context_len - t0 < block_size ? context_len - t0 : block_size;
        const float *k_next = t0 + block_size < context_len ? k_cache + table[t0 / block_size + 1] * block_stride : NULL;
        for (int64_t i = 0; i < n; i++) {
            if (k_next != NULL) prefetch_token(k_next + i * token_stride, token_stride);
            for (int h = 0; h < num_heads; h++) {
                const float *kv = k + i * token_stride + (int64_t)(h / group) * head_dim;
                const float *qh = q + (int64_t)h * head_dim;
                float dot = 0.0f;
                for (int d = 0; d < head_dim; d++) dot += qh[d] * kv[d];
                scores[h * context_len + t0 + i] = dot * scale;
            }
        }
    }
    for (int h = 0; h < num_heads; h++) {
        float *s = scores + h * context_len;
        float m = s[0];
        for (int64_t t = 1; t < context_len; t++) m = s[t] > m ? s[t] : m;
        float sum = 0.0f;
        for (int64_t t = 0; t < context_len; t++) {
            s[t] = expf(s[t] - m);
            sum += s[t];
        }
        const float inv = 1.0f / sum;
        for (int64_t t = 0; t < context_len; t++) s[t] *= inv;
    }
    float *o = out + q_row * num_heads * head_dim;
    for (int i = 0; i < num_heads * head_dim; i++) o[i] = 0.0f;
    for (int64_t t0 = 0; t0 < context_len; t0 += block_size) {
        const float *v = v_cache + table[t0 / block_size] * block_stride;
        const int64_t n = context_len - t0 < block_size ? context_len - t0 : block_size;
        const float *v_next = t0 + block_size < context_len ? v_cache + table[t0 / block_size + 1] * block_stride : NULL;
        for (int64_t i = 0; i < n; i++) {
            if (v_next != NULL) prefetch_token(v_next + i * token_stride, token_stride);
            for (int h = 0; h < num_heads; h++) {
                const float *vv = v + i * token_stride + (int64_t)(h / group) * head_dim;
                const float p = scores[h * context_len + t0 + i];
                float *oh = o + (int64_t)h * head_dim;
                for (int d = 0; d < head_dim; d++) oh[d] += p * vv[d];
            }
        }
    }
}

/* The same code with head_dim a compile-time constant, so the inner loops unroll and vectorise. */
#define SPECIALISE(DIM)                                                                         \
    static void attend_seq_##DIM(const float *query, const float *k_cache, const float *v_cache, \
                                 const int64_t *table, int64_t context_len, int64_t q_row,      \
                                 float *out, int num_heads, int num_kv_heads, int block_size,   \
                                 float scale, float *scores) {                                  \
        attend_seq(query, k_cache, v_cache, table, context_len, q_row, out, num_heads,          \
                   num_kv_heads, DIM, block_size, scale, scores);                               \
    }
SPECIALISE(64)
SPECIALISE(128)

/* Returns 0 on success, 2 if scratch memory ran out. */
int paged_decode_attention_f32(const float *query, const float *k_cache, const float *v_cache,
                               const int64_t *block_tables, const int64_t *context_lens,
                               const int64_t *token_rows, float *out, int num_seqs,
                               int max_blocks, int num_heads, int num_kv_heads, int head_dim,
                               int block_size, float scale, int num_threads) {
    int64_t longest = 1;
    for (int s = 0; s < num_seqs; s++) longest = context_lens[s] > longest ? context_lens[s] : longest;
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = (float *)malloc(sizeof(float) * (size_t)num_heads * (size_t)longest);
        if (scores == NULL) {
#pragma omp atomic write
            failed = 2;
        }
        /* Every thread must reach the worksharing loop, even one without scratch memory. */
#pragma omp for schedule(dynamic, 1)
        for (int s = 0; s < num_seqs; s++) {
            if (scores == NULL) continue;
            const int64_t *table = block_tables + (int64_t)s * max_blocks;
            if (head_dim == 64)
                attend_seq_64(query, k_cache, v_cache, table, context_lens[s], token_rows[s], out,
                              num_heads, num_kv_heads, block_size, scale, scores);
            else if (head_dim == 128)
                attend_seq_128(query, k_cache, v_cache, table, context_lens[s], token_rows[s], out,
                               num_heads, num_kv_heads, block_size, scale, scores);
            else
                attend_seq(query, k_cache, v_cache, table, context_lens[s], token_rows[s], out,
                           num_heads, num_kv_heads, head_dim, block_size, scale, scores);
        }
        free(scores);
    }
    return failed;
}
