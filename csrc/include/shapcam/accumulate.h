// accumulate.h — one Welford step and the marginal contribution of one player in one permutation.
//
// The estimate is the mean over samples of the per-player marginals (the paper's Eq. 6); a sample
// is the average of one group of permutations (one, an antithetic pair, a stratified block of
// 4: permutation.h). Welford's update keeps the running
// mean and the sum of squared deviations M2 in float64 without the cancellation of sum/sum-of-
// squares. Samples are pushed in a fixed order (sample index), so results do not depend on how
// evaluations were chunked. Host and device share this code; the twin is shapcam/reference.py.
#pragma once
#include "common.h"

namespace shapcam {

// v(prefix_t) of permutation `kk` (0-based within the block of values) for t = 0..n:
// values: [P * (n - 1), m] row-major, endpoints shared. Output column c.
SHAPCAM_HD double prefix_value(const double* values, const double* v_empty, const double* v_full,
                               int64_t kk, int64_t t, int64_t n, int64_t m, int64_t c) {
  if (t == 0) return v_empty[c];
  if (t == n) return v_full[c];
  return values[(kk * (n - 1) + (t - 1)) * m + c];
}

// Marginal contribution of the player with rank r in permutation kk: v(prefix_{r+1}) - v(prefix_r).
SHAPCAM_HD double marginal(const double* values, const double* v_empty, const double* v_full,
                           int64_t kk, int32_t r, int64_t n, int64_t m, int64_t c) {
  return prefix_value(values, v_empty, v_full, kk, r + 1, n, m, c) -
         prefix_value(values, v_empty, v_full, kk, r, n, m, c);
}

// Welford: push sample x as the count-th sample (count >= 1).
SHAPCAM_HD void welford_push(double x, int64_t count, double* mean, double* m2) {
  const double delta = x - *mean;
  *mean += delta / static_cast<double>(count);
  *m2 += delta * (x - *mean);
}

// Chan, Golub & LeVeque's pairwise update: fold a finished block (mu, s2 over nb samples) into the
// base state (base_mu, base_s2 over na samples, a copy when na = 0). The weights are divided first,
// then multiplied elementwise: the same operations, in the same order, as shapcam.estimator._merge,
// which merges the blocks of other workers on the host.
SHAPCAM_HD void merge_block(double* base_mu, double* base_s2, int64_t na, double mu, double s2,
                            int64_t nb) {
  if (na == 0) {
    *base_mu = mu;
    *base_s2 = s2;
    return;
  }
  const double total = static_cast<double>(na + nb);
  const double delta = mu - *base_mu;
  *base_mu = *base_mu + delta * (static_cast<double>(nb) / total);
  *base_s2 = (*base_s2 + s2) + delta * delta * (static_cast<double>(na) * static_cast<double>(nb) / total);
}

// One (player p, output c) cell of the accumulation: push n_samples samples, in sample order, into
// its Welford state (mean and m2 at [p, c] of [n, m]). rank: [n_samples * pps, n], the ranks of
// the samples' permutations; values: their evaluations as for prefix_value; count0: samples pushed
// before. The CPU engine runs it per cell on threads, the CUDA engine one cell per thread: the
// order of the arithmetic is this function's, so both give the same bits.
//
// Blocks (block > 0): the sum has a fixed shape that does not depend on who computes what. Sample
// i is pushed into the state of its block (block consecutive samples, from zero); a finished block
// is folded into the base (base_mean, base_m2) in block order. With count0 samples pushed before,
// the base holds samples [0, count0 - count0 % block) and mean/m2 the rest. block = 0: one
// running state (base unused).
SHAPCAM_HD void accumulate_cell(const double* values, const double* v_empty, const double* v_full,
                                const int32_t* rank, int64_t n_samples, int64_t n, int64_t m,
                                int group, int64_t p, int64_t c, int64_t count0,
                                double* mean, double* m2, int64_t block, double* base_mean,
                                double* base_m2) {
  const int64_t cell = p * m + c;
  double mu = mean[cell], s2 = m2[cell];
  double bmu = block > 0 ? base_mean[cell] : 0.0, bs2 = block > 0 ? base_m2[cell] : 0.0;
  for (int64_t s = 0; s < n_samples; ++s) {
    // The group's mean marginal: summed in permutation order, then one multiplication by the
    // reciprocal (exact for 1, 2, 4), the same in every engine.
    const int64_t k0 = s * group;
    double x = marginal(values, v_empty, v_full, k0, rank[k0 * n + p], n, m, c);
    for (int64_t g = 1; g < group; ++g) {
      x += marginal(values, v_empty, v_full, k0 + g, rank[(k0 + g) * n + p], n, m, c);
    }
    if (group > 1) x = x * (1.0 / static_cast<double>(group));
    const int64_t i = count0 + s;  // this sample's index
    const int64_t in_block = block > 0 ? i % block : i;
    welford_push(x, in_block + 1, &mu, &s2);
    if (block > 0 && in_block + 1 == block) {
      merge_block(&bmu, &bs2, i + 1 - block, mu, s2, block);
      mu = 0.0;
      s2 = 0.0;
    }
  }
  mean[cell] = mu;
  m2[cell] = s2;
  if (block > 0) {
    base_mean[cell] = bmu;
    base_m2[cell] = bs2;
  }
}

}  // namespace shapcam
