// Shared-memory tiles of the tensor-core kernels: 64 features (128 bytes) per tile row,
// the 16-byte granules of row r XORed with r % 8 (the layout of Hopper's 128-byte
// swizzle; ldmatrix reads it without bank conflicts), filled with cp.async.
#pragma once

#include <cstdint>

namespace simcore::cuda {

constexpr int kTileDepth = 64;  // features per tile row

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; bytes past src_bytes are zero-filled (src_bytes 0: all zeros).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Element offset of 16-byte granule g (0..7) of tile row `row`.
__device__ __forceinline__ int swz(int row, int g) {
  return row * kTileDepth + ((g ^ (row & 7)) << 3);
}

// Loads features [p0, p0 + 64) of `BM` centroid rows (zero-padded: always in bounds) and
// of `BN` open-set rows (rows past rows_here and features past d read as zeros).
// kAligned: U rows are 16-byte aligned and d % 8 == 0, so cp.async moves whole granules;
// otherwise the U tile is gathered element by element.
template <typename T, int BM, int BN, int THREADS, bool kAligned>
__device__ __forceinline__ void load_tiles(T* as, T* bs, const T* cblock, int d_pad,
                                           const T* ublock, const T* u, int64_t ldu, int d,
                                           int rows_here, int p0, int tid) {
  static_assert(BM * 8 % THREADS == 0 && BN * 8 % THREADS == 0, "whole granules per thread");
#pragma unroll
  for (int q = 0; q < BM * 8 / THREADS; ++q) {
    const int gi = tid + q * THREADS, row = gi >> 3, g = gi & 7;
    cp_async16(smem_addr(as + swz(row, g)), cblock + static_cast<int64_t>(row) * d_pad + p0 + g * 8, 16);
  }
#pragma unroll
  for (int q = 0; q < BN * 8 / THREADS; ++q) {
    const int gi = tid + q * THREADS, row = gi >> 3, g = gi & 7;
    const int p = p0 + g * 8;
    if constexpr (kAligned) {
      const bool valid = row < rows_here && p < d;  // d % 8 == 0: a granule is all in or out
      const T* src = valid ? ublock + row * ldu + p : u;
      cp_async16(smem_addr(bs + swz(row, g)), src, valid ? 16 : 0);
    } else {
      uint16_t v[8];
      const uint16_t* src = reinterpret_cast<const uint16_t*>(ublock) + row * ldu;
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = (row < rows_here && p + e < d) ? __ldg(src + p + e) : 0;
      uint4 w;
      w.x = v[0] | (uint32_t(v[1]) << 16);
      w.y = v[2] | (uint32_t(v[3]) << 16);
      w.z = v[4] | (uint32_t(v[5]) << 16);
      w.w = v[6] | (uint32_t(v[7]) << 16);
      *reinterpret_cast<uint4*>(bs + swz(row, g)) = w;
    }
  }
}

}  // namespace simcore::cuda
