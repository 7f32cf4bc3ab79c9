/* Which instruction set this build of the kernels targets.
 *
 * The library is compiled on the machine that runs it, so the compiler's own feature macros
 * (from -march=native) say what the CPU has; build.py lowers the target for a forced variant
 * (ZIGGURAT_CPU_ISA) with -mno-... flags, or with ZIGGURAT_ISA_SCALAR for the portable path.
 * Exactly one ZIG_ISA_* macro is 1; every kernel with per-ISA code selects on these, never on
 * the raw compiler macros, so a forced variant reaches every kernel alike.
 */
#ifndef ZIGGURAT_ISA_H
#define ZIGGURAT_ISA_H

#if defined(ZIGGURAT_ISA_SCALAR)
#define ZIG_ISA_SCALAR 1
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define ZIG_ISA_AVX512VNNI 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define ZIG_ISA_AVX2 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define ZIG_ISA_NEON 1
#else
#define ZIG_ISA_SCALAR 1
#endif

#endif
