// ops_cuda.h — the CUDA implementation of shapcam's ops: same names, contracts and bits as
// csrc/cpu/ops_cpu.h. Pointers are raw device pointers (contiguous, row-major); `stream` is a
// cudaStream_t passed as an integer (0 = the legacy default stream); `device` is the CUDA device
// ordinal every pointer must live on. Every launch is followed by an error check; errors throw
// std::runtime_error (std::invalid_argument for a pointer that is not on `device`, or whose
// allocation ends before the bytes the op touches). Sizes and aliasing: checked by the binding.
//
// Permutations live in each block's shared memory, which holds about 29 K players on an H100.
// Beyond max_players(device) an op needs `work`: device memory the caller allocates,
// [P, permutation_work_words(n)] int32 for the P permutations the call touches (permutation.h);
// the op first builds those permutations there (one block each), then its kernel reads them from
// global memory. work = 0: shared memory (refused beyond the limit). Same bits either way.
#pragma once
#include <cstdint>
#include <string>

namespace shapcam {
namespace cuda {

// perm [K, n] and/or rank [K, n] int32 (either may be 0).
void permutations(int device, uintptr_t stream, uint64_t seed, int64_t k0, int64_t k1, int64_t n,
                  int group, uintptr_t perm, uintptr_t rank, uintptr_t work);

// out [B, n] bool.
void masks(int device, uintptr_t stream, uint64_t seed, int64_t e0, int64_t e1, int64_t n,
           int group, uintptr_t out, uintptr_t work);

// The fused kernel: permutations, prefix masks and the masked write in one launch.
// x [outer, inner]; players [inner] int32; baseline [outer, inner] or 0 (then baseline_scalar);
// out [B, outer, inner]. dtype_bytes: 4 (float32) or 8 (float64).
void masked_apply(int device, uintptr_t stream, uint64_t seed, int64_t e0, int64_t e1, int64_t n,
                  int group, int dtype_bytes, uintptr_t x, int64_t outer, int64_t inner,
                  uintptr_t players, uintptr_t baseline, double baseline_scalar, uintptr_t out,
                  uintptr_t work);

// The incremental prefix walk of a cell game (walk.h): out [B, d] of the chunk [e0, e1).
// tables [cells, 2^size, d], z_empty [d], out: dtype_bytes 4 or 8; members [cells, size],
// cell_of [n]: int32.
void prefix_walk(int device, uintptr_t stream, uint64_t seed, int64_t e0, int64_t e1, int64_t n,
                 int group, int dtype_bytes, uintptr_t tables, int64_t cells, int64_t size,
                 int64_t d, uintptr_t members, uintptr_t cell_of, uintptr_t z_empty, uintptr_t out,
                 uintptr_t work);

// values [n_samples * pps * (n - 1), m], v_empty [m], v_full [m], mean [n, m], m2 [n, m]: float64.
// scratch [n_samples * pps, n] int32: the samples' ranks, device memory the caller allocated.
void accumulate(int device, uintptr_t stream, uint64_t seed, int64_t k0, int64_t n_samples,
                int64_t n, int64_t m, int group, uintptr_t values, uintptr_t v_empty,
                uintptr_t v_full, int64_t count0, uintptr_t mean, uintptr_t m2, uintptr_t scratch,
                int64_t block, uintptr_t base_mean, uintptr_t base_m2, uintptr_t work);

// Number of CUDA devices usable now (0 when no driver or no GPU; never throws).
int device_count();

// Largest n whose permutation fits a block's shared memory (beyond it, ops need `work`).
int64_t max_players(int device);

}  // namespace cuda
}  // namespace shapcam
