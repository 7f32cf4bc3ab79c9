/* The kernels decode_fused.c and decoder_layers.c compose, declared once here and included by the
 * files that define them too, so a changed signature fails the build instead of corrupting a
 * call. */
#ifndef ZIGGURAT_DECODE_PARTS_H
#define ZIGGURAT_DECODE_PARTS_H
#include <stdint.h>

/* int8_rows.c */
void quantize_rows_s8(const float *x, int64_t rows, int64_t cols, int64_t x_stride,
                      const float *inv_smoothing, int8_t *q, float *scales, int num_threads);
void quantize_rows_u8(const float *x, int64_t rows, int64_t cols, int64_t x_stride,
                      const float *inv_smoothing, uint8_t *q, float *scales, int num_threads);

/* elementwise.c */
void rmsnorm_f32(const float *x, const float *weight, int64_t rows, int64_t cols, float eps,
                 float *out, int num_threads);
void add_rmsnorm_f32(float *x, const float *residual, const float *weight, int64_t rows,
                     int64_t cols, float eps, float *out, int num_threads);
void silu_mul_f32(const float *gate_up, int64_t rows, int64_t cols, float *out, int num_threads);
void rotary_f32(const float *x, int64_t tokens, int64_t heads, int64_t head_dim,
                int64_t token_stride, const float *cos, const float *sin, float *out,
                int num_threads);

/* paged_decode.c */
int write_kv_cache(const float *key, int64_t key_stride, const float *value, int64_t value_stride,
                   const int64_t *slot_mapping, int64_t num_tokens, int64_t floats, void *k_cache,
                   void *v_cache, int half);
int paged_decode_attention_f32(const float *query, const float *k_cache, const float *v_cache,
                               const int64_t *block_tables, const int64_t *context_lens,
                               const int64_t *token_rows, float *out, int num_seqs,
                               int max_blocks, int num_heads, int num_kv_heads, int head_dim,
                               int block_size, float scale, int num_threads);
/* Defined only in builds where paged_decode_has_f16() returns 1. */
int paged_decode_attention_f16(const float *query, const uint16_t *k_cache,
                               const uint16_t *v_cache, const int64_t *block_tables,
                               const int64_t *context_lens, const int64_t *token_rows, float *out,
                               int num_seqs, int max_blocks, int num_heads, int num_kv_heads,
                               int head_dim, int block_size, float scale, int num_threads);
int paged_decode_has_f16(void);
/* paged_decode_attention_f32 (half 0) or _f16 (half 1); 3 where this build has no half cache. */
int paged_decode_attention(const float *query, const void *k_cache, const void *v_cache,
                           const int64_t *block_tables, const int64_t *context_lens,
                           const int64_t *token_rows, float *out, int num_seqs, int max_blocks,
                           int num_heads, int num_kv_heads, int head_dim, int block_size,
                           float scale, int half, int num_threads);

/* decode_fused.c */
int int8_linear_f32(const float *x, int64_t M, int64_t K, int64_t x_stride,
                    const float *inv_smoothing, int64_t N, const int8_t *packed,
                    const int32_t *offset, const float *col_scale, const float *bias,
                    float *out, int num_threads);
int rope_write_kv_f32(const float *qkv, int64_t tokens, int64_t token_stride, int64_t heads,
                      int64_t kv_heads, int64_t head_dim, const float *cos, const float *sin,
                      float *q_out, const int64_t *slot_mapping, void *k_cache, void *v_cache,
                      int half, int num_threads);

#endif
