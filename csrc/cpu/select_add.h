// select_add.h — the per-pair inner loops of the regression ops (regression_cpu.cpp), where each
// player's term of a row is one of two values chosen by the player's bit: the fit's right sides
// (h), the residual moments (U, V) and the surrogate's difference sum_i (z_i ? beta_i : -beta_i).
// With AVX2 where the CPU has it (checked once, at run time: the build targets any x86-64),
// four players (or four rows) a vector. Every element still gets its terms one at a time in the
// scalar loop's order, with the same operations (no FMA: the build has -ffp-contract=off and
// these use separate multiplies and adds), so the bits do not depend on the path or the CPU.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "packed.h"
#if defined(__x86_64__)
#include <immintrin.h>
#define SHAPCAM_SELECT_AVX2 1
#endif

namespace shapcam {
namespace cpu {

// SHAPCAM_NO_AVX2=1 in the environment (read once) takes the scalar loops (the tests compare).
inline bool have_avx2() {
#ifdef SHAPCAM_SELECT_AVX2
  static const bool yes = __builtin_cpu_supports("avx2") && !std::getenv("SHAPCAM_NO_AVX2");
  return yes;
#else
  return false;
#endif
}

// For i in [i0, len): x[i] = x[i] + t[2r + z[r zs + i]] for r = 0 .. R-1 in order; and where
// y is not null, y[i] = y[i] + u[2r + z[r zs + i]] alike. z: R rows of 0/1 bytes, zs apart.
inline void select_add_scalar(const uint8_t* z, int64_t zs, int64_t R, int64_t i0, int64_t len,
                              const double* t, double* x, const double* u, double* y) {
  for (int64_t i = i0; i < len; ++i) {
    double a = x[i];
    for (int64_t r = 0; r < R; ++r) a = a + t[2 * r + z[r * zs + i]];
    x[i] = a;
    if (!y) continue;
    double b = y[i];
    for (int64_t r = 0; r < R; ++r) b = b + u[2 * r + z[r * zs + i]];
    y[i] = b;
  }
}

// The rows a group of signed_sums takes: as many independent chains as keep the adds' pipeline
// full (4 vectors of 4), and a group's sums per player stay in a vector (select_add's R).
constexpr int64_t kSignedRows = 16;

// acc[r] = the sum over i < n, in order from i = 0, of (z[r zs + i] ? 1.0 : -1.0) * b[i], for
// r < R (the first term is the sum's start: no 0.0 + in front).
inline void signed_sums_scalar(const uint8_t* z, int64_t zs, int64_t R, int64_t n, const double* b,
                               double* acc) {
  static const double sign[2] = {-1.0, 1.0};
  for (int64_t r = 0; r < R; ++r) acc[r] = sign[z[r * zs]] * b[0];
  for (int64_t i = 1; i < n; ++i)
    for (int64_t r = 0; r < R; ++r) acc[r] = acc[r] + sign[z[r * zs + i]] * b[i];
}

// The 8 x 8 bit transpose (bit 8 r + c -> bit 8 c + r; Hacker's Delight, transpose8).
inline uint64_t transpose8x8(uint64_t x) {
  uint64_t t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
  x = x ^ t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
  x = x ^ t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
  return x ^ t ^ (t << 28);
}

// Byte j of the result: the bits of player 8 k + j in rows[0..7] (row r at bit 7 - r, as
// numpy.packbits orders them), from the rows' packed byte k.
inline uint64_t players_by_rows(const uint8_t* const* rows, int64_t k) {
  uint64_t x = 0;
  for (int r = 0; r < 8; ++r) x |= static_cast<uint64_t>(rows[7 - r][k]) << (8 * r);
  const uint64_t y = transpose8x8(x);  // byte 7 - j: player 8 k + j
  return __builtin_bswap64(y);
}

#ifdef SHAPCAM_SELECT_AVX2
// four 0/1 bytes -> a lane mask (sign bit set where 1), for blendv
__attribute__((target("avx2"))) inline __m256d lanes_of(const uint8_t* p) {
  int32_t w;
  std::memcpy(&w, p, 4);
  const __m256i x = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(w));
  return _mm256_castsi256_pd(_mm256_slli_epi64(x, 63));
}

// select_add with AVX2: 4 players a vector, their sums over the rows in order (the rows inner);
// the last len % 4 players by the scalar loop.
template <bool Two>
__attribute__((target("avx2"))) void select_add_avx2(const uint8_t* z, int64_t zs, int64_t R,
                                                     int64_t len, const double* t, double* x,
                                                     const double* u, double* y) {
  int64_t i = 0;
  for (; i + 4 <= len; i += 4) {
    __m256d a = _mm256_loadu_pd(x + i);
    __m256d b = Two ? _mm256_loadu_pd(y + i) : a;
    for (int64_t r = 0; r < R; ++r) {
      const __m256d m = lanes_of(z + r * zs + i);
      a = _mm256_add_pd(a, _mm256_blendv_pd(_mm256_set1_pd(t[2 * r]), _mm256_set1_pd(t[2 * r + 1]), m));
      if (Two)
        b = _mm256_add_pd(b, _mm256_blendv_pd(_mm256_set1_pd(u[2 * r]), _mm256_set1_pd(u[2 * r + 1]), m));
    }
    _mm256_storeu_pd(x + i, a);
    if (Two) _mm256_storeu_pd(y + i, b);
  }
  select_add_scalar(z, zs, R, i, len, t, x, u, y);
}

// signed_sums_scalar's sums from the rows' packed bits (rows [kSignedRows] row pointers): per
// player, the group's bits transposed 8 players at a time and spread to 0/1 bytes (a table
// lookup), then 4 rows a vector; the same products and adds in the same order.
__attribute__((target("avx2"))) inline void signed_sums_avx2(const uint8_t* const* rows, int64_t n,
                                                             const double* b, double* acc) {
  static_assert(kSignedRows == 16, "four vectors of four rows");
  const __m256d one = _mm256_set1_pd(1.0), minus = _mm256_set1_pd(-1.0);
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t k = 0; 8 * k < n; ++k) {
    const uint64_t lo = players_by_rows(rows, k), hi = players_by_rows(rows + 8, k);
    const int64_t end = n - 8 * k < 8 ? n - 8 * k : 8;
    for (int64_t j = 0; j < end; ++j) {
      const uint8_t* s0 = reinterpret_cast<const uint8_t*>(&kPacked.spread[(lo >> (8 * j)) & 0xff]);
      const uint8_t* s1 = reinterpret_cast<const uint8_t*>(&kPacked.spread[(hi >> (8 * j)) & 0xff]);
      const __m256d bi = _mm256_set1_pd(b[8 * k + j]);
      const __m256d t0 = _mm256_mul_pd(_mm256_blendv_pd(minus, one, lanes_of(s0)), bi);
      const __m256d t1 = _mm256_mul_pd(_mm256_blendv_pd(minus, one, lanes_of(s0 + 4)), bi);
      const __m256d t2 = _mm256_mul_pd(_mm256_blendv_pd(minus, one, lanes_of(s1)), bi);
      const __m256d t3 = _mm256_mul_pd(_mm256_blendv_pd(minus, one, lanes_of(s1 + 4)), bi);
      if (k == 0 && j == 0) {
        a0 = t0, a1 = t1, a2 = t2, a3 = t3;
      } else {
        a0 = _mm256_add_pd(a0, t0);
        a1 = _mm256_add_pd(a1, t1);
        a2 = _mm256_add_pd(a2, t2);
        a3 = _mm256_add_pd(a3, t3);
      }
    }
  }
  _mm256_storeu_pd(acc, a0);
  _mm256_storeu_pd(acc + 4, a1);
  _mm256_storeu_pd(acc + 8, a2);
  _mm256_storeu_pd(acc + 12, a3);
}
#endif

inline void select_add(const uint8_t* z, int64_t zs, int64_t R, int64_t len, const double* t,
                       double* x, const double* u = nullptr, double* y = nullptr) {
#ifdef SHAPCAM_SELECT_AVX2
  if (have_avx2()) {
    if (y)
      select_add_avx2<true>(z, zs, R, len, t, x, u, y);
    else
      select_add_avx2<false>(z, zs, R, len, t, x, u, y);
    return;
  }
#endif
  select_add_scalar(z, zs, R, 0, len, t, x, u, y);
}

// R rows: rows, their packed bits; z, the same rows unpacked (0/1 bytes, zs apart)
inline void signed_sums(const uint8_t* const* rows, const uint8_t* z, int64_t zs, int64_t R,
                        int64_t n, const double* b, double* acc) {
#ifdef SHAPCAM_SELECT_AVX2
  if (R == kSignedRows && have_avx2()) return signed_sums_avx2(rows, n, b, acc);
#endif
  signed_sums_scalar(z, zs, R, n, b, acc);
}

}  // namespace cpu
}  // namespace shapcam
