// common.h — portability macros shared by the host (g++) and device (nvcc) code.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SHAPCAM_HD __host__ __device__ __forceinline__
#else
#define SHAPCAM_HD inline
#endif

// Loop unrolling hint for nvcc; g++ unrolls on its own at -O3.
#if defined(__CUDACC__)
#define SHAPCAM_UNROLL _Pragma("unroll")
#else
#define SHAPCAM_UNROLL
#endif
