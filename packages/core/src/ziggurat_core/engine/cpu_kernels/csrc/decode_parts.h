/* The kernels decode_fused.c composes, declared once here and included by the files that define
 * them too, so a changed signature fails the build instead of corrupting a call. */
#ifndef ZIGGURAT_DECODE_PARTS_H
#define ZIGGURAT_DECODE_PARTS_H
#include <stdint.h>

/* int8_rows.c */
void quantize_rows_s8(const float *x, int64_t rows, int64_t cols, int64_t x_stride,
                      const float *inv_smoothing, int8_t *q, float *scales, int num_threads);
void quantize_rows_u8(const float *x, int64_t rows, int64_t cols, int64_t x_stride,
                      const float *inv_smoothing, uint8_t *q, float *scales, int num_threads);

/* elementwise.c */
void rotary_f32(const float *x, int64_t tokens, int64_t heads, int64_t head_dim,
                int64_t token_stride, const float *cos, const float *sin, float *out,
                int num_threads);

/* paged_decode.c */
int write_kv_cache(const float *key, int64_t key_stride, const float *value, int64_t value_stride,
                   const int64_t *slot_mapping, int64_t num_tokens, int64_t floats, void *k_cache,
                   void *v_cache, int half);

#endif
