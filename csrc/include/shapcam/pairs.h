// pairs.h — the regression sampler's pair contract: pair j of n players under a seed
// (twin: shapcam/regression.py, pair_sizes and pair_sets).
//
//   size s_j  = mid[#{thresholds <= word}], word = word 0 of
//               philox(ctr = (0, j & 0xffffffff, j >> 32, 1), key(seed))   (lane 1: apart from the
//               permutations' draws, which use lane 0)
//   t_j       = min(s_j, n - s_j): the smaller side of the pair
//   T_j       = the players at positions n-1 .. n-t_j of plain permutation j (permutation.h): the
//               first t_j steps of its Fisher–Yates fix exactly those positions, so a pair needs
//               t_j draws (ceil(t_j / 4) Philox blocks) instead of n - 1 — 2.2 blocks instead of 8
//               at n = 30 under the sampler's size distribution.
//   S_j       = T_j when 2 s_j <= n, else the other n - t_j players. Either way S_j is a uniform
//               coalition of size s_j; the pair is (S_j, N minus S_j).
#pragma once
#include "permutation.h"

namespace shapcam {

// The size a pair's size word gives: mid[#{thresholds <= word}]; thresholds [n_thr] ascending
// (uint64 thresholds of a 32-bit word), mid [n_thr + 1].
SHAPCAM_HD int64_t pair_size_of_word(uint64_t word, const uint64_t* thresholds, int64_t n_thr,
                                     const int64_t* mid) {
  // #{thresholds <= word} by bisection over the candidates [lo, lo + len): a trip count fixed by
  // n_thr and a select instead of a branch on the (random) word
  int64_t lo = 0, len = n_thr + 1;
  while (len > 1) {
    const int64_t half = len / 2;
    lo = thresholds[lo + half - 1] <= word ? lo + half : lo;
    len -= half;
  }
  return mid[lo];
}

// Size of pair j (its size word: word 0 of the Philox block at counter (0, j, 1)).
SHAPCAM_HD int64_t pair_size(uint64_t seed, uint64_t j, const uint64_t* thresholds, int64_t n_thr,
                             const int64_t* mid) {
  const uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  const uint32_t ctr[4] = {0u, static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32), 1u};
  uint32_t out[4];
  philox4x32_10(ctr, key, out);
  return pair_size_of_word(out[0], thresholds, n_thr, mid);
}

// The smaller side T_j of pair j: its t players into side[0..t), in the order Fisher–Yates fixes
// them (position n-1 first). perm [n] must hold the identity on entry and holds it again on return
// (the positions the t swaps touched are reset, using steps [t] as scratch), so a caller
// initialises it once for many pairs.
template <typename Index>
SHAPCAM_HD void pair_small_side(uint64_t seed, uint64_t j, int64_t n, int64_t t, Index* perm,
                                Index* side, Index* steps) {
  uint32_t words[4];
  int64_t i = n - 1;
  for (int64_t d = 0; d < t; ++d, --i) {
    if (d % 4 == 0) draw_block(seed, j, static_cast<uint32_t>(d / 4), words);
    const int64_t r = bounded(words[d % 4], static_cast<uint32_t>(i + 1));
    steps[d] = static_cast<Index>(r);
    const Index tmp = perm[i];
    perm[i] = perm[r];
    perm[r] = tmp;
    side[d] = perm[i];
  }
  for (int64_t d = 0; d < t; ++d) {
    perm[n - 1 - d] = static_cast<Index>(n - 1 - d);
    perm[steps[d]] = steps[d];
  }
}

}  // namespace shapcam
