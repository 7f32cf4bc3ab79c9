/* Reports the instruction-set variant this library was built for (see isa.h). */
#include "isa.h"

const char *ziggurat_cpu_isa(void) {
#if defined(ZIG_ISA_AVX512VNNI)
    return "avx512vnni";
#elif defined(ZIG_ISA_AVX2)
    return "avx2";
#elif defined(ZIG_ISA_NEON)
    return "neon";
#else
    return "scalar";
#endif
}
