/* Temperature sampling of float32 logit rows: per row, the token drawn by inverse CDF from
 * softmax(logits / temperature), with min_p applied, for one uniform number.
 *
 *   sample_rows_f32: token[r] for rows r of logits [rows, vocab] (contiguous)
 *   argmax_rows_f32: the greedy token of each row, the first of its largest logits
 *
 * torch needs a pass per op (divide, max, subtract, exp, cumsum, search), and its cumsum is one
 * serial chain of additions. Here a row is read twice: once for its maximum, once to compute
 * its weights exp((x - max) / T) a block of SAMPLE_BLOCK tokens at a time, each block summed in
 * lane_sum.h's fixed lane order (vectorised, and the same bits at every vector width) and the
 * block totals added up in double. The uniform's share of the total then falls into one block,
 * whose weights are computed again and scanned in order. Weights use exp_approx.h, so the
 * AVX-512 and AVX2 builds (and NEON, whose multiply-adds fuse alike) compute the same bits and
 * choose the same tokens. The scalar x86 build has no fused multiply-add: a weight may differ
 * in its last bit, which changes a token only for a uniform within a rounding of the edge of
 * its interval.
 *
 * The chosen token always has a non-zero weight: a -inf logit (a mask) or a token below min_p
 * is never drawn, whatever the uniform in [0, 1). The exponent is (x - max) / T, not
 * x / T - max / T: a tiny T sends the others to -inf but keeps the maximum's weight exp(0) = 1
 * (no inf - inf). A row without a finite logit has nothing to draw from and gets its last
 * token, as the torch path gives it. Rows are independent and split over threads: a token
 * depends only on its own row, whatever the batch and the thread count.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "exp_approx.h"
#include "lane_sum.h"

/* Tokens per block: 16 elements in each of the 16 lanes; 192 blocks for a 49,152 vocabulary. */
#define SAMPLE_BLOCK 256
#define PARALLEL_MIN_ELEMENTS 65536

int64_t sample_block_size(void) { return SAMPLE_BLOCK; }

static inline __attribute__((always_inline)) float row_max(const float *restrict x, int64_t n) {
    float max = x[0];
    for (int64_t i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    return max;
}

/* With -ffinite-math-only the compiler may fold a comparison with -INFINITY; the bits cannot be. */
static inline int is_minus_inf(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits == 0xff800000u;
}

/* The unnormalised probabilities of n <= SAMPLE_BLOCK tokens (the row maximum's is 1). */
static inline __attribute__((always_inline)) void block_weights(const float *restrict x, int64_t n,
                                                                float max, float temperature,
                                                                float min_p, float *restrict w) {
    for (int64_t i = 0; i < n; i++) {
        const float weight = exp_approx((x[i] - max) / temperature);
        w[i] = weight < min_p ? 0.0f : weight;
    }
}

/* `mass_before[b]`: the weight of the blocks before block b (scratch of one slot per block). */
static int64_t sample_row(const float *restrict x, int64_t vocab, float temperature, float min_p,
                          double uniform, double *restrict mass_before) {
    const float max = row_max(x, vocab);
    if (is_minus_inf(max)) return vocab - 1;
    const int64_t blocks = (vocab + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK;
    float w[SAMPLE_BLOCK];
    double total = 0.0;
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t start = b * SAMPLE_BLOCK;
        const int64_t n = vocab - start < SAMPLE_BLOCK ? vocab - start : SAMPLE_BLOCK;
        block_weights(x + start, n, max, temperature, min_p, w);
        mass_before[b] = total;
        total += (double)lane_sum(w, n);
    }
    /* The first block whose end lies beyond target: it ends beyond its start, so it holds a
     * non-zero weight. One does, as u < 1 and the product is rounded to nearest: uniform * total
     * stays below total. None does only where the weights are NaN (a NaN logit): nothing to draw
     * from, the last token as for a row without a finite logit. */
    const double target = uniform * total;
    int64_t chosen = -1;
    for (int64_t b = 0; b < blocks && chosen < 0; b++) {
        const double end = b + 1 < blocks ? mass_before[b + 1] : total;
        if (end > mass_before[b] && end > target) chosen = b;
    }
    if (chosen < 0) return vocab - 1;
    const int64_t start = chosen * SAMPLE_BLOCK;
    const int64_t n = vocab - start < SAMPLE_BLOCK ? vocab - start : SAMPLE_BLOCK;
    block_weights(x + start, n, max, temperature, min_p, w);
    /* target >= mass_before[chosen], so the difference is >= 0, and the first token whose
     * running sum passes it has a weight > 0. This in-order sum can fall short of the block's
     * lane sum by a rounding: then the block's last token with a weight is taken. */
    const double remaining = target - mass_before[chosen];
    double running = 0.0;
    int64_t last_weighted = 0;
    for (int64_t i = 0; i < n; i++) {
        if (w[i] > 0.0f) {
            running += (double)w[i];
            last_weighted = i;
            if (running > remaining) return start + i;
        }
    }
    return start + last_weighted;
}

/* logits [rows, vocab]; temperature [rows] (> 0); min_p [rows] or NULL (none); uniforms [rows]
 * in [0, 1); scratch: rows * ceil(vocab / SAMPLE_BLOCK) doubles; out [rows]. */
void sample_rows_f32(const float *logits, int64_t rows, int64_t vocab, const float *temperature,
                     const float *min_p, const double *uniforms, double *scratch, int64_t *out,
                     int num_threads) {
    const int64_t blocks = (vocab + SAMPLE_BLOCK - 1) / SAMPLE_BLOCK;
    const int threads = rows > 1 && rows * vocab >= PARALLEL_MIN_ELEMENTS ? num_threads : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        out[r] = sample_row(logits + r * vocab, vocab, temperature[r],
                            min_p == NULL ? 0.0f : min_p[r], uniforms[r], scratch + r * blocks);
    }
}

/* Greedy decoding's argmax, as torch.argmax picks it (the first of equal maxima) but in two
 * vectorised passes: the row maximum, then the first block of ARGMAX_BLOCK logits that holds
 * it, scanned in order. torch's argmax carries an index through a serial reduction, many
 * times slower than its max over a vocabulary row (docs/benchmarks.md, session 10). */
#define ARGMAX_BLOCK 64

static int64_t argmax_row(const float *restrict x, int64_t vocab) {
    const float max = row_max(x, vocab);
    int64_t start = 0;
    for (; start + ARGMAX_BLOCK <= vocab; start += ARGMAX_BLOCK) {
        int found = 0;
        for (int i = 0; i < ARGMAX_BLOCK; i++) found |= x[start + i] == max;
        if (found) break;
    }
    for (int64_t i = start; i < vocab; i++) {
        if (x[i] == max) return i;
    }
    return vocab - 1; /* not reached: the maximum is one of the row's logits (NaN aside) */
}

/* logits [rows, vocab] (vocab >= 1); out [rows]. */
void argmax_rows_f32(const float *logits, int64_t rows, int64_t vocab, int64_t *out,
                     int num_threads) {
    const int threads = rows > 1 && rows * vocab >= PARALLEL_MIN_ELEMENTS ? num_threads : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) out[r] = argmax_row(logits + r * vocab, vocab);
}
