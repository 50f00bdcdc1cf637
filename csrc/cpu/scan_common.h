// Pieces shared by the fused-pass kernels (scan_kernel.cpp, scan_avx2.cpp). Internal:
// include only from the kernel sources. ATen-free.
#pragma once

#include <cstdint>
#include <cstring>
#include <new>

#include "scan_kernel.h"

#if defined(__x86_64__) || defined(_M_X64)
#define SIMCORE_X86 1
#else
#define SIMCORE_X86 0
#endif

namespace simcore::cpu::detail {

constexpr int64_t MR = kPanelCentroids;
constexpr int64_t NT = kTileRows;

inline size_t elem_size(Scalar s) { return s == Scalar::kFloat32 ? 4 : 2; }

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// Exact float16 -> float32 without branches (the compiler can vectorise it): normal
// values re-bias the exponent, Inf/NaN get the all-ones exponent, and subnormals
// (mantissa * 2^-24) are converted through an exact int -> float multiply.
inline float half_to_float(uint16_t h) {
  const uint32_t em = h & 0x7fffu;
  uint32_t normal = (em << 13) + (112u << 23);
  if (em >= 0x7c00u) normal += 112u << 23;
  const float sub = static_cast<float>(static_cast<int32_t>(em)) * 0x1p-24f;
  uint32_t sub_bits;
  std::memcpy(&sub_bits, &sub, 4);
  const uint32_t u = (em < 0x400u ? sub_bits : normal) | (static_cast<uint32_t>(h & 0x8000u) << 16);
  return bits_to_float(u);
}

template <Scalar S>
inline float load_as_float(const void* base, int64_t i) {
  if constexpr (S == Scalar::kFloat32) return static_cast<const float*>(base)[i];
  else if constexpr (S == Scalar::kFloat16) return half_to_float(static_cast<const uint16_t*>(base)[i]);
  else return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
}

inline float load_as_float(Scalar s, const void* base, int64_t i) {
  switch (s) {
    case Scalar::kFloat32: return load_as_float<Scalar::kFloat32>(base, i);
    case Scalar::kFloat16: return load_as_float<Scalar::kFloat16>(base, i);
    default: return load_as_float<Scalar::kBFloat16>(base, i);
  }
}

inline void* aligned_alloc64(size_t bytes) {
  void* p = ::operator new(bytes == 0 ? 64 : bytes, std::align_val_t(64));
  std::memset(p, 0, bytes);
  return p;
}
inline void aligned_free64(void* p) { ::operator delete(p, std::align_val_t(64)); }

struct AlignedBuffer {
  explicit AlignedBuffer(size_t bytes) : ptr(aligned_alloc64(bytes)) {}
  ~AlignedBuffer() { aligned_free64(ptr); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  void* ptr;
};

inline uint64_t valid_rows_mask(const bool* excluded, int64_t row0, int64_t rows) {
  uint64_t m = rows >= 64 ? ~uint64_t(0) : ((uint64_t(1) << rows) - 1);
  if (excluded)
    for (int64_t t = 0; t < rows; ++t)
      if (excluded[row0 + t]) m &= ~(uint64_t(1) << t);
  return m;
}

// Walks the next tile's rows, a few cache lines per call, so that packing it finds the
// data in L2 instead of waiting on DRAM (the hardware prefetcher tracks few row streams).
struct NextTilePrefetch {
  const char* base = nullptr;
  int64_t row_bytes = 0, stride_bytes = 0, rows = 0, row = 0, offset = 0;

  NextTilePrefetch(const ScanRows& in, int64_t d, int64_t next_row0) {
    if (next_row0 >= in.n) return;
    const int64_t es = static_cast<int64_t>(elem_size(in.scalar));
    base = static_cast<const char*>(in.data) + next_row0 * in.row_stride * es;
    row_bytes = d * es;
    stride_bytes = in.row_stride * es;
    rows = in.n - next_row0 < NT ? in.n - next_row0 : NT;
  }
  int64_t total_lines() const { return rows * ((row_bytes + 63) / 64); }
  void step(int64_t lines) {
    for (; lines > 0 && row < rows; --lines) {
      __builtin_prefetch(base + row * stride_bytes + offset, 0, 2);
      offset += 64;
      if (offset >= row_bytes) {
        offset = 0;
        ++row;
      }
    }
  }
};

#if SIMCORE_X86
// The AVX2+FMA(+F16C) path (scan_avx2.cpp): scan_tiles for centroids packed as float32.
void scan_tiles_avx2(const ScanRows& rows, const CentroidPanels& centroids, int64_t tile_begin,
                     int64_t tile_end, TopKLists& lists);
#endif

}  // namespace simcore::cpu::detail
