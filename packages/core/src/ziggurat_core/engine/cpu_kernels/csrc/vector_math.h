/* expf inside vectorised loops (softmax, SiLU).
 *
 * glibc's libmvec has SIMD versions of expf for every x86-64 vector width, but math.h declares
 * them only under -ffast-math, and that flag also links crtfastmath.o, which switches the whole
 * process (torch included) to flush denormals to zero. build.py therefore passes the individual
 * math flags instead, and this header declares the SIMD variants itself. Elsewhere (Arm, other C
 * libraries) expf stays a scalar call: correct, only slower.
 */
#ifndef ZIGGURAT_VECTOR_MATH_H
#define ZIGGURAT_VECTOR_MATH_H

#include <math.h>

#if defined(__x86_64__) && defined(__GLIBC__) && defined(_OPENMP)
#pragma omp declare simd notinbranch
float expf(float);
#endif

#endif
