// ops_cpu.cpp — CPU ops over the shared headers; see ops_cpu.h for the contracts.
#include "ops_cpu.h"
#include "threads.h"

#include <algorithm>
#include <vector>

#include "shapcam/accumulate.h"
#include "shapcam/index.h"
#include "shapcam/permutation.h"
#include "shapcam/walk.h"

namespace shapcam {
namespace cpu {

// Built without OpenMP (a compiler that lacks it), the pragmas below are ignored: one thread.
int num_threads() { return team_size(); }

namespace {
int max_team() { return team_size(); }

// Work (in elements) under which an op runs on one thread. A parallel region costs little on an
// idle machine, but after a BLAS call (NumPy's or torch's spinning worker threads) waking the
// team on a 2-core machine was measured at 10-20 ms for a 0.4 ms op: only large ops fan out.
constexpr int64_t kParallelMin = int64_t(1) << 18;
}  // namespace

void permutations(uint64_t seed, int64_t k0, int64_t k1, int64_t n, int group, int32_t* perm,
                  int32_t* rank) {
  const int64_t K = k1 - k0;
  if (K <= 0 || (!perm && !rank)) return;
  const int team = max_team();
  const int64_t draw_words = 4 * draw_blocks(n) + 4;
  std::vector<uint32_t> draws_all(static_cast<size_t>(team) * draw_words);
  std::vector<int32_t> local_all(perm ? 0 : static_cast<size_t>(team) * n);
#pragma omp parallel if (K * n > kParallelMin) num_threads(team)
  {
    uint32_t* draws = draws_all.data() + thread_id() * draw_words;
    int32_t* local = perm ? nullptr : local_all.data() + thread_id() * n;
#pragma omp for schedule(static)
    for (int64_t kk = 0; kk < K; ++kk) {
      int32_t* p = perm ? perm + kk * n : local;
      shapcam::permutation(seed, k0 + kk, n, group, draws, p);
      if (rank) {
        int32_t* r = rank + kk * n;
        for (int64_t t = 0; t < n; ++t) r[p[t]] = static_cast<int32_t>(t);
      }
    }
  }
}

namespace {
// Ranks of every permutation that the chunk [e0, e1) touches: [k_hi - k_lo, n].
struct ChunkRanks {
  int64_t k_lo = 0;
  std::vector<int32_t> rank;
  ChunkRanks(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group) {
    k_lo = eval_index(e0, n).k;
    const int64_t k_hi = eval_index(e1 - 1, n).k + 1;
    rank.resize((k_hi - k_lo) * n);
    permutations(seed, k_lo, k_hi, n, group, nullptr, rank.data());
  }
  const int32_t* of(int64_t k, int64_t n) const { return rank.data() + (k - k_lo) * n; }
};
}  // namespace

void masks(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group, bool* out) {
  if (e1 <= e0) return;
  const ChunkRanks ranks(seed, e0, e1, n, group);
#pragma omp parallel for schedule(static) if ((e1 - e0) * n > 4 * kParallelMin)
  for (int64_t e = e0; e < e1; ++e) {
    const EvalIndex ix = eval_index(e, n);
    const int32_t* r = ranks.of(ix.k, n);
    bool* row = out + (e - e0) * n;
    for (int64_t p = 0; p < n; ++p) row[p] = in_prefix(r[p], ix.t);
  }
}

template <typename T>
void masked_apply(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group, const T* x,
                  int64_t outer, int64_t inner, const int32_t* players, const T* baseline,
                  T baseline_scalar, T* out) {
  if (e1 <= e0) return;
  const ChunkRanks ranks(seed, e0, e1, n, group);
  const int64_t numel = outer * inner;
  const int64_t total = (e1 - e0) * numel;
  // The mask of an eval is periodic in the flat index with period `inner`; a period of whole rows
  // of at least ~4 Ki elements turns short rows (inner = 49 for ResNet's 7x7 map) into long,
  // vectorisable select loops. It is held as 0/1 of type T so the select is a compare and blend.
  const int64_t period = inner * std::max<int64_t>(1, std::min<int64_t>(4096, numel) / inner);
  // Work is split into tiles of the flat output [B * numel] (a tile may span several small evals).
  constexpr int64_t kTile = 1 << 15;
  const int64_t tile_len = std::max<int64_t>(kTile, period);
  const int64_t tiles = (total + tile_len - 1) / tile_len;
  const int team = max_team();
  std::vector<T> keep_all(static_cast<size_t>(team) * period);
#pragma omp parallel if (total > 4 * kParallelMin) num_threads(team)
  {
    T* keep = keep_all.data() + thread_id() * period;
    int64_t keep_b = -1;
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t g1 = std::min(total, (tile + 1) * tile_len);
      for (int64_t g = tile * tile_len; g < g1;) {
        const int64_t b = g / numel;
        int64_t f = g - b * numel;
        const int64_t f_end = std::min(numel, f + (g1 - g));
        if (b != keep_b) {
          const EvalIndex ix = eval_index(e0 + b, n);
          const int32_t* r = ranks.of(ix.k, n);
          for (int64_t j = 0; j < inner; ++j) keep[j] = in_prefix(r[players[j]], ix.t) ? T(1) : T(0);
          for (int64_t l = inner; l < period; ++l) keep[l] = keep[l - inner];
          keep_b = b;
        }
        T* dst = out + b * numel;
        while (f < f_end) {
          const int64_t l0 = f % period;
          const int64_t len = std::min(period - l0, f_end - f);
          const T* kp = keep + l0;
          const T* xs = x + f;
          T* ds = dst + f;
          if (baseline) {
            const T* bs = baseline + f;
            for (int64_t l = 0; l < len; ++l) {
              const T xv = xs[l], bv = bs[l];  // both loaded: a branch-free select vectorises
              ds[l] = kp[l] != T(0) ? xv : bv;
            }
          } else {
            for (int64_t l = 0; l < len; ++l) {
              const T xv = xs[l];
              ds[l] = kp[l] != T(0) ? xv : baseline_scalar;
            }
          }
          f += len;
        }
        g = b * numel + f_end;
      }
    }
  }
}

template void masked_apply<float>(uint64_t, int64_t, int64_t, int64_t, int, const float*, int64_t,
                                  int64_t, const int32_t*, const float*, float, float*);
template void masked_apply<double>(uint64_t, int64_t, int64_t, int64_t, int, const double*,
                                   int64_t, int64_t, const int32_t*, const double*, double, double*);

template <typename T>
void prefix_walk(uint64_t seed, int64_t e0, int64_t e1, int64_t n, int group,
                 const T* tables, int64_t cells, int64_t size, int64_t d, const int32_t* members,
                 const int32_t* cell_of, const T* z_empty, T* out) {
  if (e1 <= e0) return;
  const int64_t per = evals_per_permutation(n);
  const int64_t subsets = int64_t(1) << size;
  const int64_t k_lo = eval_index(e0, n).k, k_hi = eval_index(e1 - 1, n).k + 1;
  const int team = max_team();
  const int64_t draw_words = 4 * draw_blocks(n) + 4;
  std::vector<uint32_t> draws_all(static_cast<size_t>(team) * draw_words);
  std::vector<int32_t> perm_all(static_cast<size_t>(team) * n), rank_all(perm_all.size());
  std::vector<T> z_all(static_cast<size_t>(team) * d);
#pragma omp parallel if ((k_hi - k_lo) * per * d > kParallelMin) num_threads(team)
  {
    const int tid = thread_id();
    uint32_t* draws = draws_all.data() + tid * draw_words;
    int32_t* perm = perm_all.data() + tid * n;
    int32_t* rank = rank_all.data() + tid * n;
    T* z = z_all.data() + tid * d;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = k_lo; k < k_hi; ++k) {
      shapcam::permutation(seed, k, n, group, draws, perm);
      for (int64_t t = 0; t < n; ++t) rank[perm[t]] = static_cast<int32_t>(t);
      for (int64_t j = 0; j < d; ++j) z[j] = z_empty[j];
      // Walk from the empty coalition to this permutation's last evaluation in the chunk.
      const int64_t last_t = std::min(per, e1 - k * per);
      for (int64_t t = 1; t <= last_t; ++t) {
        walk_to(tables, subsets, d, members, size, cell_of[perm[t - 1]], rank, n, t, 0, 1, z);
        const int64_t e = k * per + (t - 1);
        if (e >= e0) std::copy(z, z + d, out + (e - e0) * d);
      }
    }
  }
}

template void prefix_walk<float>(uint64_t, int64_t, int64_t, int64_t, int, const float*, int64_t,
                                 int64_t, int64_t, const int32_t*, const int32_t*, const float*,
                                 float*);
template void prefix_walk<double>(uint64_t, int64_t, int64_t, int64_t, int, const double*,
                                  int64_t, int64_t, int64_t, const int32_t*, const int32_t*,
                                  const double*, double*);

void accumulate(uint64_t seed, int64_t k0, int64_t n_samples, int64_t n, int64_t m, int group,
                const double* values, const double* v_empty, const double* v_full, int64_t count0,
                double* mean, double* m2, int64_t block, double* base_mean, double* base_m2) {
  if (n_samples <= 0) return;
  const int64_t pps = permutations_per_sample(group);
  const int64_t P = n_samples * pps;
  std::vector<int32_t> rank(P * n);
  permutations(seed, k0, k0 + P, n, group, nullptr, rank.data());
  // One (player, output) cell per iteration: its samples are pushed in order, so the result does
  // not depend on the thread count or on how the caller chunked the evaluations.
#pragma omp parallel for schedule(static) if (n * m * n_samples > kParallelMin)
  for (int64_t cell = 0; cell < n * m; ++cell) {
    accumulate_cell(values, v_empty, v_full, rank.data(), n_samples, n, m, group, cell / m,
                    cell % m, count0, mean, m2, block, base_mean, base_m2);
  }
}

}  // namespace cpu
}  // namespace shapcam
