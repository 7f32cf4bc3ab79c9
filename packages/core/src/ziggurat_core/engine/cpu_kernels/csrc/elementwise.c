/* Fused float32 elementwise layers: one pass over memory and one call where torch needs five to
 * nine ops (each a dispatch, an allocation and a pass over the activations).
 *   rmsnorm_f32:      out = x / sqrt(mean(x^2) + eps) * weight                       per row
 *   add_rmsnorm_f32:  x += residual (in place), then out = rmsnorm(x)                per row
 *   silu_mul_f32:     out[r, c] = silu(gate_up[r, c]) * gate_up[r, cols + c]        (SwiGLU)
 * Rows are independent: results do not depend on the batch.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define PARALLEL_MIN_ELEMENTS 65536

static inline __attribute__((always_inline)) void norm_row(const float *restrict x,
                                                           const float *restrict weight,
                                                           int64_t cols, float eps,
                                                           float *restrict out) {
    float sum = 0.0f;
    for (int64_t c = 0; c < cols; c++) sum += x[c] * x[c];
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
            /* Clamped so expf stays finite (-ffast-math assumes no infinities); silu(-80) ~ 0. */
            const float g = fmaxf(gate[c], -80.0f);
            o[c] = g / (1.0f + expf(-g)) * up[c];
        }
    }
}
