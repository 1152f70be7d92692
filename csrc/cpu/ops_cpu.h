// ops_cpu.h — the CPU implementation of shapcam's ops (multithreaded with OpenMP).
//
// Every op is a pure function of (seed, index range, n, group) plus its inputs; the CUDA twin
// (csrc/cuda/ops_cuda.h) has the same names and the same outputs bit for bit. Pointers are raw and
// contiguous row-major; the callers (csrc/bindings.cpp, shapcam/ops.py) check shapes and dtypes.
#pragma once
#include <cstdint>

namespace shapcam {
namespace cpu {

// Permutations [k0, k1): perm [K, n] and/or rank [K, n] (either may be null), int32.
void permutations(uint64_t seed, int64_t k0, int64_t k1, int64_t n, int group, int32_t* perm,
                  int32_t* rank);

// Prefix masks of the evaluation chunk [e0, e1): out [B, n] bool (one byte each), out[b, p] =
// rank_k[p] < t for (k, t) = eval_index(e0 + b).
void masks(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group, bool* out);

// Fused masked apply: out[b, o, j] = rank_k[players[j]] < t ? x[o, j] : baseline, for the chunk
// [e0, e1). x [outer, inner]; players [inner] (ids in 0..n-1); baseline [outer, inner] or null
// (then baseline_scalar); out [B, outer, inner]. Masks are never stored.
template <typename T>
void masked_apply(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group, const T* x,
                  int64_t outer, int64_t inner, const int32_t* players, const T* baseline,
                  T baseline_scalar, T* out);

// Push n_samples complete samples into the Welford state. The samples start at permutation k0
// (a multiple of permutations_per_sample); values [n_samples * pps * (n - 1), m] float64 are their
// evaluations in index order; v_empty, v_full [m]; mean, m2 [n, m] updated in place; count0 is the
// number of samples pushed before.
void accumulate(uint64_t seed, int64_t k0, int64_t n_samples, int64_t n, int64_t m, int group,
                const double* values, const double* v_empty, const double* v_full, int64_t count0,
                double* mean, double* m2, int64_t block, double* base_mean, double* base_m2);

// The incremental prefix walk of a cell game (csrc/include/shapcam/walk.h) for the evaluation
// chunk [e0, e1): out [B, d] = z of each evaluation's coalition. tables [cells, 2^size, d];
// members [cells, size] player ids (-1 pads), bit b of a subset index = member b; cell_of [n]:
// each player's cell; z_empty [d]. Per-permutation walks run on threads.
template <typename T>
void prefix_walk(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group,
                 const T* tables, int64_t cells, int64_t size, int64_t d, const int32_t* members,
                 const int32_t* cell_of, const T* z_empty, T* out);

// Threads the CPU ops use (OpenMP's default: the cores available).
int num_threads();

}  // namespace cpu
}  // namespace shapcam
