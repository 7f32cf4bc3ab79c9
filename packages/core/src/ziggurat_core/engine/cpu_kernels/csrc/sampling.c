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
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

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

/* Top-k / top-p sampling (sample_truncated_rows_f32), with the semantics of the sampler's torch
 * path (`_sample_sorted_prefix`): the weights are the untruncated kernel's (block_weights, the
 * same bits in every SIMD build); candidates are ordered by weight, descending, equal weights
 * by lower token id first; top-k keeps the first k; top-p keeps a token while the mass of the
 * tokens before it is below top_p * (the mass of the top k with top-k, else the row's mass),
 * at least one; the token is drawn by inverse CDF over what both keep, with masses summed in
 * double in that order. A token of zero weight (-inf logit, below min_p) is never a candidate.
 *
 * Sorting the vocabulary would cost far more than the draw. Instead one pass computes the
 * weights and a histogram of them by the high bits of their float representation (the
 * exponent and the top TRUNC_MANTISSA_BITS of the mantissa: for weights in (0, 1] the bits
 * order as the values do, so bin order is weight order), with a count and a double mass per
 * bin. Walking the bins from the top, the first bins that hold k tokens (top-k) or a mass of
 * top_p * total (top-p only) hold every kept token: the sorted order visits whole bins in that
 * order, so with top-k every token kept (one of the first k) lies in them; without top-k, a
 * token of a lower bin has at least their mass before it, >= top_p * total, and is not kept.
 * The mass test carries a relative slack of 1e-9, far above the roundings by which the bins'
 * sums and the sorted order's (added in different orders) can differ; it can only add a bin.
 * Only those bins' tokens are gathered and sorted (qsort): with top-k about k of them, with
 * top-p the nucleus and part of a bin or two.
 *
 * Scratch per thread (sample_truncated_scratch_bytes): the bin masses and counts (two
 * histograms), the row's weights and the candidates. Rows are split over threads; a token
 * depends only on its row. */

#define TRUNC_MANTISSA_BITS 4
#define TRUNC_BIN_SHIFT (23 - TRUNC_MANTISSA_BITS)
/* The bin of 1.0f, the largest weight, is the last. */
#define TRUNC_BINS ((0x3f800000u >> TRUNC_BIN_SHIFT) + 1)
#define TRUNC_MASS_SLACK 1e-9

typedef struct {
    float weight;
    int32_t token;
} candidate;

static size_t align64(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

/* Two histograms, for even and odd tokens: neighbours often fall into one bin, and a single
 * histogram's updates then wait on each other through memory. Each has a spare bin past the
 * last for the tokens that are not candidates, so the loop needs no branch. */
#define TRUNC_HISTOGRAMS 2
#define TRUNC_SLOTS (TRUNC_BINS + 1)

int64_t sample_truncated_scratch_bytes(int64_t vocab) {
    return (int64_t)(align64(TRUNC_HISTOGRAMS * TRUNC_SLOTS * sizeof(double)) +
                     align64(TRUNC_HISTOGRAMS * TRUNC_SLOTS * sizeof(int32_t)) +
                     align64((size_t)vocab * sizeof(float)) +
                     align64((size_t)vocab * sizeof(candidate)));
}

/* The bits of 1.0f, the largest weight. A candidate's weight lies in (0, 1], its bits in
 * [1, ONE_BITS]: zero, NaN and infinity fall outside. The passes over the row test the bits as
 * unsigned integers and without a branch per token: in a peaked row the zero weights lie
 * scattered among the others, and a branch on each token was the slowest part of the draw. */
#define ONE_BITS 0x3f800000u

static inline uint32_t weight_bits(float w) {
    uint32_t bits;
    memcpy(&bits, &w, sizeof bits);
    return bits;
}

/* The histogram slot of a weight: its bin, or the spare slot for a weight that is no candidate. */
static inline uint32_t weight_slot(uint32_t bits) {
    return bits - 1u < ONE_BITS ? bits >> TRUNC_BIN_SHIFT : TRUNC_BINS;
}

/* Counts and double masses per bin of the weights w[0..vocab), even tokens in the first
 * histogram and odd ones in the second, then the second added into the first. */
static void fill_histograms(const float *restrict w, int64_t vocab, double *restrict bin_mass,
                            int32_t *restrict bin_count) {
    double *odd_mass = bin_mass + TRUNC_SLOTS;
    int32_t *odd_count = bin_count + TRUNC_SLOTS;
    int64_t t = 0;
    for (; t + 1 < vocab; t += 2) {
        const uint32_t even = weight_slot(weight_bits(w[t]));
        const uint32_t odd = weight_slot(weight_bits(w[t + 1]));
        bin_mass[even] += (double)w[t];
        bin_count[even]++;
        odd_mass[odd] += (double)w[t + 1];
        odd_count[odd]++;
    }
    if (t < vocab) {
        const uint32_t slot = weight_slot(weight_bits(w[t]));
        bin_mass[slot] += (double)w[t];
        bin_count[slot]++;
    }
    for (int64_t bin = 0; bin < TRUNC_BINS; bin++) {
        bin_mass[bin] += odd_mass[bin];
        bin_count[bin] += odd_count[bin];
    }
}

/* Weight descending, then token id ascending: a total order, so qsort's result is unique. */
static int by_weight_then_token(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    if (x->weight != y->weight) return x->weight > y->weight ? -1 : 1;
    return x->token < y->token ? -1 : x->token > y->token;
}

static int64_t sample_truncated_row(const float *restrict x, int64_t vocab, float temperature,
                                    float min_p, int64_t top_k, double top_p, double uniform,
                                    unsigned char *restrict scratch) {
    double *bin_mass = (double *)scratch;
    int32_t *bin_count =
        (int32_t *)(scratch + align64(TRUNC_HISTOGRAMS * TRUNC_SLOTS * sizeof(double)));
    float *w = (float *)((unsigned char *)bin_count +
                         align64(TRUNC_HISTOGRAMS * TRUNC_SLOTS * sizeof(int32_t)));
    candidate *cands = (candidate *)((unsigned char *)w + align64((size_t)vocab * sizeof(float)));

    const float max = row_max(x, vocab);
    if (is_minus_inf(max)) return vocab - 1;
    memset(bin_mass, 0, TRUNC_HISTOGRAMS * TRUNC_SLOTS * sizeof(double));
    memset(bin_count, 0, TRUNC_HISTOGRAMS * TRUNC_SLOTS * sizeof(int32_t));
    for (int64_t start = 0; start < vocab; start += SAMPLE_BLOCK) {
        const int64_t n = vocab - start < SAMPLE_BLOCK ? vocab - start : SAMPLE_BLOCK;
        block_weights(x + start, n, max, temperature, min_p, w + start);
    }
    fill_histograms(w, vocab, bin_mass, bin_count);
    double total = 0.0;
    for (int64_t bin = TRUNC_BINS - 1; bin >= 0; bin--) total += bin_mass[bin];

    if (top_k < 1) top_k = 1; /* at least one token is kept, whatever the settings */
    const int top_k_on = top_k < vocab;
    const int top_p_on = top_p < 1.0;
    /* The lowest bin to gather (bins from the top until the kept set is surely inside). */
    int64_t lowest = 0;
    int64_t count = 0;
    double mass = 0.0;
    const double p_target = top_p * total * (1.0 + TRUNC_MASS_SLACK);
    for (int64_t bin = TRUNC_BINS - 1; bin >= 0; bin--) {
        count += bin_count[bin];
        mass += bin_mass[bin];
        if (top_k_on ? count >= top_k : (top_p_on && mass >= p_target)) {
            lowest = bin;
            break;
        }
    }
    /* The candidates: bits in [lowest bin's first, ONE_BITS], one unsigned comparison. Most
     * blocks hold none, and a vectorised test skips them. */
    const uint32_t first = lowest > 0 ? (uint32_t)lowest << TRUNC_BIN_SHIFT : 1u;
    const uint32_t span = ONE_BITS - first;
    int64_t n = 0;
    for (int64_t start = 0; start < vocab; start += SAMPLE_BLOCK) {
        const int64_t end = vocab - start < SAMPLE_BLOCK ? vocab : start + SAMPLE_BLOCK;
        int any = 0;
        for (int64_t i = start; i < end; i++) any |= weight_bits(w[i]) - first <= span;
        if (!any) continue;
        for (int64_t i = start; i < end; i++) {
            if (weight_bits(w[i]) - first <= span) {
                cands[n].weight = w[i];
                cands[n].token = (int32_t)i;
                n++;
            }
        }
    }
    if (n == 0) return vocab - 1; /* NaN weights: nothing to draw from, as sample_row */
    qsort(cands, (size_t)n, sizeof(candidate), by_weight_then_token);

    const int64_t k_kept = top_k_on && top_k < n ? top_k : n;
    int64_t kept = k_kept;
    if (top_p_on) {
        double k_mass = 0.0;
        if (top_k_on) {
            for (int64_t i = 0; i < k_kept; i++) k_mass += (double)cands[i].weight;
        }
        const double p_mass = top_p * (top_k_on ? k_mass : total);
        double before = 0.0;
        int64_t p_kept = 0;
        while (p_kept < k_kept && before < p_mass) before += (double)cands[p_kept++].weight;
        kept = p_kept > 1 ? p_kept : 1;
    }
    double kept_mass = 0.0;
    for (int64_t i = 0; i < kept; i++) kept_mass += (double)cands[i].weight;
    /* The first token whose running mass passes the target; u < 1 keeps the target below the
     * kept mass, and the last kept token (weight > 0) is the answer to a rounding short of it. */
    const double target = uniform * kept_mass;
    double running = 0.0;
    for (int64_t i = 0; i < kept; i++) {
        running += (double)cands[i].weight;
        if (running > target) return cands[i].token;
    }
    return cands[kept - 1].token;
}

/* logits [rows, vocab] (vocab < 2^31); temperature [rows] (> 0); min_p [rows] or NULL; top_k
 * [rows] (vocab or more: off; below 1: 1); top_p [rows] (1 or more: off; 0 or less: one
 * token); uniforms [rows] in [0, 1); scratch: max(num_threads, 1) *
 * sample_truncated_scratch_bytes(vocab) bytes, 64-byte aligned (one row's worth per thread,
 * reused row after row); out [rows]. */
void sample_truncated_rows_f32(const float *logits, int64_t rows, int64_t vocab,
                               const float *temperature, const float *min_p, const int64_t *top_k,
                               const double *top_p, const double *uniforms, unsigned char *scratch,
                               int64_t *out, int num_threads) {
    const int64_t row_bytes = sample_truncated_scratch_bytes(vocab);
    const int threads = rows > 1 && rows * vocab >= PARALLEL_MIN_ELEMENTS ? num_threads : 1;
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        unsigned char *mine = scratch + (size_t)omp_get_thread_num() * (size_t)row_bytes;
#else
        unsigned char *mine = scratch;
#endif
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            out[r] = sample_truncated_row(logits + r * vocab, vocab, temperature[r],
                                          min_p == NULL ? 0.0f : min_p[r], top_k[r], top_p[r],
                                          uniforms[r], mine);
        }
    }
}
