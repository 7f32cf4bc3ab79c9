/* Float sums with the same bits at every vector width.
 *
 * The library is built without -fassociative-math, so the compiler never regroups a float sum
 * on its own (regrouped at the vector width, an AVX2 and an AVX-512 build would round
 * differently). These sums are regrouped here instead, the same way in every build: element i
 * goes to lane i % SUM_LANES, each lane adds its elements in order, and the lanes are added in a
 * fixed tree. The lane loops are elementwise, so the compiler vectorises them without reordering
 * anything: one 512-bit register on AVX-512, two 256-bit ones on AVX2, four on NEON.
 * 16 lanes divide both the attention head size (64) and the model width (576).
 */
#ifndef ZIGGURAT_LANE_SUM_H
#define ZIGGURAT_LANE_SUM_H

#include <stdint.h>

#define SUM_LANES 16

/* acc[0] + ... + acc[15] as ((acc[0] + acc[8]) + (acc[4] + acc[12])) + ...: halving steps. */
static inline __attribute__((always_inline)) float lanes_total(float acc[SUM_LANES]) {
    for (int width = SUM_LANES / 2; width > 0; width /= 2)
        for (int l = 0; l < width; l++) acc[l] += acc[l + width];
    return acc[0];
}

/* sum over i < n of a[i] * b[i] (each product fused into its lane's running sum). */
static inline __attribute__((always_inline)) float lane_dot(const float *restrict a,
                                                            const float *restrict b, int64_t n) {
    float acc[SUM_LANES] = {0.0f};
    int64_t i = 0;
    for (; i + SUM_LANES <= n; i += SUM_LANES)
        for (int l = 0; l < SUM_LANES; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i + l < n; l++) acc[l] += a[i + l] * b[i + l];
    return lanes_total(acc);
}

/* sum over i < n of a[i]. */
static inline __attribute__((always_inline)) float lane_sum(const float *restrict a, int64_t n) {
    float acc[SUM_LANES] = {0.0f};
    int64_t i = 0;
    for (; i + SUM_LANES <= n; i += SUM_LANES)
        for (int l = 0; l < SUM_LANES; l++) acc[l] += a[i + l];
    for (int l = 0; i + l < n; l++) acc[l] += a[i + l];
    return lanes_total(acc);
}

#endif
