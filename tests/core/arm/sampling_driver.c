/* Test driver for the sampling kernel (csrc/sampling.c) built for AArch64 and run under qemu by
 * tests/core/test_sampling_kernel.py.
 *
 *   sampling_driver ROWS VOCAB LOGITS TEMPERATURES MIN_P UNIFORMS OUT
 *       Reads raw float32 logits [ROWS, VOCAB], float32 temperatures and min_p [ROWS] and
 *       float64 uniforms [ROWS], writes the int64 tokens of sample_rows_f32 to OUT.
 *
 * Exit status 0 on success, 2 on bad usage or I/O.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void sample_rows_f32(const float *logits, int64_t rows, int64_t vocab, const float *temperature,
                     const float *min_p, const double *uniforms, double *scratch, int64_t *out,
                     int num_threads);
int64_t sample_block_size(void);

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

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s ROWS VOCAB LOGITS TEMPERATURES MIN_P UNIFORMS OUT\n", argv[0]);
        return 2;
    }
    const int64_t rows = atoll(argv[1]), vocab = atoll(argv[2]);
    const float *logits = read_file(argv[3], sizeof(float) * (size_t)(rows * vocab));
    const float *temperature = read_file(argv[4], sizeof(float) * (size_t)rows);
    const float *min_p = read_file(argv[5], sizeof(float) * (size_t)rows);
    const double *uniforms = read_file(argv[6], sizeof(double) * (size_t)rows);
    const int64_t blocks = (vocab + sample_block_size() - 1) / sample_block_size();
    double *scratch = malloc(sizeof(double) * (size_t)(rows * blocks));
    int64_t *out = malloc(sizeof(int64_t) * (size_t)rows);
    if (scratch == NULL || out == NULL) return 2;
    sample_rows_f32(logits, rows, vocab, temperature, min_p, uniforms, scratch, out, 2);
    FILE *file = fopen(argv[7], "wb");
    if (file == NULL || fwrite(out, sizeof(int64_t), (size_t)rows, file) != (size_t)rows) return 2;
    fclose(file);
    return 0;
}
