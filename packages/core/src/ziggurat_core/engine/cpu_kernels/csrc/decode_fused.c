/* Fused entry points for the decode step, where one new token per sequence makes every
 * kernel call short and the Python around it (argument checks, tensor allocations, one
 * ctypes round trip each) a large share of the step. Each one is the exact composition of
 * kernels exported elsewhere in this library, so its results are bitwise those of calling
 * them one after the other.
 *
 *   int8_linear_f32: a W8A8 linear layer, float32 x [M, K] (row stride x_stride) ->
 *     float32 out [M, N]: quantize_rows_s8/_u8 (int8_rows.c, the variant's input form) into a
 *     scratch buffer, then int8_gemm (int8_gemm.h) over the packed weight.
 *     Returns int8_gemm's status, or 2 when the scratch buffer cannot be allocated.
 *   rope_write_kv_f32: the attention input of a fused QKV projection, qkv [tokens, (heads +
 *     2 * kv_heads) * head_dim] (row stride token_stride): rotary_f32 (elementwise.c) of the
 *     query heads into q_out [tokens, heads, head_dim], of the key heads into a scratch buffer,
 *     then write_kv_cache (paged_decode.c) of those keys and the value heads into their slots.
 *     Returns write_kv_cache's status, or 2 when the scratch buffer cannot be allocated.
 */
#include <stdint.h>
#include <stdlib.h>

#include "decode_parts.h"
#include "int8_gemm.h"

/* Decode-sized inputs fit on the stack; larger ones (prefill chunks) take the heap. */
#define STACK_SCRATCH_BYTES 16384

int int8_linear_f32(const float *x, int64_t M, int64_t K, int64_t x_stride,
                    const float *inv_smoothing, int64_t N, const int8_t *packed,
                    const int32_t *offset, const float *col_scale, const float *bias,
                    float *out, int num_threads) {
    if (M <= 0 || K <= 0 || N <= 0) return 1;
    const size_t q_bytes = (size_t)M * (size_t)K;
    const size_t scale_bytes = (size_t)M * sizeof(float);
    /* The scales go first so that they are aligned for float. */
    _Alignas(64) unsigned char stack[STACK_SCRATCH_BYTES];
    unsigned char *scratch = stack;
    if (scale_bytes + q_bytes > sizeof(stack)) {
        scratch = malloc(scale_bytes + q_bytes);
        if (scratch == NULL) return 2;
    }
    float *row_scale = (float *)scratch;
    void *q = scratch + scale_bytes;
    if (int8_gemm_input_offset() != 0)
        quantize_rows_u8(x, M, K, x_stride, inv_smoothing, (uint8_t *)q, row_scale, num_threads);
    else
        quantize_rows_s8(x, M, K, x_stride, inv_smoothing, (int8_t *)q, row_scale, num_threads);
    const int status =
        int8_gemm(q, row_scale, M, K, N, packed, offset, col_scale, bias, out, num_threads);
    if (scratch != stack) free(scratch);
    return status;
}

int rope_write_kv_f32(const float *qkv, int64_t tokens, int64_t token_stride, int64_t heads,
                      int64_t kv_heads, int64_t head_dim, const float *cos, const float *sin,
                      float *q_out, const int64_t *slot_mapping, void *k_cache, void *v_cache,
                      int half, int num_threads) {
    if (tokens <= 0) return 0;
    const int64_t kv_floats = kv_heads * head_dim;
    const size_t key_bytes = (size_t)tokens * (size_t)kv_floats * sizeof(float);
    _Alignas(64) unsigned char stack[STACK_SCRATCH_BYTES];
    float *keys = (float *)stack;
    if (key_bytes > sizeof(stack)) {
        keys = malloc(key_bytes);
        if (keys == NULL) return 2;
    }
    rotary_f32(qkv, tokens, heads, head_dim, token_stride, cos, sin, q_out, num_threads);
    rotary_f32(qkv + heads * head_dim, tokens, kv_heads, head_dim, token_stride, cos, sin, keys,
               num_threads);
    const int status = write_kv_cache(keys, kv_floats, qkv + heads * head_dim + kv_floats,
                                      token_stride, slot_mapping, tokens, kv_floats, k_cache,
                                      v_cache, half);
    if ((unsigned char *)keys != stack) free(keys);
    return status;
}
