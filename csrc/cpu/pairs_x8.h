// pairs_x8.h — the regression sampler's pairs (csrc/include/shapcam/pairs.h) drawn 8 at a time
// with AVX2, for n <= 64 players: the same Philox words and the same sets as pairs.h's functions
// one pair at a time (regression_cpu.cpp takes those without AVX2, for n > 64, and with
// SHAPCAM_NO_AVX2=1; a test compares the two).
//
// Where a pair's time went one at a time (n = 30, ~64 ns a pair): its size's Philox block and the
// smaller side's ~2.4 more, each a chain of 10 dependent rounds (~11 ns a block in that loop,
// against 2.2 ns when 8 counters share a vector), and the Fisher–Yates swaps through memory
// (~3.6 ns a step, 8.2 steps a pair: each step's loads wait on the last step's stores). Here the
// 8 pairs' blocks are drawn as vectors, and the swaps are composed in registers instead of
// applied to an array (small_sides_x8): ~45 ns a pair at n = 30 (~37 at n = 20, ~68 at n = 64,
// against ~67 / ~60 / ~101 one at a time).
#pragma once
#include <cstdint>

#include "select_add.h"  // have_avx2, SHAPCAM_SELECT_AVX2 (<immintrin.h>)
#include "shapcam/pairs.h"

namespace shapcam {
namespace cpu {

constexpr int kPairLanes = 8;
// Players a pair may have for small_sides_x8: positions and players fit a byte lane of a
// 32-byte vector, and the smaller side's t <= n / 2 steps one lane each.
constexpr int64_t kComposedPlayers = 64;

#ifdef SHAPCAM_SELECT_AVX2
// The high and low halves of the 32 x 32 -> 64-bit products a * m of 8 lanes (the even lanes'
// products and the odd ones', recombined).
__attribute__((target("avx2"))) inline void mulhilo_x8(__m256i a, __m256i m, __m256i& hi,
                                                       __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// out[w][l] = word w of philox4x32_10 (philox.h) at counter (c0, lo[l], hi[l], c3) under seed's
// key, for the 8 lanes l: philox.h's rounds with the 8 counters' words as the lanes of a vector.
__attribute__((target("avx2"))) inline void philox_x8(uint32_t c0, const uint32_t* lo,
                                                      const uint32_t* hi, uint32_t c3,
                                                      uint64_t seed, uint32_t out[4][kPairLanes]) {
  __m256i x0 = _mm256_set1_epi32(static_cast<int>(c0));
  __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
  __m256i x2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi));
  __m256i x3 = _mm256_set1_epi32(static_cast<int>(c3));
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo_x8(x0, m0, hi0, lo0);
    mulhilo_x8(x2, m1, hi1, lo1);
    x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32(static_cast<int>(k0)));
    x1 = lo1;
    x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32(static_cast<int>(k1)));
    x3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[0]), x0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[1]), x1);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[2]), x2);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[3]), x3);
}

// The smaller sides T of 8 pairs of n <= kComposedPlayers players, from their draws words[d][l]
// (pair_small_side's words of lane l's pair, d < t[l] <= n / 2; rows up to tmax = max t), into
// bits[l] for l < L, each a word with player p at bit p ^ 7 (its bytes, little-endian, are
// packed.h's row). pair_small_side applies swap_d = (i_d r_d), i_d = n - 1 - d, r_d =
// bounded(w_d, i_d + 1), to an array starting at the identity, and T's d-th player is the
// array's entry at i_d once swap_d is applied: the composition swap_0(swap_1(...swap_{d-1}(r_d)))
// (positions past i_d are never touched again). Here byte d of V[l] starts at lane l's r_d, and
// for e from tmax - 2 down, the bytes d > e take swap_e: no memory between the steps (in the
// array, each step's loads waited on the last one's stores), and the 8 pairs' chains side by
// side. Bytes d >= t[l] take lane l's draws past its t[l] too: never read, they change nothing.
__attribute__((target("avx2"))) inline void small_sides_x8(const uint32_t (*words)[kPairLanes],
                                                          int64_t n, const int64_t* t,
                                                          int64_t tmax, int64_t L,
                                                          uint64_t* bits) {
  alignas(32) uint8_t r[kPairLanes][32] = {};
  for (int64_t d = 0; d < tmax; ++d)
    for (int l = 0; l < kPairLanes; ++l)
      r[l][d] = static_cast<uint8_t>(bounded(words[d][l], static_cast<uint32_t>(n - d)));
  __m256i V[kPairLanes];
  for (int l = 0; l < kPairLanes; ++l) V[l] = _mm256_load_si256(reinterpret_cast<const __m256i*>(r[l]));
  const __m256i lane = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                        17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int64_t e = tmax - 2; e >= 0; --e) {
    const __m256i ie = _mm256_set1_epi8(static_cast<char>(n - 1 - e));
    const __m256i later = _mm256_cmpgt_epi8(lane, _mm256_set1_epi8(static_cast<char>(e)));
    for (int l = 0; l < kPairLanes; ++l) {
      const __m256i re = _mm256_set1_epi8(static_cast<char>(r[l][e]));
      const __m256i at_i = _mm256_and_si256(_mm256_cmpeq_epi8(V[l], ie), later);
      const __m256i at_r = _mm256_and_si256(_mm256_cmpeq_epi8(V[l], re), later);
      V[l] = _mm256_blendv_epi8(_mm256_blendv_epi8(V[l], re, at_i), ie, at_r);
    }
  }
  for (int64_t l = 0; l < L; ++l) {
    alignas(32) uint8_t side[32];
    _mm256_store_si256(reinterpret_cast<__m256i*>(side), V[l]);
    uint64_t b = 0;
    for (int64_t d = 0; d < t[l]; ++d) b |= uint64_t(1) << (side[d] ^ 7);
    bits[l] = b;
  }
}
#endif

}  // namespace cpu
}  // namespace shapcam
