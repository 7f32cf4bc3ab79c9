/* Float sums with the same bits at every vector width.
 *
 * The library is built without -fassociative-math, so the compiler never regroups a float sum
 * on its own (regrouped at the vector width, an AVX2 and an AVX-512 build would round
 * differently). These sums are regrouped here instead, the same way in every build: element i
 * goes to lane i % 16, each lane adds its elements in order, and the lanes are added in a fixed
 * tree. The lanes are two GNU C vectors of 8 floats (lanes 0-7 and 8-15), which the compiler maps
 * onto the target's registers (one 256-bit register each on AVX2 and AVX-512, two 128-bit ones
 * on NEON or plain x86-64) without changing any lane's arithmetic. (A plain C loop over 16 lanes
 * vectorises too, but its final tree turns into 15 scalar additions; a 16-float vector type is
 * split through memory on AVX2.) 16 lanes divide the attention head size (64) and the model
 * width (576). No function takes or returns a vector: that would change the calling convention
 * between builds (-Wpsabi).
 */
#ifndef ZIGGURAT_LANE_SUM_H
#define ZIGGURAT_LANE_SUM_H

#include <stdint.h>
#include <string.h>

#define SUM_LANES 16

typedef float lanes8 __attribute__((vector_size(8 * sizeof(float))));
typedef float lanes4 __attribute__((vector_size(4 * sizeof(float))));

/* Loads from any address (memcpy compiles to an unaligned vector load). */
#define LOAD_LANES8(dst, src) memcpy(&(dst), (src), sizeof(lanes8))

/* (lanes 0-7 of the sum) + (lanes 8-15), then lane l + lane l + 4, then l + l + 2, then 0 + 1. */
static inline __attribute__((always_inline)) float lanes_total(const lanes8 *lo, const lanes8 *hi) {
    const lanes8 s8 = *lo + *hi;
    lanes4 a, b;
    memcpy(&a, &s8, sizeof a);
    memcpy(&b, (const char *)&s8 + sizeof a, sizeof b);
    const lanes4 s4 = a + b;
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

/* sum over i < n of a[i] * b[i], each product fused into its lane's running sum. A partial last
 * block is padded with zeros: a lane that gets 0 * 0 keeps its sum. */
static inline __attribute__((always_inline)) float lane_dot(const float *restrict a,
                                                            const float *restrict b, int64_t n) {
    lanes8 lo = {0.0f}, hi = {0.0f}, a0, a1, b0, b1;
    int64_t i = 0;
    for (; i + SUM_LANES <= n; i += SUM_LANES) {
        LOAD_LANES8(a0, a + i);
        LOAD_LANES8(a1, a + i + 8);
        LOAD_LANES8(b0, b + i);
        LOAD_LANES8(b1, b + i + 8);
        lo += a0 * b0;
        hi += a1 * b1;
    }
    if (i < n) {
        float pa[SUM_LANES] = {0.0f}, pb[SUM_LANES] = {0.0f};
        memcpy(pa, a + i, sizeof(float) * (size_t)(n - i));
        memcpy(pb, b + i, sizeof(float) * (size_t)(n - i));
        LOAD_LANES8(a0, pa);
        LOAD_LANES8(a1, pa + 8);
        LOAD_LANES8(b0, pb);
        LOAD_LANES8(b1, pb + 8);
        lo += a0 * b0;
        hi += a1 * b1;
    }
    return lanes_total(&lo, &hi);
}

/* sum over i < n of a[i]; a partial last block padded with zeros. */
static inline __attribute__((always_inline)) float lane_sum(const float *restrict a, int64_t n) {
    lanes8 lo = {0.0f}, hi = {0.0f}, a0, a1;
    int64_t i = 0;
    for (; i + SUM_LANES <= n; i += SUM_LANES) {
        LOAD_LANES8(a0, a + i);
        LOAD_LANES8(a1, a + i + 8);
        lo += a0;
        hi += a1;
    }
    if (i < n) {
        float pa[SUM_LANES] = {0.0f};
        memcpy(pa, a + i, sizeof(float) * (size_t)(n - i));
        LOAD_LANES8(a0, pa);
        LOAD_LANES8(a1, pa + 8);
        lo += a0;
        hi += a1;
    }
    return lanes_total(&lo, &hi);
}

#endif
