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

// The regression sampler's pairs [j0, j1) of n players (csrc/include/shapcam/pairs.h): any of
// masks [2B, n] bool (S_j, then its complement), packed [B, ceil(n / 8)] (S_j's bits as
// numpy.packbits writes them) and sizes [B] int64 may be null. thresholds [n_thr], mid [n_thr + 1].
void regression_pairs(uint64_t seed, int64_t j0, int64_t j1, int64_t n, const uint64_t* thresholds,
                      int64_t n_thr, const int64_t* mid, bool* masks, uint8_t* packed,
                      int64_t* sizes);

// The pairs' residual moments of one block of the regression estimate (shapcam/regression.py,
// Fit): pairs packed [B, ceil(n / 8)] (row b in fold b % F), dY [B, mw] = v(S) - v(N minus S),
// the folds' surrogates beta [F, n, mw] and size terms sterm [F, n + 1, mw], q [n + 1]. With
// d_b = ((dY_b - sum_i (z_i ? beta_i : -beta_i)) - sterm[s_b]) / q[s_b] and w_i = 1/s or -1/(n-s):
// U [F, n, mw] = sum over fold f's rows of w d, V [F, n, mw] = sum of (w w)(d d), and where U3 is
// not null U3 = sum of (w d)((w w)(d d)), U4 = sum of ((w w)(d d))^2, each summed in row order
// (players in order within the sum over i), so the NumPy twin gives the same bits.
void regression_moments(const uint8_t* packed, int64_t B, int64_t n, int64_t F, int64_t mw,
                        const double* dY, const double* beta, const double* sterm, const double* q,
                        double* U, double* V, double* U3 = nullptr,
                        double* U4 = nullptr);

// The fit's Gram sums of one block of pairs (shapcam/regression.py, Fit._add_pairs), added in
// place: row b (fold b % F) has features a = (z_0 - z_last, .., z_{n-2} - z_last, sizefeat[s]) and
// weight wt[s]; G [F, p, p] (p = n - 1 + k) gets (wt a_j) a_c added for c >= j (the lower triangle
// is left alone: the caller mirrors; G may be null), h [F, p, mw] gets a_j (dt_b (wt / 2)). Rows are
// added in order.
void regression_gram(const uint8_t* packed, int64_t B, int64_t n, int64_t F, int64_t k, int64_t mw,
                     const double* sizefeat, const double* wt, const double* dt, double* G,
                     double* h);

// The integer statistics of one block of pairs that the fit's Gram matrices are made of
// (shapcam/regression.py, pair_counts), added in place. Row b (fold f = b % F) is taken on the
// pair's smaller side (S_b when 2 s_b <= n, else its complement), of size t <= n / 2; with z its
// players but the last (z_j for j < n - 1) and l whether it holds the last, at [f, t]:
// N [F, n/2 + 1, n - 1, n - 1] gets z_j z_c for c >= j (the lower triangle is left alone),
// S1 [F, n/2 + 1, n - 1] gets z, SL the same shape gets l z, C [F, n/2 + 1] gets 1 and CL gets l.
// n <= 64: the rows of a fold and size are counted bit-sliced, 64 to a word per player.
void regression_counts(const uint8_t* packed, int64_t B, int64_t n, int64_t F, int64_t* N,
                       int64_t* S1, int64_t* SL, int64_t* C, int64_t* CL);

// The regression estimate's tail (shapcam/regression.py, estimate_tail) from the folds' solutions
// sol [F, p, mw] (p = n - 1 + k): beta_f (sol's first n - 1 rows, the last D - their sum), the
// folds' base Tb + L (n beta_i - sum beta) / (n (n - 1)), sterm [F, n + 1, mw] = X2 [n + 1, k] times
// sol's last k rows; then for each block of PB of the M pairs (packed [M, ceil(n / 8)], values
// P [2M, mw], dY = P[2b] - P[2b + 1]) regression_moments and the block's mean and M2 of the pairs'
// estimates, merged in block order (accumulate.h merge_block) into mean, m2 [n, mw]; where m4 is not
// null, m4 [n, mw] = the sum over the pairs of (psi - mean)^4 (from each fold's power sums of w d,
// regression_moments' U3, U4, over all blocks: the pooled kurtosis of the interval's degrees of
// freedom). Every sum runs in order from its first term (players, size terms, folds, blocks), so
// the NumPy twin gives the same bits.
void regression_tail(const uint8_t* packed, int64_t M, int64_t n, int64_t F, int64_t k, int64_t mw,
                     int64_t PB, const double* P, const double* sol, const double* D,
                     const double* Tb, int64_t L, const double* X2, const double* q, double* mean,
                     double* m2, double* m4 = nullptr);

// The fit's folds' systems (shapcam/regression.py, cholesky): the Cholesky factor of each
// A_f + lam_f I, A [F, p, p] symmetric (its upper triangle, row by row, is what is read), lam_f =
// ridge * (tr A_f / p, or 1 where that is not positive), the trace summed in order: A_f + lam_f I =
// U_f^T U_f with U [F, p, p] upper triangular (row-major), mirrored below the diagonal (U[i][j] =
// U[j][i], which regression_cholsolve reads: a row is contiguous, a column is not). ok [F]
// gets 1, or 0 where a pivot was not positive (that fold's U is then unspecified). Column j: s_i =
// sum over k < j of U[k][i] U[k][j] from its first term in k order, U[j][i] = (A[j][i] - s_i) /
// U[j][j] and U[j][j] = sqrt((A[j][j] - s_j) + lam_f), so the NumPy twin gives the same bits.
void regression_cholesky(const double* A, int64_t F, int64_t p, double ridge, double* U,
                         uint8_t* ok);

// x [F, p, mw] = (U_f^T U_f)^-1 h [F, p, mw] (x not overlapping h) from U of regression_cholesky
// (both triangles), by columns in place: U^T y = h from the first (y_k /= U[k][k], then y_j -=
// U[k][j] y_k for j > k), then U x = y from the last (x_k = y_k / U[k][k], then y_j -= U[j][k]
// x_k for j < k, U[j][k] read from its mirror U[k][j]).
void regression_cholsolve(const double* U, int64_t F, int64_t p, int64_t mw, const double* h,
                          double* x);

// The regression estimate from its right sides on (shapcam/regression.py, Fit.estimate, where the
// folds' factors are known): the right sides h [F, p, mw] of pairs W..M-1 (regression_gram on
// dt_b = (P[2b] - P[2b + 1]) - (2 z_last - 1) D, fold b % F counted from W), added to hW [F, p, mw]
// (the whole blocks' own, or nullptr); hs_f = hE [p, mw] + (sum of h over the folds in order - h_f);
// sol = regression_cholsolve(U, hs); then regression_tail into mean, m2 [n, mw]. The NumPy twin
// composes the same steps, so it gives the same bits.
void regression_finish(const uint8_t* packed, int64_t M, int64_t W, int64_t n, int64_t F, int64_t k,
                       int64_t mw, int64_t PB, const double* P, const double* D,
                       const double* sizefeat, const double* wt, const double* hE,
                       const double* hW, const double* U, const double* Tb, int64_t L,
                       const double* X2, const double* q, double* mean, double* m2, double* m4 = nullptr);

// The enumerated rows' share of the regression estimate (shapcam/regression.py,
// Fit._enumerated_part), one chunk of R rows with values Y [R, mw]: Tb [n, mw] += W^T Y (W [R, n])
// and hE [p, mw] += AW^T t (AW [R, p]; skipped where hE is null), t_r = (Y_r - v0) - last_r D;
// each element adds its terms one at a time in row order onto what it holds (the NumPy twin's
// bits; chunks in order give the bits of one chunk).
void regression_enum(const double* Y, int64_t R, int64_t n, int64_t p, int64_t mw, const double* W,
                     const double* AW, const double* last, const double* v0, const double* D,
                     double* Tb, double* hE);

// Threads the CPU ops use (OpenMP's default: the cores available).
int num_threads();

}  // namespace cpu
}  // namespace shapcam
