/* Test driver for the sampling kernels (csrc/sampling.c) built for AArch64 and run under qemu by
 * tests/core/sampling_helpers.py (the sampling and truncated-sampling kernel tests).
 *
 *   sampling_driver sample ROWS VOCAB LOGITS TEMPERATURES MIN_P UNIFORMS OUT
 *   sampling_driver truncated ROWS VOCAB LOGITS TEMPERATURES MIN_P TOP_K TOP_P UNIFORMS OUT
 *   sampling_driver argmax ROWS VOCAB LOGITS OUT
 *       Read raw float32 logits [ROWS, VOCAB] and, per row, float32 temperatures and min_p,
 *       int64 top_k, float64 top_p and float64 uniforms; write the int64 tokens of
 *       sample_rows_f32, sample_truncated_rows_f32 or argmax_rows_f32 to OUT.
 *
 * Two threads, as the tests call the native build with. Exit status 0 on success, 2 on bad
 * usage or I/O.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sample_rows_f32(const float *logits, int64_t rows, int64_t vocab, const float *temperature,
                     const float *min_p, const double *uniforms, double *scratch, int64_t *out,
                     int num_threads);
void sample_truncated_rows_f32(const float *logits, int64_t rows, int64_t vocab,
                               const float *temperature, const float *min_p, const int64_t *top_k,
                               const double *top_p, const double *uniforms, unsigned char *scratch,
                               int64_t *out, int num_threads);
void argmax_rows_f32(const float *logits, int64_t rows, int64_t vocab, int64_t *out,
                     int num_threads);
int64_t sample_block_size(void);
int64_t sample_truncated_scratch_bytes(int64_t vocab);

#define THREADS 2

static void *read_file(const char *path, size_t size) {
    FILE *file = fopen(path, "rb");
    void *data = malloc(size);
    if (file == NULL || data == NULL || fread(data, 1, size, file) != size) {
        fprintf(stderr, "cannot read %zu bytes from %s\n", size, path);
        exit(2);
    }
    fclose(file);
    return data;
}

static int usage(const char *program) {
    fprintf(stderr,
            "usage: %s sample ROWS VOCAB LOGITS TEMPERATURES MIN_P UNIFORMS OUT\n"
            "       %s truncated ROWS VOCAB LOGITS TEMPERATURES MIN_P TOP_K TOP_P UNIFORMS OUT\n"
            "       %s argmax ROWS VOCAB LOGITS OUT\n",
            program, program, program);
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 6) return usage(argv[0]);
    const char *mode = argv[1];
    const int64_t rows = atoll(argv[2]), vocab = atoll(argv[3]);
    const size_t per_row = (size_t)rows;
    const float *logits = read_file(argv[4], sizeof(float) * (size_t)(rows * vocab));
    int64_t *out = malloc(sizeof(int64_t) * per_row);
    const char *out_path = argv[argc - 1];
    if (out == NULL) return 2;
    if (strcmp(mode, "sample") == 0 && argc == 9) {
        const float *temperature = read_file(argv[5], sizeof(float) * per_row);
        const float *min_p = read_file(argv[6], sizeof(float) * per_row);
        const double *uniforms = read_file(argv[7], sizeof(double) * per_row);
        const int64_t blocks = (vocab + sample_block_size() - 1) / sample_block_size();
        double *scratch = malloc(sizeof(double) * (size_t)(rows * blocks));
        if (scratch == NULL) return 2;
        sample_rows_f32(logits, rows, vocab, temperature, min_p, uniforms, scratch, out, THREADS);
    } else if (strcmp(mode, "truncated") == 0 && argc == 11) {
        const float *temperature = read_file(argv[5], sizeof(float) * per_row);
        const float *min_p = read_file(argv[6], sizeof(float) * per_row);
        const int64_t *top_k = read_file(argv[7], sizeof(int64_t) * per_row);
        const double *top_p = read_file(argv[8], sizeof(double) * per_row);
        const double *uniforms = read_file(argv[9], sizeof(double) * per_row);
        const size_t bytes = (size_t)(THREADS * sample_truncated_scratch_bytes(vocab));
        unsigned char *scratch = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        if (scratch == NULL) return 2;
        sample_truncated_rows_f32(logits, rows, vocab, temperature, min_p, top_k, top_p, uniforms,
                                  scratch, out, THREADS);
    } else if (strcmp(mode, "argmax") == 0 && argc == 6) {
        argmax_rows_f32(logits, rows, vocab, out, THREADS);
    } else {
        return usage(argv[0]);
    }
    FILE *file = fopen(out_path, "wb");
    if (file == NULL || fwrite(out, sizeof(int64_t), per_row, file) != per_row) return 2;
    fclose(file);
    return 0;
}
