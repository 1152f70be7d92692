// packed.h — rows of coalitions bit-packed as numpy.packbits writes them (player i is bit
// 7 - (i & 7) of byte i >> 3; bits past the last player are ignored), for the CPU ops.
#pragma once
#include <cstdint>
#include <cstring>

namespace shapcam {
namespace cpu {

struct PackedTables {
  uint64_t spread[256];  // byte -> its 8 players as 0/1 bytes, first player in the lowest byte
  uint8_t ones[256];     // byte -> bits set
  constexpr PackedTables() : spread(), ones() {
    for (int b = 0; b < 256; ++b) {
      uint64_t x = 0;
      int c = 0;
      for (int i = 0; i < 8; ++i) {
        const int bit = (b >> (7 - i)) & 1;
        x |= static_cast<uint64_t>(bit) << (8 * i);
        c += bit;
      }
      spread[b] = x;
      ones[b] = static_cast<uint8_t>(c);
    }
  }
};
constexpr PackedTables kPacked;

// The last byte's mask of a row of n players.
inline uint8_t last_byte_mask(int64_t n) {
  return (n & 7) ? static_cast<uint8_t>(0xff << (8 - (n & 7))) : uint8_t(0xff);
}

// Players in a packed row of n.
inline int64_t row_size(const uint8_t* row, int64_t n) {
  const int64_t nb = (n + 7) / 8;
  int64_t s = 0;
  for (int64_t k = 0; k + 1 < nb; ++k) s += kPacked.ones[row[k]];
  return nb ? s + kPacked.ones[row[nb - 1] & last_byte_mask(n)] : 0;
}

// z[0..n) = the players of a packed row as 0/1 bytes (z holds ceil(n / 8) * 8 bytes; those past
// n are garbage); returns how many are set.
inline int64_t unpack_row(const uint8_t* row, int64_t n, uint8_t* z) {
  const int64_t nb = (n + 7) / 8;
  for (int64_t k = 0; k < nb; ++k) std::memcpy(z + 8 * k, &kPacked.spread[row[k]], 8);
  return row_size(row, n);
}

}  // namespace cpu
}  // namespace shapcam
