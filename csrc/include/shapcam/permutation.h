// permutation.h — the permutation contract: permutation k of n players under a seed.
//
// One place for the idea, compiled for host and device (twin: shapcam/reference.py).
//   key      = (seed & 0xffffffff, seed >> 32)
//   group g  = the sampling design: permutations per sample (the unit of the standard error)
//              1 plain; 2 antithetic (pi, reverse(pi)); 4 stratified (pi, reverse(pi),
//              rotate(pi, n/2), reverse(rotate(pi, n/2)))
//   base     = k / g                          (the g permutations of a sample share one draw)
//   draw d   = word d % 4 of philox(ctr = (d / 4, base & 0xffffffff, base >> 32, 0), key)
//   Fisher–Yates: perm = identity; for i = n-1 .. 1: j = bounded(draw_{n-1-i}, i+1); swap(perm[i], perm[j])
//   bounded(r, m) = (r * m) >> 32 (Lemire's multiply-shift, no rejection: bias <= m / 2^32,
//   under 1e-5 for n up to 40 000 players — far below the Monte-Carlo error, and pure integer
//   arithmetic, so every engine gets the same bits.)
//   variant  = k % g, applied to the drawn permutation (group_variant below)
//   rank[perm[t]] = t; player p is in the prefix coalition of size t iff rank[p] < t.
#pragma once
#include "philox.h"

namespace shapcam {

// Number of Philox blocks (4 words each) that the n-1 Fisher–Yates draws need.
SHAPCAM_HD int64_t draw_blocks(int64_t n) { return n > 1 ? (n - 1 + 3) / 4 : 0; }

// Sampling designs (`group`, permutations per sample). Each permutation of a group is uniformly
// distributed on its own (a reverse or a rotation of a uniform permutation is uniform), so every
// design is unbiased; groups are independent, so the standard error is taken over groups.
constexpr int kPlain = 1, kAntithetic = 2, kStratified = 4;
SHAPCAM_HD bool valid_group(int64_t group) {
  return group == kPlain || group == kAntithetic || group == kStratified;
}

// The base counter of permutation k: the permutations of a group share one.
SHAPCAM_HD uint64_t permutation_base(int64_t k, int group) {
  return static_cast<uint64_t>(k / group);
}

// Philox block j of the draws of the permutation with base counter `base`.
SHAPCAM_HD void draw_block(uint64_t seed, uint64_t base, uint32_t j, uint32_t out[4]) {
  const uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  const uint32_t ctr[4] = {j, static_cast<uint32_t>(base), static_cast<uint32_t>(base >> 32), 0u};
  philox4x32_10(ctr, key, out);
}

// Words of scratch that hold the draws and, once Fisher–Yates is done, the ranks.
SHAPCAM_HD int64_t scratch_words(int64_t n) {
  const int64_t d = 4 * draw_blocks(n);
  return d > n ? d : n;
}

// Words one permutation occupies in a global-memory workspace (CUDA, n beyond shared memory):
// scratch_words(n) that end holding the ranks (first n), then the permutation itself (n).
SHAPCAM_HD int64_t permutation_work_words(int64_t n) { return scratch_words(n) + n; }

SHAPCAM_HD uint32_t bounded(uint32_t r, uint32_t m) {
  return static_cast<uint32_t>((static_cast<uint64_t>(r) * m) >> 32);
}

// Fisher–Yates over precomputed draws (draws[d], d = 0..n-2); perm must hold n slots.
// Serial by nature; the draws before it are what can be parallel.
template <typename Index>
SHAPCAM_HD void fisher_yates(const uint32_t* draws, int64_t n, Index* perm) {
  for (int64_t i = 0; i < n; ++i) perm[i] = static_cast<Index>(i);
  for (int64_t i = n - 1; i >= 1; --i) {
    const int64_t j = bounded(draws[n - 1 - i], static_cast<uint32_t>(i + 1));
    const Index tmp = perm[i];
    perm[i] = perm[j];
    perm[j] = tmp;
  }
}

// Reverse perm[lo, hi) in place.
template <typename Index>
SHAPCAM_HD void reverse_range(Index* perm, int64_t lo, int64_t hi) {
  for (int64_t a = lo, b = hi - 1; a < b; ++a, --b) {
    const Index tmp = perm[a];
    perm[a] = perm[b];
    perm[b] = tmp;
  }
}

// Antithetic partner: permutation 2j+1 is permutation 2j read backwards.
template <typename Index>
SHAPCAM_HD void reverse_in_place(Index* perm, int64_t n) { reverse_range(perm, 0, n); }

// Permutation k of its group, from the group's drawn permutation pi (in place). Variant v = k % g:
// bit 0 reverses; bit 1 (stratified only) rotates left by h = n / 2 first, which puts each player
// half the positions away, so over the group of 4 a player at position t also sits at n-1-t,
// t +- h and their mirror: position strata spread evenly (Castro et al. 2017; Mitchell et al. 2022
// call such sets structured blocks, antithetic pairs being the block of 2). rotate = reverse
// [0,h), reverse [h,n), reverse all; so reverse(rotate) is the first two reversals alone.
template <typename Index>
SHAPCAM_HD void group_variant(Index* perm, int64_t n, int64_t k, int group) {
  const int64_t v = k % group;
  if (group == kStratified && (v & 2)) {
    const int64_t h = n / 2;
    reverse_range(perm, 0, h);
    reverse_range(perm, h, n);
    if (!(v & 1)) reverse_range(perm, 0, n);
  } else if (v & 1) {
    reverse_range(perm, 0, n);
  }
}

// Serial version for one thread: perm[n], scratch draws[4 * draw_blocks(n)].
template <typename Index>
SHAPCAM_HD void permutation(uint64_t seed, int64_t k, int64_t n, int group, uint32_t* draws,
                            Index* perm) {
  const uint64_t base = permutation_base(k, group);
  const int64_t blocks = draw_blocks(n);
  for (int64_t j = 0; j < blocks; ++j) draw_block(seed, base, static_cast<uint32_t>(j), draws + 4 * j);
  fisher_yates(draws, n, perm);
  group_variant(perm, n, k, group);
}

}  // namespace shapcam
