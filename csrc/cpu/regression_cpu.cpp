// regression_cpu.cpp — the regression sampler's per-pair work (shapcam/regression.py): drawing the
// pairs' coalitions (pairs.h), the fit's statistics (integer counts, or Gram sums pair by pair, and
// the right sides) and the pairs' residual moments of the estimate. See ops_cpu.h for the contracts.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>

#include "ops_cpu.h"
#include "packed.h"
#include "pairs_x8.h"
#include "select_add.h"
#include "threads.h"
#include "shapcam/accumulate.h"
#include "shapcam/pairs.h"

namespace shapcam {
namespace cpu {

// Function clones for the CPU's instruction set, chosen when the library loads (GCC on x86-64
// with glibc's ifunc; not in sanitizer builds, whose runtime need not resolve them).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && \
    !defined(__SANITIZE_ADDRESS__)
#define SHAPCAM_CLONES 1
#else
#define SHAPCAM_CLONES 0
#endif

namespace {
// Work (pairs times the elements each touches) under which an op stays on one thread: a block of
// the estimate (4096 pairs at n = 30) takes ~0.5 ms, and on the 2-core VM a team of 2 made a whole
// run 2x slower (waking it, and NumPy's BLAS threads spinning beside it), 7% faster at best with
// OPENBLAS_NUM_THREADS=1. Only much larger blocks fan out.
constexpr int64_t kFanOut = int64_t(1) << 24;
// Rows of one fold that the Gram sums take together (regression_gram), and that the moments and
// the right sides alone do (8 rows' sums over the players as independent chains, 0.33 -> 0.30 ms
// a run at n = 30, K = 1024, against 4; 16 gain nothing more). Any group size gives the same bits.
constexpr int64_t kRows = 4;
constexpr int64_t kMomentRows = kSignedRows;

// Zeroed per-thread scratch of `count` elements. A size that cannot be had is std::bad_alloc (a
// MemoryError in Python) from here, not from inside the allocator, which sanitizer builds abort in.
template <typename T>
std::unique_ptr<T[]> scratch(size_t count) {
  std::unique_ptr<T[]> p(new (std::nothrow) T[count]());
  if (!p) throw std::bad_alloc();
  return p;
}

}  // namespace

namespace {
// One pair's outputs from its size s and its smaller side T as a word (player p at bit p ^ 7,
// n <= 64): S = T when 2 s <= n, else the other players; row b of sizes, of packed (S) and of
// masks (S, then its complement), each where not null. A mask row is written 8 bytes a store
// (packed.h's spread of a byte). With n >= 8 a row's last store runs the 8 nb - n < 8 <= n bytes
// past its end into the next row, which is written after it; the last row of a run of pairs
// (last = true; the next may be another thread's, or past the buffer) ends exactly, as every row
// does with n < 8.
inline void write_pair(int64_t b, int64_t n, int64_t s, uint64_t small_side, uint64_t all,
                       bool* masks, uint8_t* packed, int64_t* sizes, bool last) {
  const int64_t nb = (n + 7) / 8;
  const uint64_t S = 2 * s <= n ? small_side : ~small_side & all;
  uint8_t bytes[8];
  std::memcpy(bytes, &S, 8);  // little-endian: byte k holds players 8k .. 8k + 7
  if (sizes) sizes[b] = s;
  if (packed) std::memcpy(packed + b * nb, bytes, size_t(nb));
  if (!masks) return;
  const int64_t k = nb - 1;  // the rows' last store
  const size_t tail = size_t(n - 8 * k);
  const bool spill = n >= 8;
  bool* rs = masks + 2 * b * n;
  bool* rc = rs + n;
  for (int64_t c = 0; c < k; ++c) std::memcpy(rs + 8 * c, &kPacked.spread[bytes[c]], 8);
  std::memcpy(rs + 8 * k, &kPacked.spread[bytes[k]], spill ? size_t(8) : tail);
  for (int64_t c = 0; c < k; ++c)
    std::memcpy(rc + 8 * c, &kPacked.spread[static_cast<uint8_t>(~bytes[c])], 8);
  const uint64_t out = kPacked.spread[static_cast<uint8_t>(~bytes[k])];
  std::memcpy(rc + 8 * k, &out, spill && !last ? size_t(8) : tail);
}

#ifdef SHAPCAM_SELECT_AVX2
// regression_pairs for n <= kComposedPlayers with AVX2 (pairs_x8.h): 8 pairs at a time, their
// sizes' and sides' Philox blocks as vectors, the sides composed in registers. The same words,
// hence the same sets, as the loop one pair at a time.
__attribute__((target("avx2"))) void pairs_x8(uint64_t seed, int64_t j0, int64_t B, int64_t n,
                                              const uint64_t* thresholds, int64_t n_thr,
                                              const int64_t* mid, bool* masks, uint8_t* packed,
                                              int64_t* sizes) {
  uint64_t all = 0;  // the n players' bits
  for (int64_t p = 0; p < n; ++p) all |= uint64_t(1) << (p ^ 7);
  const int64_t chunks = (B + kPairLanes - 1) / kPairLanes;
#pragma omp parallel for schedule(static) if (B * n > kFanOut)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b0 = c * kPairLanes;
    const int64_t L = std::min<int64_t>(kPairLanes, B - b0);
    uint32_t lo[kPairLanes], hi[kPairLanes];
    for (int l = 0; l < kPairLanes; ++l) {  // lanes past the last pair repeat it
      const uint64_t j = static_cast<uint64_t>(j0) + static_cast<uint64_t>(b0 + std::min<int64_t>(l, L - 1));
      lo[l] = static_cast<uint32_t>(j);
      hi[l] = static_cast<uint32_t>(j >> 32);
    }
    uint32_t size_words[4][kPairLanes];
    philox_x8(0u, lo, hi, 1u, seed, size_words);  // pair_size's counters
    int64_t s[kPairLanes], t[kPairLanes], tmax = 0;
    for (int64_t l = 0; l < L; ++l) {
      s[l] = pair_size_of_word(size_words[0][l], thresholds, n_thr, mid);
      t[l] = std::min(s[l], n - s[l]);
      tmax = std::max(tmax, t[l]);
    }
    // words[d][l]: draw d of lane l (draw_block(seed, j, d / 4), word d % 4)
    uint32_t words[kComposedPlayers / 2][kPairLanes];
    for (int64_t k = 0; 4 * k < tmax; ++k)
      philox_x8(static_cast<uint32_t>(k), lo, hi, 0u, seed, &words[4 * k]);
    uint64_t side[kPairLanes];
    small_sides_x8(words, n, t, tmax, L, side);
    for (int64_t l = 0; l < L; ++l)  // a chunk's last row ends exactly (the next chunk may be another thread's)
      write_pair(b0 + l, n, s[l], side[l], all, masks, packed, sizes, l == L - 1);
  }
}
#endif
}  // namespace

void regression_pairs(uint64_t seed, int64_t j0, int64_t j1, int64_t n, const uint64_t* thresholds,
                      int64_t n_thr, const int64_t* mid, bool* masks, uint8_t* packed,
                      int64_t* sizes) {
  const int64_t B = j1 - j0;
  if (B <= 0) return;
#ifdef SHAPCAM_SELECT_AVX2
  if (n <= kComposedPlayers && have_avx2())
    return pairs_x8(seed, j0, B, n, thresholds, n_thr, mid, masks, packed, sizes);
#endif
  const int64_t nb = (n + 7) / 8;
  const int team = num_threads();
  const auto scratch_all = scratch<int32_t>(static_cast<size_t>(team) * 3 * n);
#pragma omp parallel if (B * n > kFanOut) num_threads(team)
  {
    const int tid = thread_id();
    int32_t* perm = scratch_all.get() + static_cast<size_t>(tid) * 3 * n;
    int32_t* side = perm + n;
    int32_t* steps = side + n;
    for (int64_t p = 0; p < n; ++p) perm[p] = static_cast<int32_t>(p);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      const uint64_t j = static_cast<uint64_t>(j0 + b);
      const int64_t s = pair_size(seed, j, thresholds, n_thr, mid);
      const bool small = 2 * s <= n;  // S_j is the smaller side itself
      const int64_t t = small ? s : n - s;
      pair_small_side(seed, j, n, t, perm, side, steps);
      if (sizes) sizes[b] = s;
      if (masks) {
        bool* rs = masks + 2 * b * n;
        bool* rc = rs + n;
        std::fill(rs, rs + n, !small);
        std::fill(rc, rc + n, small);
        for (int64_t d = 0; d < t; ++d) {
          rs[side[d]] = small;
          rc[side[d]] = !small;
        }
      }
      if (packed) {
        uint8_t* row = packed + b * nb;
        std::fill(row, row + nb, small ? uint8_t(0) : uint8_t(0xff));
        if (!small) row[nb - 1] = last_byte_mask(n);  // bits past the last player stay 0
        for (int64_t d = 0; d < t; ++d) row[side[d] >> 3] ^= static_cast<uint8_t>(0x80 >> (side[d] & 7));
      }
    }
  }
}

namespace {
// regression_moments, with U3 and U4 (Higher) or without: a template, so the loops without them
// carry no test for them (~2 ns a pair).
template <bool Higher>
void moments_impl(const uint8_t* packed, int64_t B, int64_t n, int64_t F, int64_t mw,
                  const double* dY, const double* beta, const double* sterm, const double* q,
                  double* U, double* V, double* U3, double* U4) {
  const int64_t nb = (n + 7) / 8;
  const int64_t cells = n * mw;
  std::fill(U, U + F * cells, 0.0);
  std::fill(V, V + F * cells, 0.0);
  if (Higher) {
    std::fill(U3, U3 + F * cells, 0.0);
    std::fill(U4, U4 + F * cells, 0.0);
  }
  const int team = num_threads();
  const auto d_all = scratch<double>(static_cast<size_t>(team) * mw);
  const int64_t zs = 8 * nb;  // bytes of one unpacked row
  const auto z_all = scratch<uint8_t>(static_cast<size_t>(team) * kMomentRows * zs);
  // Folds are independent accumulators: one thread per fold, each summing its rows in order.
#pragma omp parallel for schedule(static) num_threads(team) if (B * cells > kFanOut)
  for (int64_t f = 0; f < F; ++f) {
    const int tid = thread_id();
    double* d = d_all.get() + static_cast<size_t>(tid) * mw;
    uint8_t* z = z_all.get() + static_cast<size_t>(tid) * kMomentRows * zs;
    int64_t ss[kMomentRows];
    const double* bf = beta + f * cells;
    const double* sf = sterm + f * (n + 1) * mw;
    double* Uf = U + f * cells;
    double* Vf = V + f * cells;
    double* U3f = Higher ? U3 + f * cells : nullptr;
    double* U4f = Higher ? U4 + f * cells : nullptr;
    // Selects are table lookups by z (0 or 1), not branches: z is a coin flip per player, and
    // mispredicted branches cost more than the arithmetic (g++ turns a ?: of doubles into one;
    // masking the bits instead measured 2x slower). Rows go in groups of kMomentRows: their sums
    // over the players run as independent chains, and each U, V element is loaded once per group
    // and gets the group's terms added one row at a time, in row order (the twin's bits).
    const double sign[2] = {-1.0, 1.0};
    double wt[kMomentRows][2], w2t[kMomentRows][2];
    int64_t b = f;
    bool first = true;
    while (b < B) {
      // a group of kMomentRows rows where they are there, else of 8 (at n = 30, K = 16 a fold
      // has ~25 rows), else one
      const int64_t R = (mw != 1 || first) ? 1
                        : b + (kMomentRows - 1) * F < B ? kMomentRows
                        : b + 7 * F < B ? 8 : 1;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t s = unpack_row(packed + (b + r * F) * nb, n, z + r * zs);
        ss[r] = s;
        const double wn = -1.0 / static_cast<double>(n - s), wp = 1.0 / static_cast<double>(s);
        wt[r][0] = wn;
        wt[r][1] = wp;
        w2t[r][0] = wn * wn;
        w2t[r][1] = wp * wp;
      }
      if (R > 1) {
        // d = ((v(S) - v(N minus S) - f's difference) - f's size terms) / q(s); f's difference
        // sum_i (z_i ? beta_i : -beta_i) over the players in order (x -1.0 is exact)
        double acc[kMomentRows];
        const uint8_t* rows[kMomentRows];
        for (int64_t r = 0; r < R; ++r) rows[r] = packed + (b + r * F) * nb;
        signed_sums(rows, z, zs, R, n, bf, acc);
        double tp[kMomentRows][2], t2[kMomentRows][2], t3[kMomentRows][2], t4[kMomentRows][2];
        for (int64_t r = 0; r < R; ++r) {
          const int64_t row = b + r * F;
          const double dr = ((dY[row] - acc[r]) - sf[ss[r]]) / q[ss[r]];
          const double dd = dr * dr;
          for (int c = 0; c < 2; ++c) {
            tp[r][c] = wt[r][c] * dr;
            t2[r][c] = w2t[r][c] * dd;
          }
          if (Higher)
            for (int c = 0; c < 2; ++c) {
              t3[r][c] = tp[r][c] * t2[r][c];
              t4[r][c] = t2[r][c] * t2[r][c];
            }
        }
        select_add(z, zs, R, n, &tp[0][0], Uf, &t2[0][0], Vf);
        if (Higher) select_add(z, zs, R, n, &t3[0][0], U3f, &t4[0][0], U4f);
        b += R * F;
        continue;
      }
      // one row, any mw
      for (int64_t o = 0; o < mw; ++o) {
        double acc = sign[z[0]] * bf[o];
        for (int64_t i = 1; i < n; ++i) acc = acc + sign[z[i]] * bf[i * mw + o];
        d[o] = ((dY[b * mw + o] - acc) - sf[ss[0] * mw + o]) / q[ss[0]];
      }
      for (int64_t i = 0; i < n; ++i) {
        const double wi = wt[0][z[i]], w2i = w2t[0][z[i]];
        double* u = Uf + i * mw;
        double* v = Vf + i * mw;
        for (int64_t o = 0; o < mw; ++o) {
          const double t = wi * d[o];
          const double tt = w2i * (d[o] * d[o]);
          // the fold's first row starts its sums (0.0 + x would turn -0.0 into +0.0)
          u[o] = first ? t : u[o] + t;
          v[o] = first ? tt : v[o] + tt;
          if (Higher) {
            const double t3 = t * tt, t4 = tt * tt;
            double* u3 = U3f + i * mw + o;
            double* u4 = U4f + i * mw + o;
            *u3 = first ? t3 : *u3 + t3;
            *u4 = first ? t4 : *u4 + t4;
          }
        }
      }
      first = false;
      b += F;
    }
  }
}
}  // namespace

void regression_moments(const uint8_t* packed, int64_t B, int64_t n, int64_t F, int64_t mw,
                        const double* dY, const double* beta, const double* sterm, const double* q,
                        double* U, double* V, double* U3, double* U4) {
  if (U3)
    moments_impl<true>(packed, B, n, F, mw, dY, beta, sterm, q, U, V, U3, U4);
  else
    moments_impl<false>(packed, B, n, F, mw, dY, beta, sterm, q, U, V, nullptr, nullptr);
}

namespace {
// G += (w a) a^T on and above the diagonal (the twin mirrors it the same way) and h += a e^T for
// R rows (kRows or 1) of features a [R, p], w a [R, p] and e [R, mw], each element getting the
// rows' terms one at a time in row order. AVX2 where the CPU has it: the loop over the columns
// vectorises (4 lanes against SSE2's 2; no FMA, -ffp-contract=off), the same bits.
#if SHAPCAM_CLONES
__attribute__((target_clones("avx2", "default")))
#endif
void gram_add_rows(double* Gf, double* hf, int64_t p, int64_t mw, int64_t R, const double* a,
                   const double* wa, const double* e) {
  if (R == kRows) {
    const double* a0 = a;
    const double* a1 = a + p;
    const double* a2 = a + 2 * p;
    const double* a3 = a + 3 * p;
    for (int64_t j = 0; j < p; ++j) {
      const double w0 = wa[j], w1 = wa[p + j], w2 = wa[2 * p + j], w3 = wa[3 * p + j];
      double* gj = Gf + j * p;
      for (int64_t c = j; c < p; ++c) {
        double g = gj[c];
        g = g + w0 * a0[c];
        g = g + w1 * a1[c];
        g = g + w2 * a2[c];
        g = g + w3 * a3[c];
        gj[c] = g;
      }
      double* hj = hf + j * mw;
      for (int64_t o = 0; o < mw; ++o) {
        double v = hj[o];
        for (int64_t r = 0; r < kRows; ++r) v = v + a[r * p + j] * e[r * mw + o];
        hj[o] = v;
      }
    }
    return;
  }
  for (int64_t j = 0; j < p; ++j) {
    const double wj = wa[j];
    double* gj = Gf + j * p;
    for (int64_t c = j; c < p; ++c) gj[c] = gj[c] + wj * a[c];
    double* hj = hf + j * mw;
    for (int64_t o = 0; o < mw; ++o) hj[o] = hj[o] + a[j] * e[o];
  }
}
}  // namespace

void regression_gram(const uint8_t* packed, int64_t B, int64_t n, int64_t F, int64_t k, int64_t mw,
                     const double* sizefeat, const double* wt, const double* dt, double* G,
                     double* h) {
  const int64_t nb = (n + 7) / 8;
  const int64_t zs = 8 * nb;
  const int64_t p = n - 1 + k;
  const int team = num_threads();
  // per thread: kRows rows of features a, of w a, of e = dt (w / 2), and their unpacked bits
  const auto a_all = scratch<double>(static_cast<size_t>(team) * kRows * (2 * p + mw));
  const auto z_all = scratch<uint8_t>(static_cast<size_t>(team) * kMomentRows * zs);
  // per thread, h alone: a group's terms (z_i - last) e and size terms
  const auto t_all = scratch<double>(G ? 0 : static_cast<size_t>(team) * kMomentRows * (k + 2));
  // Folds are independent accumulators: one thread per fold. Rows go in groups of kRows: each G
  // and h element is loaded once per group and gets the group's terms one row at a time, in row
  // order (the twin's bits), so the loop over the columns vectorises.
#pragma omp parallel for schedule(static) num_threads(team) if (B * p * (G ? p : mw) > kFanOut)
  for (int64_t f = 0; f < F; ++f) {
    const int tid = thread_id();
    double* a = a_all.get() + static_cast<size_t>(tid) * kRows * (2 * p + mw);
    double* wa = a + kRows * p;
    double* e = wa + kRows * p;
    uint8_t* z = z_all.get() + static_cast<size_t>(tid) * kMomentRows * zs;
    double* Gf = G ? G + f * p * p : nullptr;
    double* hf = h + f * p * mw;
    if (!Gf) {  // h alone: a_j (dt_b (wt / 2)), row by row
      if (mw == 1) {
        // Rows in groups of kMomentRows, as the moments: each h element is loaded once per group
        // and gets the rows' terms one at a time, in row order (the twin's bits); 0.27 -> 0.17 ms
        // a run at n = 30, K = 1024. A term (z_i - last) e is a table lookup on z_i: the same
        // products (z_i - last is -1, 0 or 1, so each is exact).
        double* prod = t_all.get() + static_cast<size_t>(tid) * kMomentRows * (k + 2);  // [R][2]
        double* sz = prod + 2 * kMomentRows;  // [R][k]
        for (int64_t b = f; b < B;) {
          const int64_t R = b + (kMomentRows - 1) * F < B ? kMomentRows : b + 7 * F < B ? 8 : 1;
          for (int64_t r = 0; r < R; ++r) {
            const int64_t row = b + r * F;
            const int64_t s = unpack_row(packed + row * nb, n, z + r * zs);
            const double last = static_cast<double>(z[r * zs + n - 1]);
            const double e0 = dt[row] * (0.5 * wt[s]);
            prod[2 * r] = (0.0 - last) * e0;
            prod[2 * r + 1] = (1.0 - last) * e0;
            for (int64_t c = 0; c < k; ++c) sz[r * k + c] = sizefeat[s * k + c] * e0;
          }
          select_add(z, zs, R, n - 1, prod, hf);
          for (int64_t c = 0; c < k; ++c) {
            double v = hf[n - 1 + c];
            for (int64_t r = 0; r < R; ++r) v = v + sz[r * k + c];
            hf[n - 1 + c] = v;
          }
          b += R * F;
        }
        continue;
      }
      for (int64_t b = f; b < B; b += F) {
        const int64_t s = unpack_row(packed + b * nb, n, z);
        const double last = static_cast<double>(z[n - 1]);
        const double hw = 0.5 * wt[s];
        for (int64_t o = 0; o < mw; ++o) e[o] = dt[b * mw + o] * hw;
        for (int64_t j = 0; j < p; ++j) {
          const double aj = j + 1 < n ? static_cast<double>(z[j]) - last : sizefeat[s * k + (j - n + 1)];
          double* hj = hf + j * mw;
          for (int64_t o = 0; o < mw; ++o) hj[o] = hj[o] + aj * e[o];
        }
      }
      continue;
    }
    for (int64_t b = f; b < B;) {
      const int64_t R = b + (kRows - 1) * F < B ? kRows : 1;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t row = b + r * F;
        const int64_t s = unpack_row(packed + row * nb, n, z);
        double* ar = a + r * p;
        const double last = static_cast<double>(z[n - 1]);
        for (int64_t i = 0; i + 1 < n; ++i) ar[i] = static_cast<double>(z[i]) - last;
        for (int64_t c = 0; c < k; ++c) ar[n - 1 + c] = sizefeat[s * k + c];
        const double w = wt[s];
        const double hw = 0.5 * w;
        for (int64_t j = 0; j < p; ++j) wa[r * p + j] = w * ar[j];
        for (int64_t o = 0; o < mw; ++o) e[r * mw + o] = dt[row * mw + o] * hw;
      }
      gram_add_rows(Gf, hf, p, mw, R, a, wa, e);
      b += R * F;
    }
  }
}


namespace {
// A packed row of n <= 64 players as one word: bytes in little-endian order, so player i is bit
// i ^ 7 (packed.h keeps player i at bit 7 - (i & 7) of byte i >> 3).
inline uint64_t row_word(const uint8_t* row, int64_t nb) {
  uint64_t w = 0;
  for (int64_t k = 0; k < nb; ++k) w |= static_cast<uint64_t>(row[k]) << (8 * k);
  return w;
}

// Bit-sliced counts of one group (fold f, smaller-side size t) of up to 64 pairs: words[i] has
// bit r set when the group's pair r holds player i on its smaller side; so a pair count of a
// set of players is a popcount of an AND. POPCNT where the CPU has it (a build for the x86-64
// baseline would count bits with a dozen shifts and masks per word instead).
#if SHAPCAM_CLONES
__attribute__((target_clones("popcnt", "default")))
#endif
void flush_counts(uint64_t* words, int64_t filled, int64_t pz, int64_t* N, int64_t* S1, int64_t* SL,
                  int64_t* C, int64_t* CL) {
  const uint64_t wl = words[pz];  // the pairs whose smaller side holds the last player
  *C += filled;
  *CL += __builtin_popcountll(wl);
  for (int64_t j = 0; j < pz; ++j) {
    const uint64_t wj = words[j];
    if (!wj) continue;
    S1[j] += __builtin_popcountll(wj);
    SL[j] += __builtin_popcountll(wj & wl);
    int64_t* nj = N + j * pz;
    for (int64_t c = j; c < pz; ++c) nj[c] += __builtin_popcountll(wj & words[c]);
  }
  std::fill(words, words + pz + 1, uint64_t(0));
}
}  // namespace

void regression_counts(const uint8_t* packed, int64_t B, int64_t n, int64_t F, int64_t* N,
                       int64_t* S1, int64_t* SL, int64_t* C, int64_t* CL) {
  const int64_t nb = (n + 7) / 8;
  const int64_t pz = n - 1;
  const int64_t T = n / 2 + 1;  // sizes of the smaller side: 0 .. n / 2
  const int team = num_threads();
  // per thread: a group's words for each smaller-side size t, and how many pairs each holds
  const auto words_all = scratch<uint64_t>(static_cast<size_t>(team) * T * n);
  const auto fill_all = scratch<int64_t>(static_cast<size_t>(team) * T);
  uint64_t full = 0;  // the row word of all n players
  for (int64_t i = 0; i < n; ++i) full |= uint64_t(1) << (i ^ 7);
  // Folds are independent accumulators (integers: any order gives the same counts).
#pragma omp parallel for schedule(static) num_threads(team) if (B * n > kFanOut)
  for (int64_t f = 0; f < F; ++f) {
    const int tid = thread_id();
    uint64_t* words = words_all.get() + static_cast<size_t>(tid) * T * n;
    int64_t* fill = fill_all.get() + static_cast<size_t>(tid) * T;
    const auto flush = [&](int64_t t) {
      const int64_t ft = f * T + t;
      flush_counts(words + t * n, fill[t], pz, N + ft * pz * pz, S1 + ft * pz, SL + ft * pz, C + ft,
                   CL + ft);
      fill[t] = 0;
    };
    for (int64_t b = f; b < B; b += F) {
      const uint64_t row = row_word(packed + b * nb, nb) & full;
      const int64_t s = row_size(packed + b * nb, n);
      // the pair's smaller side (S when 2 s <= n), as a row word
      const bool flip = 2 * s > n;
      const int64_t t = flip ? n - s : s;
      uint64_t side = flip ? full & ~row : row;
      uint64_t* wt = words + t * n;
      const uint64_t bit = uint64_t(1) << fill[t];
      while (side) {
        const int pos = __builtin_ctzll(side);
        side &= side - 1;
        wt[pos ^ 7] |= bit;
      }
      if (++fill[t] == 64) flush(t);
    }
    for (int64_t t = 0; t < T; ++t)
      if (fill[t]) flush(t);
  }
}

void regression_cholesky(const double* A, int64_t F, int64_t p, double ridge, double* U,
                         uint8_t* ok) {
  auto t = scratch<double>(size_t(std::max<int64_t>(p, 1)));
  for (int64_t f = 0; f < F; ++f) {
    const double* a = A + f * p * p;
    double* u = U + f * p * p;
    double tr = 0.0;
    for (int64_t j = 0; j < p; ++j) tr = j ? tr + a[j * p + j] : a[0];
    const double scale = p ? tr / double(p) : 0.0;
    const double lam = ridge * (scale > 0 ? scale : 1.0);
    ok[f] = 1;
    for (int64_t j = 0; j < p; ++j) {
      double* s = t.get();
      const double* aj = a + j * p;
      // s_i for i >= j over the rows k < j of U (row k contiguous in i), four rows a pass; each
      // s_i still adds its terms one at a time in k order
      if (j > 0) {
        const double c0 = u[j];
        for (int64_t i = j; i < p; ++i) s[i] = u[i] * c0;
        int64_t k = 1;
        for (; k + 3 < j; k += 4) {
          const double *u0 = u + k * p, *u1 = u0 + p, *u2 = u1 + p, *u3 = u2 + p;
          const double d0 = u0[j], d1 = u1[j], d2 = u2[j], d3 = u3[j];
          for (int64_t i = j; i < p; ++i) {
            double v = s[i];
            v += u0[i] * d0;
            v += u1[i] * d1;
            v += u2[i] * d2;
            v += u3[i] * d3;
            s[i] = v;
          }
        }
        for (; k < j; ++k) {
          const double* uk = u + k * p;
          const double c = uk[j];
          for (int64_t i = j; i < p; ++i) s[i] += uk[i] * c;
        }
        for (int64_t i = j; i < p; ++i) s[i] = aj[i] - s[i];
      } else {
        for (int64_t i = 0; i < p; ++i) s[i] = aj[i];
      }
      s[j] += lam;
      if (!(s[j] > 0)) {  // not positive definite (or NaN): the caller falls back for this fold
        ok[f] = 0;
        break;
      }
      const double r = std::sqrt(s[j]);
      double* uj = u + j * p;
      uj[j] = r;
      for (int64_t i = j + 1; i < p; ++i) uj[i] = s[i] / r;
      for (int64_t i = j + 1; i < p; ++i) u[i * p + j] = uj[i];  // the mirror, for cholsolve
    }
  }
}

void regression_cholsolve(const double* U, int64_t F, int64_t p, int64_t mw, const double* h,
                          double* x) {
  std::memcpy(x, h, sizeof(double) * size_t(F * p * mw));
  if (mw == 1) {
    // The common case, without the loop over outputs (the same operations), the folds side by
    // side at each k: each fold's steps wait on a division, and the folds are independent chains
    // (~4.1 -> 2.3 us for the 8 folds at p = 33).
    for (int64_t k = 0; k < p; ++k) {
      for (int64_t f = 0; f < F; ++f) {
        const double* uk = U + f * p * p + k * p;
        double* y = x + f * p;
        const double yk = (y[k] /= uk[k]);
        for (int64_t j = k + 1; j < p; ++j) y[j] -= uk[j] * yk;
      }
    }
    for (int64_t k = p - 1; k >= 0; --k) {
      for (int64_t f = 0; f < F; ++f) {
        const double* lk = U + f * p * p + k * p;  // row k: U[k][k], and below it U[j][k] mirrored
        double* y = x + f * p;
        const double yk = (y[k] /= lk[k]);
        for (int64_t j = 0; j < k; ++j) y[j] -= lk[j] * yk;
      }
    }
    return;
  }
  for (int64_t f = 0; f < F; ++f) {
    const double* u = U + f * p * p;
    double* y = x + f * p * mw;
    for (int64_t k = 0; k < p; ++k) {  // U^T y = h: row k of U, contiguous
      const double d = u[k * p + k];
      for (int64_t o = 0; o < mw; ++o) y[k * mw + o] /= d;
      for (int64_t j = k + 1; j < p; ++j) {
        const double c = u[k * p + j];
        for (int64_t o = 0; o < mw; ++o) y[j * mw + o] -= c * y[k * mw + o];
      }
    }
    for (int64_t k = p - 1; k >= 0; --k) {  // U x = y: column k of U, from the last
      const double d = u[k * p + k];
      for (int64_t o = 0; o < mw; ++o) y[k * mw + o] /= d;
      for (int64_t j = 0; j < k; ++j) {
        const double c = u[k * p + j];  // U[j][k], mirrored
        for (int64_t o = 0; o < mw; ++o) y[j * mw + o] -= c * y[k * mw + o];
      }
    }
  }
}

void regression_tail(const uint8_t* packed, int64_t M, int64_t n, int64_t F, int64_t k, int64_t mw,
                     int64_t PB, const double* P, const double* sol, const double* D,
                     const double* Tb, int64_t L, const double* X2, const double* q, double* mean,
                     double* m2, double* m4) {
  const int64_t nb = (n + 7) / 8;
  const int64_t p = n - 1 + k;
  const int64_t cells = n * mw;
  const auto beta = scratch<double>(static_cast<size_t>(F * cells));
  const auto base = scratch<double>(static_cast<size_t>(F * cells));
  const auto sterm = scratch<double>(static_cast<size_t>(F * (n + 1) * mw));
  const auto U = scratch<double>(static_cast<size_t>(F * cells));
  const auto V = scratch<double>(static_cast<size_t>(F * cells));
  const auto dY = scratch<double>(static_cast<size_t>(std::min(PB, M) * mw));
  const auto bm = scratch<double>(static_cast<size_t>(cells));
  const auto bm2 = scratch<double>(static_cast<size_t>(cells));
  const auto cnt = scratch<double>(static_cast<size_t>(F));
  // for m4: per fold, the pairs' power sums of h = w d / 2's w d (A1 .. A4, over all blocks in
  // block order) and the pairs counted
  const size_t fc = m4 ? static_cast<size_t>(F * cells) : 0;
  std::unique_ptr<double[]> U3, U4, A, ctot;
  if (m4) {
    U3 = scratch<double>(fc);
    U4 = scratch<double>(fc);
    A = scratch<double>(4 * fc);
    ctot = scratch<double>(static_cast<size_t>(F));
  }
  const double nn = static_cast<double>(n), scale = static_cast<double>(n * (n - 1));
  const double Ld = static_cast<double>(L);
  for (int64_t f = 0; f < F; ++f) {
    const double* sf = sol + f * p * mw;
    double* bf = beta.get() + f * cells;
    double* basef = base.get() + f * cells;
    for (int64_t o = 0; o < mw; ++o) {
      // the additive part: beta_i = sol_i for i < n - 1, the last by sum(beta) = v(N) - v(0)
      double s = sf[o];
      bf[o] = sf[o];
      for (int64_t i = 1; i < n - 1; ++i) {
        bf[i * mw + o] = sf[i * mw + o];
        s += sf[i * mw + o];
      }
      bf[(n - 1) * mw + o] = D[o] - s;
      // its exact share of the sampled sizes: L (n beta_i - sum beta) / (n (n - 1))
      double all = bf[o];
      for (int64_t i = 1; i < n; ++i) all += bf[i * mw + o];
      for (int64_t i = 0; i < n; ++i)
        basef[i * mw + o] = Tb[i * mw + o] + (Ld * (nn * bf[i * mw + o] - all)) / scale;
      // the size terms' difference x(S) - x(N minus S) by size (X2), times the fold's c
      double* tf = sterm.get() + f * (n + 1) * mw;
      for (int64_t sz = 0; sz <= n; ++sz) {
        double t = 0.0;
        if (k > 0) {
          t = X2[sz * k] * sf[(n - 1) * mw + o];
          for (int64_t c = 1; c < k; ++c) t += X2[sz * k + c] * sf[(n - 1 + c) * mw + o];
        }
        tf[sz * mw + o] = t;
      }
    }
  }
  int64_t count = 0;
  for (int64_t j0 = 0; j0 < M; j0 += PB) {
    const int64_t B = std::min(M, j0 + PB) - j0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t o = 0; o < mw; ++o)
        dY[b * mw + o] = P[(2 * (j0 + b)) * mw + o] - P[(2 * (j0 + b) + 1) * mw + o];
    regression_moments(packed + j0 * nb, B, n, F, mw, dY.get(), beta.get(), sterm.get(), q, U.get(),
                       V.get(), m4 ? U3.get() : nullptr, m4 ? U4.get() : nullptr);
    // the block's mean and M2 of the pairs' estimates psi_b = base_f + w d_b / 2, from the folds'
    // sums (fold f has rows f, f + F, ...), each sum over the folds in fold order
    for (int64_t f = 0; f < F; ++f) cnt[f] = static_cast<double>((B - f + F - 1) / F);  // fold f's rows
    for (int64_t c = 0; c < cells; ++c) {
      double sb = 0.0, su = 0.0;
      for (int64_t f = 0; f < F; ++f) {
        const double x = cnt[f] * base[f * cells + c], u = U[f * cells + c];
        sb = f ? sb + x : x;
        su = f ? su + u : u;
      }
      const double mu = (sb + 0.5 * su) / static_cast<double>(B);
      double sv = 0.0, sd = 0.0;
      for (int64_t f = 0; f < F; ++f) {
        const double dev = base[f * cells + c] - mu;
        const double x = cnt[f] * dev * dev + dev * U[f * cells + c];
        sv = f ? sv + V[f * cells + c] : V[f * cells + c];
        sd = f ? sd + x : x;
      }
      bm[c] = mu;
      bm2[c] = std::max(0.25 * sv + sd, 0.0);
    }
    for (int64_t c = 0; c < cells; ++c) merge_block(&mean[c], &m2[c], count, bm[c], bm2[c], B);
    count += B;
    if (m4) {
      const double* src[4] = {U.get(), V.get(), U3.get(), U4.get()};
      for (int64_t k = 0; k < 4; ++k)
        for (size_t e = 0; e < fc; ++e) A[k * fc + e] = j0 ? A[k * fc + e] + src[k][e] : src[k][e];
      for (int64_t f = 0; f < F; ++f) ctot[f] = j0 ? ctot[f] + cnt[f] : cnt[f];
    }
  }
  if (!m4) return;
  // sum over the pairs of (psi - mean)^4 = (c + h)^4 per fold, c = base_f - mean, h = w d / 2:
  // cnt c^4 + 4 c^3 sum h + 6 c^2 sum h^2 + 4 c sum h^3 + sum h^4, the folds in order
  for (int64_t c = 0; c < cells; ++c) {
    double acc = 0.0;
    for (int64_t f = 0; f < F; ++f) {
      const size_t e = static_cast<size_t>(f * cells + c);
      const double cf = base[e] - mean[c], c2 = cf * cf;
      const double x = (((ctot[f] * c2 * c2 + 4.0 * (c2 * cf) * (0.5 * A[e])) +
                         6.0 * c2 * (0.25 * A[fc + e])) + 4.0 * cf * (0.125 * A[2 * fc + e])) +
                       0.0625 * A[3 * fc + e];
      acc = f ? acc + x : x;
    }
    m4[c] = acc;
  }
}

void regression_finish(const uint8_t* packed, int64_t M, int64_t W, int64_t n, int64_t F, int64_t k,
                       int64_t mw, int64_t PB, const double* P, const double* D,
                       const double* sizefeat, const double* wt, const double* hE,
                       const double* hW, const double* U, const double* Tb, int64_t L,
                       const double* X2, const double* q, double* mean, double* m2, double* m4) {
  const int64_t nb = (n + 7) / 8;
  const int64_t p = n - 1 + k;
  const int64_t B = M - W;
  const int64_t hsize = F * p * mw;
  const auto dt = scratch<double>(static_cast<size_t>(B * mw));
  const auto h = scratch<double>(static_cast<size_t>(hsize));
  const auto hs = scratch<double>(static_cast<size_t>(hsize));
  const auto sum = scratch<double>(static_cast<size_t>(p * mw));
  // the partial block's right sides: dt_b = (v(S) - v(N minus S)) - (2 z_last - 1) D
  for (int64_t b = 0; b < B; ++b) {
    const int64_t j = W + b;
    const uint8_t* row = packed + j * nb;
    const double last = static_cast<double>((row[(n - 1) >> 3] >> (7 - ((n - 1) & 7))) & 1);
    for (int64_t o = 0; o < mw; ++o)
      dt[b * mw + o] = (P[2 * j * mw + o] - P[(2 * j + 1) * mw + o]) - (2.0 * last - 1.0) * D[o];
  }
  regression_gram(packed + W * nb, B, n, F, k, mw, sizefeat, wt, dt.get(), nullptr, h.get());
  if (hW)
    for (int64_t c = 0; c < hsize; ++c) h[c] = hW[c] + h[c];
  // fold f's fit takes the other folds' pairs: hs_f = hE + (sum over the folds in order - h_f)
  const int64_t cells = p * mw;
  for (int64_t c = 0; c < cells; ++c) {
    double s = h[c];
    for (int64_t f = 1; f < F; ++f) s = s + h[f * cells + c];
    sum[c] = s;
  }
  for (int64_t f = 0; f < F; ++f)
    for (int64_t c = 0; c < cells; ++c) hs[f * cells + c] = hE[c] + (sum[c] - h[f * cells + c]);
  double* sol = h.get();  // h is not needed any more
  regression_cholsolve(U, F, p, mw, hs.get(), sol);
  regression_tail(packed, M, n, F, k, mw, PB, P, sol, D, Tb, L, X2, q, mean, m2, m4);
}

void regression_enum(const double* Y, int64_t R, int64_t n, int64_t p, int64_t mw, const double* W,
                     const double* AW, const double* last, const double* v0, const double* D,
                     double* Tb, double* hE) {
  // row by row, each element of Tb and hE getting its term in row order (the twin's bits); the
  // elements are independent chains, so the loops over the players vectorise
  for (int64_t r = 0; r < R; ++r) {
    const double* w = W + r * n;
    const double* y = Y + r * mw;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t o = 0; o < mw; ++o) Tb[i * mw + o] = Tb[i * mw + o] + w[i] * y[o];
    if (!hE) continue;
    const double* a = AW + r * p;
    for (int64_t o = 0; o < mw; ++o) {
      const double t = (y[o] - v0[o]) - last[r] * D[o];
      for (int64_t j = 0; j < p; ++j) hE[j * mw + o] = hE[j * mw + o] + a[j] * t;
    }
  }
}

}  // namespace cpu
}  // namespace shapcam
