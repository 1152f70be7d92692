// walk.h — the incremental prefix walk of a cell game (host and device; twin: reference.py).
//
// A cell game splits the players into disjoint cells (at most kMaxCellSize players each) and
// values a coalition S through z(S) = z_empty + sum_c (T[c, S ∩ c] - T[c, {}]), a d-vector, where
// T [cells, 2^size, d] holds each cell's contribution for every subset of its players (bit b of
// the subset index = the cell's b-th player). Along a permutation consecutive prefixes differ by
// one player p of cell c, whose subset grows from s to s | bit(p):
//   z_t[j] = z_{t-1}[j] + (T[c, s | bit(p), j] - T[c, s, j])
// which is O(d) per evaluation instead of a pass over the whole input. Every engine applies this
// same expression in the same order (z_0 = z_empty, then t = 1, 2, ...), so they agree to the bit.
#pragma once
#include "common.h"

namespace shapcam {

constexpr int kMaxCellSize = 8;  // 2^8 subsets per cell at most

// Subset index of cell `members` (size entries, -1 padded) present in the prefix of size t,
// from the permutation's ranks of n players: bit b is set iff member b has rank < t. Ids outside
// [0, n) count as padding (the host binding refuses them; on the device this keeps a bad raw
// pointer argument from reading past the ranks).
SHAPCAM_HD uint32_t cell_subset(const int32_t* members, int64_t size, const int32_t* rank, int64_t n,
                                int64_t t) {
  uint32_t s = 0;
  for (int64_t b = 0; b < size; ++b) {
    const int32_t m = members[b];
    if (m >= 0 && m < n && rank[m] < t) s |= 1u << b;
  }
  return s;
}

// One walk step for dimensions j in [j0, d) with stride js: z += T[c, hi] - T[c, lo].
template <typename T>
SHAPCAM_HD void walk_step(const T* tables, int64_t subsets, int64_t d, int64_t cell, uint32_t lo,
                          uint32_t hi, int64_t j0, int64_t js, T* z) {
  const T* a = tables + (cell * subsets + hi) * d;
  const T* b = tables + (cell * subsets + lo) * d;
  for (int64_t j = j0; j < d; j += js) z[j] = z[j] + (a[j] - b[j]);
}

// Step t of a permutation's walk (t = 1..n-1): the player at position t-1 joins; its cell is
// `cell`, whose members are members[cell * size ...]. Subsets come from the ranks, so the step
// needs no state but z.
template <typename T>
SHAPCAM_HD void walk_to(const T* tables, int64_t subsets, int64_t d, const int32_t* members,
                        int64_t size, int64_t cell, const int32_t* rank, int64_t n, int64_t t,
                        int64_t j0, int64_t js, T* z) {
  const int32_t* mine = members + cell * size;
  walk_step(tables, subsets, d, cell, cell_subset(mine, size, rank, n, t - 1),
            cell_subset(mine, size, rank, n, t), j0, js, z);
}

}  // namespace shapcam
