// accumulate.h — one Welford step and the marginal contribution of one player in one permutation.
//
// The estimate is the mean over samples of the per-player marginals (the paper's Eq. 6); a sample
// is one permutation, or the average of an antithetic pair. Welford's update keeps the running
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

// One (player p, output c) cell of the accumulation: push n_samples samples, in sample order, into
// its Welford state (mean and m2 at [p, c] of [n, m]). rank: [n_samples * pps, n], the ranks of
// the samples' permutations; values: their evaluations as for prefix_value; count0: samples pushed
// before. The CPU engine runs it per cell on threads, the CUDA engine one cell per thread: the
// order of the arithmetic is this function's, so both give the same bits.
SHAPCAM_HD void accumulate_cell(const double* values, const double* v_empty, const double* v_full,
                                const int32_t* rank, int64_t n_samples, int64_t n, int64_t m,
                                bool antithetic, int64_t p, int64_t c, int64_t count0,
                                double* mean, double* m2) {
  const int64_t cell = p * m + c;
  double mu = mean[cell], s2 = m2[cell];
  for (int64_t s = 0; s < n_samples; ++s) {
    double x;
    if (antithetic) {
      const double a = marginal(values, v_empty, v_full, 2 * s, rank[(2 * s) * n + p], n, m, c);
      const double b = marginal(values, v_empty, v_full, 2 * s + 1, rank[(2 * s + 1) * n + p], n, m, c);
      x = 0.5 * (a + b);
    } else {
      x = marginal(values, v_empty, v_full, s, rank[s * n + p], n, m, c);
    }
    welford_push(x, count0 + s + 1, &mu, &s2);
  }
  mean[cell] = mu;
  m2[cell] = s2;
}

}  // namespace shapcam
