/* Fused float32 elementwise layers: one pass over memory and one call where torch needs five to
 * nine ops (each a dispatch, an allocation and a pass over the activations).
 *   rmsnorm_f32:      out = x / sqrt(mean(x^2) + eps) * weight                       per row
 *   add_rmsnorm_f32:  x += residual (in place), then out = rmsnorm(x)                per row
 *   silu_mul_f32:     out[r, c] = silu(gate_up[r, c]) * gate_up[r, cols + c]        (SwiGLU)
 *   rotary_f32:       RoPE with the two halves of each head paired (Llama's rotate_half)
 *   exp_f32:          out = exp(x), the approximation the kernels use (exp_approx.h)
 * Rows are independent: results do not depend on the batch. Every build (AVX2, AVX-512) computes
 * the same bits: sums go through lane_sum.h, exp through exp_approx.h.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "decode_parts.h"
#include "exp_approx.h"
#include "lane_sum.h"

#define PARALLEL_MIN_ELEMENTS 65536

static inline __attribute__((always_inline)) void norm_row(const float *restrict x,
                                                           const float *restrict weight,
                                                           int64_t cols, float eps,
                                                           float *restrict out) {
    const float sum = lane_dot(x, x, cols);
    const float inv = 1.0f / sqrtf(sum / (float)cols + eps);
    for (int64_t c = 0; c < cols; c++) out[c] = x[c] * inv * weight[c];
}

void rmsnorm_f32(const float *x, const float *weight, int64_t rows, int64_t cols, float eps,
                 float *out, int num_threads) {
    const int threads = rows * cols >= PARALLEL_MIN_ELEMENTS ? num_threads : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) norm_row(x + r * cols, weight, cols, eps, out + r * cols);
}

void add_rmsnorm_f32(float *x, const float *residual, const float *weight, int64_t rows,
                     int64_t cols, float eps, float *out, int num_threads) {
    const int threads = rows * cols >= PARALLEL_MIN_ELEMENTS ? num_threads : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * cols;
        const float *rr = residual + r * cols;
        for (int64_t c = 0; c < cols; c++) xr[c] += rr[c];
        norm_row(xr, weight, cols, eps, out + r * cols);
    }
}

void silu_mul_f32(const float *gate_up, int64_t rows, int64_t cols, float *out, int num_threads) {
    const int threads = rows * cols >= PARALLEL_MIN_ELEMENTS ? num_threads : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * cols;
        const float *up = gate + cols;
        float *o = out + r * cols;
        for (int64_t c = 0; c < cols; c++) {
            const float g = gate[c];
            o[c] = g / (1.0f + exp_approx(-g)) * up[c];
        }
    }
}

/* x: tokens x heads x head_dim with rows token_stride floats apart (a view into the fused QKV
 * projection) -> out, contiguous. cos, sin: [tokens, head_dim / 2] for each token's position. */
void rotary_f32(const float *x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t token_stride,
                const float *cos, const float *sin, float *out, int num_threads) {
    const int64_t half = head_dim / 2;
    const int threads = tokens * heads * head_dim >= PARALLEL_MIN_ELEMENTS ? num_threads : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + t * half;
        const float *s = sin + t * half;
        for (int64_t h = 0; h < heads; h++) {
            const float *a = x + t * token_stride + h * head_dim;
            float *o = out + (t * heads + h) * head_dim;
            for (int64_t i = 0; i < half; i++) {
                o[i] = a[i] * c[i] - a[i + half] * s[i];
                o[i + half] = a[i + half] * c[i] + a[i] * s[i];
            }
        }
    }
}

/* The kernels' exp over n values, for testing its accuracy. */
void exp_f32(const float *x, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = exp_approx(x[i]);
}
