/* A Llama-family decoder's layers in one call (models/llama.py): at one sequence a step's work
 * per layer is a few short kernels, and the Python around them (module calls, argument checks,
 * tensor allocations, a ctypes round trip each) cost as much as streaming the layer's weights.
 * The call is the exact composition of the kernels exported elsewhere in this library, in the
 * order LlamaDecoderLayer.forward runs them with the same arguments, so its results are bitwise
 * those of the Python path:
 *
 *   per layer: (add_)rmsnorm_f32 -> int8_linear_f32 (qkv) -> rope_write_kv_f32 ->
 *              paged_decode_attention -> int8_linear_f32 (o) -> add_rmsnorm_f32 ->
 *              int8_linear_f32 (gate_up) -> silu_mul_f32 -> int8_linear_f32 (down)
 *
 * `a` and `b` are [tokens, hidden] float32. On entry `a` holds the embeddings (the first
 * layer's input, which is also its residual). On return `a` holds the last layer's MLP output
 * and `b` the residual stream before it: the caller's final norm adds the two, as after the
 * Python layers. Within a layer the attention output goes to `b` and the residual add there
 * makes it the residual, then the MLP output goes to `a`: every layer starts with the same roles.
 *
 * `workspace` holds decoder_layers_workspace_floats() floats. Returns 0, the status of the first
 * kernel that failed, or 1 for an unusable shape.
 */
#include <stdint.h>
#include <string.h>

#include "decode_parts.h"

/* One int8 linear layer as int8_linear_f32 takes it (`inv_smoothing` and `bias` may be NULL). */
typedef struct {
    const int8_t *packed;
    const int32_t *offset;
    const float *col_scale;
    const float *bias;
    const float *inv_smoothing;
    int64_t in_features, out_features;
} int8_linear_weights;

typedef struct {
    const float *input_norm, *post_attention_norm;
    float input_eps, post_attention_eps;
    int8_linear_weights qkv, o, gate_up, down;
    void *k_cache, *v_cache; /* [num_blocks, block_size, kv_heads, head_dim] float32 or half */
} decoder_layer_weights;

/* The scratch activations of a step: normed [hidden], qkv, query and attention output [heads *
 * head_dim each], gate_up [2 * intermediate], act [intermediate], per token. */
int64_t decoder_layers_workspace_floats(int64_t tokens, int64_t hidden, int64_t heads,
                                        int64_t kv_heads, int64_t head_dim,
                                        int64_t intermediate) {
    const int64_t q = heads * head_dim, kv = kv_heads * head_dim;
    return tokens * (hidden + (q + 2 * kv) + 2 * q + 3 * intermediate);
}

static int linear(const int8_linear_weights *w, const float *x, int64_t tokens, float *out,
                  int num_threads) {
    return int8_linear_f32(x, tokens, w->in_features, w->in_features, w->inv_smoothing,
                           w->out_features, w->packed, w->offset, w->col_scale, w->bias, out,
                           num_threads);
}

int decoder_layers_f32(const decoder_layer_weights *layers, int64_t num_layers, int64_t tokens,
                       int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim,
                       int64_t intermediate, float *a, float *b, const float *cos,
                       const float *sin, const int64_t *slot_mapping, const int64_t *block_tables,
                       const int64_t *context_lens, const int64_t *token_rows, int64_t num_rows,
                       int64_t max_blocks, int64_t block_size, float scale, int half,
                       float *workspace, int num_threads) {
    if (tokens <= 0 || hidden <= 0 || heads <= 0 || kv_heads <= 0 || head_dim <= 0 ||
        intermediate <= 0)
        return 1;
    const int64_t q = heads * head_dim, kv = kv_heads * head_dim;
    float *normed = workspace;
    float *qkv = normed + tokens * hidden;
    float *query = qkv + tokens * (q + 2 * kv);
    float *attn = query + tokens * q;
    float *gate_up = attn + tokens * q;
    float *act = gate_up + tokens * 2 * intermediate;
    int status = 0;
    for (int64_t l = 0; l < num_layers && status == 0; l++) {
        const decoder_layer_weights *w = &layers[l];
        /* On entry `a` holds the new activation (the embeddings, or the last MLP output) and
         * `b` the residual (none before the first layer); the sum becomes the residual. */
        if (l == 0)
            rmsnorm_f32(a, w->input_norm, tokens, hidden, w->input_eps, normed, num_threads);
        else
            add_rmsnorm_f32(a, b, w->input_norm, tokens, hidden, w->input_eps, normed,
                            num_threads);
        if ((status = linear(&w->qkv, normed, tokens, qkv, num_threads)) != 0) break;
        if ((status = rope_write_kv_f32(qkv, tokens, q + 2 * kv, heads, kv_heads, head_dim, cos,
                                        sin, query, slot_mapping, w->k_cache, w->v_cache, half,
                                        num_threads)) != 0)
            break;
        if ((status = paged_decode_attention(query, w->k_cache, w->v_cache, block_tables,
                                             context_lens, token_rows, attn, (int)num_rows,
                                             (int)max_blocks, (int)heads, (int)kv_heads,
                                             (int)head_dim, (int)block_size, scale, half,
                                             num_threads)) != 0)
            break;
        if ((status = linear(&w->o, attn, tokens, b, num_threads)) != 0) break;
        /* b = o + a is the residual now; the MLP output goes to `a`, the roles of the next
         * layer's entry. */
        add_rmsnorm_f32(b, a, w->post_attention_norm, tokens, hidden, w->post_attention_eps,
                        normed, num_threads);
        if ((status = linear(&w->gate_up, normed, tokens, gate_up, num_threads)) != 0) break;
        silu_mul_f32(gate_up, tokens, intermediate, act, num_threads);
        if ((status = linear(&w->down, act, tokens, a, num_threads)) != 0) break;
    }
    return status;
}
