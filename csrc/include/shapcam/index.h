// index.h — the evaluation index space and the prefix-mask test (host and device).
//
// Evaluations are e = (k, t) for permutation k and prefix size t = 1..n-1 (t = 0 and t = n are the
// shared endpoints v(none) and v(all), evaluated once). e = k * (n - 1) + (t - 1).
#pragma once
#include "common.h"

namespace shapcam {

struct EvalIndex {
  int64_t k;  // permutation
  int64_t t;  // prefix size, 1..n-1
};

SHAPCAM_HD int64_t evals_per_permutation(int64_t n) { return n - 1; }

SHAPCAM_HD EvalIndex eval_index(int64_t e, int64_t n) {
  const int64_t per = n - 1;
  return EvalIndex{e / per, e % per + 1};
}

// Player with rank r (its position in the permutation) is in the prefix of size t iff r < t.
SHAPCAM_HD bool in_prefix(int32_t rank, int64_t t) { return rank < t; }

// Samples are what the standard error is taken over: a group of permutations (permutation.h).
SHAPCAM_HD int64_t permutations_per_sample(int group) { return group; }

}  // namespace shapcam
