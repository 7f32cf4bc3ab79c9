/* Test driver for the ARM NEON kernels, cross-compiled for aarch64 and run under qemu by
 * tests/core/test_neon_kernels.py.
 *
 *   neon_driver gemm SEED
 *       int8_gemm_neon against int8_gemm_reference on random data from SEED: dot products
 *       (M = 1) for K = 1 .. 80, GEMMs over M, N and K tails, extreme values, with and without
 *       bias, two thread counts. Every output must be bitwise the reference's. Prints the
 *       variant compiled in ("path=sdot" or "path=neon"), one line per case, then "ok".
 *   neon_driver f16 FLOATS HALVES OUT_HALVES OUT_FLOATS
 *       The KV cache's float16 conversions (paged_decode.c, included below for its static
 *       converters): FLOATS (float32s) -> OUT_HALVES (raw float16 bits), HALVES (raw bits) ->
 *       OUT_FLOATS (float32s); the test compares both with torch. Then paged decode attention
 *       on a half cache against the float32 kernel on the same cache widened, and prefill
 *       chunks' rows (paged_prefill.c) against the same rows attended alone, bit for bit.
 *       Prints the conversion used ("f16=neon" or "f16=float16") and "ok".
 *
 * Exit status 0 when every check passed, 1 on a mismatch, 2 on bad usage or I/O.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS under -std=c11 */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "int8_gemm.h"
#include "isa.h"
#include "paged_decode.c"

/* xorshift64*: the same sequence for the same seed on every machine. */
static uint64_t rng_state;

static uint32_t next_u32(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32);
}

/* Uniform in [lo, hi). */
static float random_float(float lo, float hi) {
    return lo + (hi - lo) * (float)(next_u32() >> 8) / 16777216.0f;
}

#if defined(ZIG_ISA_NEON)
/* Uniform in [lo, hi]. */
static int random_int(int lo, int hi) { return lo + (int)(next_u32() % (uint32_t)(hi - lo + 1)); }

/* `bytes` that end exactly where an unreadable page begins: a kernel reading or writing one
 * byte past the end of an array crashes instead of passing unseen. */
static void *guarded(size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t pages = (bytes + page - 1) / page;
    char *base = mmap(NULL, (pages + 1) * page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED || mprotect(base + pages * page, page, PROT_NONE) != 0) {
        fprintf(stderr, "mmap failed\n");
        exit(2);
    }
    return base + pages * page - bytes;
}

static void unguard(void *p, size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t pages = (bytes + page - 1) / page;
    munmap((char *)p + bytes - pages * page, (pages + 1) * page);
}

/* W [N, K] row-major -> [ceil(N/16)][ceil(K/4)][16][4], zero past N and K (int8_gemm.h). */
static int8_t *pack(const int8_t *w, int64_t N, int64_t K) {
    const int64_t tiles = (N + 15) / 16, groups = (K + 3) / 4;
    int8_t *packed = calloc((size_t)(tiles * groups * 64), 1);
    if (packed == NULL) return NULL;
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++)
            packed[((n / 16) * groups + k / 4) * 64 + (n % 16) * 4 + k % 4] = w[n * K + k];
    return packed;
}

enum fill { RANDOM, ALL_MAX, OPPOSITE };

static const char *fill_name[] = {"random", "all+127", "+127*-127"};

/* One GEMM case; returns the number of outputs that differ from the reference bitwise. */
static int64_t gemm_case(int64_t M, int64_t N, int64_t K, enum fill fill, int with_bias,
                         int threads) {
    /* Every array the kernel reads or writes ends at a guard page. */
    int8_t *x = guarded((size_t)(M * K));
    int8_t *w = malloc((size_t)(N * K));
    float *row_scale = guarded(sizeof(float) * (size_t)M);
    float *col_scale = guarded(sizeof(float) * (size_t)N);
    float *bias = guarded(sizeof(float) * (size_t)N);
    float *want = malloc(sizeof(float) * (size_t)(M * N));
    float *got = guarded(sizeof(float) * (size_t)(M * N));
    if (!w || !want) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (int64_t i = 0; i < M * K; i++)
        x[i] = (int8_t)(fill == RANDOM ? random_int(-127, 127) : fill == ALL_MAX ? -127 : 127);
    for (int64_t i = 0; i < N * K; i++)
        w[i] = (int8_t)(fill == RANDOM ? random_int(-127, 127) : -127);
    /* Unit scales for the extreme fills: the output is then the integer dot product itself. */
    for (int64_t m = 0; m < M; m++)
        row_scale[m] = fill == RANDOM ? random_float(1e-4f, 1e-1f) : 1.0f;
    for (int64_t n = 0; n < N; n++) {
        col_scale[n] = fill == RANDOM ? random_float(1e-4f, 1e-1f) : 1.0f;
        bias[n] = random_float(-2.0f, 2.0f);
    }
    int8_t *packed = pack(w, N, K);
    if (packed == NULL) exit(2);
    const size_t packed_bytes = (size_t)(((N + 15) / 16) * ((K + 3) / 4) * 64);
    int8_t *packed_guarded = guarded(packed_bytes);
    memcpy(packed_guarded, packed, packed_bytes);
    /* NaN everywhere first: an output the kernel forgets to write cannot match. */
    for (int64_t i = 0; i < M * N; i++) want[i] = got[i] = NAN;
    const float *b = with_bias ? bias : NULL;
    int rc = int8_gemm_reference(x, row_scale, M, K, N, packed, col_scale, b, want, 1);
    rc |= int8_gemm_neon(x, row_scale, M, K, N, packed_guarded, col_scale, b, got, threads);
    int64_t bad = rc != 0 ? M * N : 0;
    for (int64_t i = 0; i < M * N && rc == 0; i++) {
        if (memcmp(&want[i], &got[i], sizeof(float)) != 0) {
            if (bad < 5)
                fprintf(stderr, "  M=%" PRId64 " N=%" PRId64 " K=%" PRId64 " [%" PRId64 ",%" PRId64
                                "]: reference %a, neon %a\n",
                        M, N, K, i / N, i % N, (double)want[i], (double)got[i]);
            bad++;
        }
    }
    /* Extreme fills have a closed-form result, K * (+-127 * 127) in every output: a check
     * that does not rest on the reference. */
    if (rc == 0 && fill != RANDOM && !with_bias) {
        const float expect = (float)(K * (fill == ALL_MAX ? 127 * 127 : -127 * 127));
        for (int64_t i = 0; i < M * N; i++) bad += got[i] != expect;
    }
    printf("gemm M=%" PRId64 " N=%" PRId64 " K=%" PRId64 " %s bias=%d threads=%d: %s\n", M, N, K,
           fill_name[fill], with_bias, threads, bad == 0 ? "equal" : "DIFFERENT");
    unguard(x, (size_t)(M * K));
    unguard(row_scale, sizeof(float) * (size_t)M);
    unguard(col_scale, sizeof(float) * (size_t)N);
    unguard(bias, sizeof(float) * (size_t)N);
    unguard(got, sizeof(float) * (size_t)(M * N));
    unguard(packed_guarded, packed_bytes);
    free(w); free(want); free(packed);
    return bad;
}

static int run_gemm(uint64_t seed) {
    rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
#if defined(__ARM_FEATURE_DOTPROD)
    printf("path=sdot\n");
#else
    printf("path=neon\n");
#endif
    int64_t bad = 0;
    /* Dot products: one row, every K tail (K % 16 and K % 4) up to five 16-byte chunks. */
    for (int64_t K = 1; K <= 80; K++) bad += gemm_case(1, 16, K, RANDOM, 0, 1);
    /* Decode to prefill row counts over N tails (N % 16, N % 4, one tile, odd tile counts)
     * and K tails. */
    static const int64_t Ms[] = {1, 3, 8, 17, 64, 130};
    static const int64_t shapes[][2] = {{16, 64}, {37, 67}, {50, 129}, {100, 31}, {3, 300}};
    for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++)
        for (size_t j = 0; j < sizeof shapes / sizeof shapes[0]; j++)
            bad += gemm_case(Ms[i], shapes[j][0], shapes[j][1], RANDOM, (int)(j % 2), 1);
    /* Threads split the output tiles; results must not change. */
    bad += gemm_case(17, 100, 67, RANDOM, 1, 3);
    bad += gemm_case(5, 64, 1000, RANDOM, 0, 2);
    /* Projection-sized shapes (a small model's hidden size 576 and MLP width 1536). */
    bad += gemm_case(9, 192, 576, RANDOM, 1, 2);
    bad += gemm_case(1, 576, 1536, RANDOM, 0, 2);
    /* Largest products everywhere: any int16 intermediate summing more than two of them
     * would overflow. */
    for (int f = ALL_MAX; f <= OPPOSITE; f++) {
        bad += gemm_case(1, 16, 4096, (enum fill)f, 0, 1);
        bad += gemm_case(5, 33, 1027, (enum fill)f, 1, 1);
    }
    /* Unusable shapes are refused, as the reference does. */
    float dummy = 0.0f;
    if (int8_gemm_neon(NULL, &dummy, 0, 4, 16, NULL, &dummy, NULL, &dummy, 1) != 1 ||
        int8_gemm_neon(NULL, &dummy, 1, 0, 16, NULL, &dummy, NULL, &dummy, 1) != 1 ||
        int8_gemm_neon(NULL, &dummy, 1, 4, 0, NULL, &dummy, NULL, &dummy, 1) != 1) {
        printf("empty shapes: NOT REFUSED\n");
        bad++;
    }
    printf(bad == 0 ? "ok\n" : "FAILED\n");
    return bad == 0 ? 0 : 1;
}
#else
static int run_gemm(uint64_t seed) {
    (void)seed;
    printf("path=none: this build has no NEON variant\nFAILED\n");
    return 2;
}
#endif

static void *read_file(const char *path, size_t *bytes) {
    FILE *f = fopen(path, "rb");
    if (f == NULL || fseek(f, 0, SEEK_END) != 0) exit(2);
    const long size = ftell(f);
    rewind(f);
    void *data = malloc((size_t)size + 1);
    if (size < 0 || data == NULL || fread(data, 1, (size_t)size, f) != (size_t)size) exit(2);
    fclose(f);
    *bytes = (size_t)size;
    return data;
}

static void write_file(const char *path, const void *data, size_t bytes) {
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0) exit(2);
}

/* Half-cache decode attention against the float32 kernel on the widened cache: the same
 * float32 arithmetic on the same values, so the outputs agree to float32 rounding. */
static int attention_case(uint64_t seed) {
    rng_state = seed * 0x9E3779B97F4A7C15ULL + 7;
    enum { SEQS = 3, HEADS = 4, KV_HEADS = 2, DIM = 64, BLOCK = 4, BLOCKS = 12, MAX_BLOCKS = 4 };
    const int64_t floats = (int64_t)BLOCKS * BLOCK * KV_HEADS * DIM;
    float *wide = malloc(sizeof(float) * 2 * (size_t)floats);
    uint16_t *half = malloc(sizeof(uint16_t) * 2 * (size_t)floats);
    float query[SEQS * HEADS * DIM], got[SEQS * HEADS * DIM], want[SEQS * HEADS * DIM];
    if (wide == NULL || half == NULL) exit(2);
    for (int64_t i = 0; i < 2 * floats; i++) wide[i] = random_float(-3.0f, 3.0f);
    for (int i = 0; i < SEQS * HEADS * DIM; i++) query[i] = random_float(-1.0f, 1.0f);
    /* Through the cache writer: half cache from float32 tokens, then widen it back. */
    int64_t slots[BLOCKS * BLOCK];
    for (int64_t s = 0; s < BLOCKS * BLOCK; s++) slots[s] = s;
    const int64_t token = KV_HEADS * DIM;
    if (write_kv_cache(wide, token, wide + floats, token, slots, BLOCKS * BLOCK, token, half,
                       half + floats, 1) != 0)
        return 1;
    halves_to_floats(half, wide, 2 * floats);
    const int64_t tables[SEQS * MAX_BLOCKS] = {3, 0, 7, 1, 11, 2, 0, 0, 5, 6, 8, 9};
    const int64_t lens[SEQS] = {10, 7, 16}, rows[SEQS] = {2, 0, 1};
    int rc = paged_decode_attention_f16(query, half, half + floats, tables, lens, rows, got, SEQS,
                                        MAX_BLOCKS, HEADS, KV_HEADS, DIM, BLOCK, 0.125f, 2);
    rc |= paged_decode_attention_f32(query, wide, wide + floats, tables, lens, rows, want, SEQS,
                                     MAX_BLOCKS, HEADS, KV_HEADS, DIM, BLOCK, 0.125f, 2);
    int bad = rc != 0;
    for (int i = 0; i < SEQS * HEADS * DIM; i++)
        if (!(fabsf(got[i] - want[i]) <= 1e-6f * (1.0f + fabsf(want[i])))) bad++;
    printf("attention half cache vs float32 cache: %s\n", bad == 0 ? "equal" : "DIFFERENT");
    free(wide);
    free(half);
    return bad;
}

/* Rows of prefill chunks (paged_prefill.c's blocked path: the rows of one chunk share each
 * widened key and value, scores a vector of keys at a time) against every row attended alone by
 * the one-row kernel: bitwise equal, half and float32 caches, head sizes 64 and 24 (a lane_dot
 * tail), chunks longer than one block of rows, next to a decode row. */
static int prefill_case(uint64_t seed) {
    rng_state = seed * 0x9E3779B97F4A7C15ULL + 11;
    enum { HEADS = 6, KV_HEADS = 2, BLOCK = 8, BLOCKS = 16, MAX_BLOCKS = 8, ROWS = 40 };
    int bad = 0;
    for (int dim = 64; dim >= 24; dim -= 40) {
        const int64_t floats = (int64_t)BLOCKS * BLOCK * KV_HEADS * dim;
        float *wide = malloc(sizeof(float) * 2 * (size_t)floats);
        uint16_t *half = malloc(sizeof(uint16_t) * 2 * (size_t)floats);
        float *query = malloc(sizeof(float) * ROWS * HEADS * (size_t)dim);
        float *got = malloc(sizeof(float) * ROWS * HEADS * (size_t)dim);
        float *want = malloc(sizeof(float) * ROWS * HEADS * (size_t)dim);
        if (wide == NULL || half == NULL || query == NULL || got == NULL || want == NULL) exit(2);
        for (int64_t i = 0; i < 2 * floats; i++) wide[i] = random_float(-3.0f, 3.0f);
        for (int64_t i = 0; i < (int64_t)ROWS * HEADS * dim; i++) query[i] = random_float(-2.0f, 2.0f);
        floats_to_halves(wide, half, 2 * floats);
        /* Rows 0-33: a chunk of sequence A at positions 23..56; row 34: a decode of B at 9;
         * rows 35-39: B's first five positions. */
        const int64_t a[MAX_BLOCKS] = {5, 12, 0, 9, 14, 3, 7, 1}, b[MAX_BLOCKS] = {2, 11, 0, 0, 0, 0, 0, 0};
        int64_t tables[ROWS * MAX_BLOCKS], lens[ROWS], rows[ROWS];
        for (int r = 0; r < ROWS; r++) {
            memcpy(tables + r * MAX_BLOCKS, r < 34 ? a : b, sizeof a);
            lens[r] = r < 34 ? 24 + r : r == 34 ? 10 : r - 34;
            rows[r] = (r * 7) % ROWS; /* rows of the query in any order */
        }
        for (int h = 0; h < 2; h++) {
            const void *k = h ? (const void *)half : (const void *)wide;
            const void *v = h ? (const void *)(half + floats) : (const void *)(wide + floats);
            int rc = paged_decode_attention(query, k, v, tables, lens, rows, got, ROWS, MAX_BLOCKS,
                                            HEADS, KV_HEADS, dim, BLOCK, 0.125f, h, 2);
            rc |= paged_attention_rows_alone(query, k, v, tables, lens, rows, want, ROWS,
                                             MAX_BLOCKS, HEADS, KV_HEADS, dim, BLOCK, 0.125f, h, 1);
            const int same = rc == 0 && memcmp(got, want, sizeof(float) * ROWS * HEADS * (size_t)dim) == 0;
            printf("attention prefill rows vs rows alone, %s cache, head_dim %d: %s\n",
                   h ? "half" : "float32", dim, same ? "equal" : "DIFFERENT");
            bad += !same;
        }
        free(wide); free(half); free(query); free(got); free(want);
    }
    return bad;
}

static int run_f16(const char *floats_path, const char *halves_path, const char *out_halves,
                   const char *out_floats) {
#if defined(ZIG_F16_NEON)
    printf("f16=neon\n");
#else
    printf("f16=float16\n");
#endif
    if (!paged_decode_has_f16()) {
        printf("no float16 cache support in this build\nFAILED\n");
        return 1;
    }
    size_t float_bytes, half_bytes;
    float *floats = read_file(floats_path, &float_bytes);
    uint16_t *halves = read_file(halves_path, &half_bytes);
    const int64_t nf = (int64_t)(float_bytes / sizeof(float));
    const int64_t nh = (int64_t)(half_bytes / sizeof(uint16_t));
    uint16_t *to_half = malloc(sizeof(uint16_t) * (size_t)(nf + 1));
    float *to_float = malloc(sizeof(float) * (size_t)(nh + 1));
    if (to_half == NULL || to_float == NULL) return 2;
    floats_to_halves(floats, to_half, nf);
    halves_to_floats(halves, to_float, nh);
    write_file(out_halves, to_half, sizeof(uint16_t) * (size_t)nf);
    write_file(out_floats, to_float, sizeof(float) * (size_t)nh);
    printf("converted %" PRId64 " floats, %" PRId64 " halves\n", nf, nh);
    const int bad = attention_case(1) + prefill_case(2);
    printf(bad == 0 ? "ok\n" : "FAILED\n");
    free(floats); free(halves); free(to_half); free(to_float);
    return bad == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "gemm") == 0)
        return run_gemm(strtoull(argv[2], NULL, 10));
    if (argc == 6 && strcmp(argv[1], "f16") == 0)
        return run_f16(argv[2], argv[3], argv[4], argv[5]);
    fprintf(stderr, "usage: %s gemm SEED | f16 FLOATS HALVES OUT_HALVES OUT_FLOATS\n", argv[0]);
    return 2;
}
