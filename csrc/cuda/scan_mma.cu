// The fused pass for float16/bfloat16 on tensor cores (mma.sync m16n8k16, float32
// accumulators): a block scores 128 centroids x BN rows, streaming both through a
// 3-stage cp.async pipeline into XOR-swizzled shared memory (ldmatrix reads it without
// bank conflicts), then offers every score to the candidate buffers (offer.cuh).
//
// Every (centroid, row) score is the same chain of mma instructions over the feature
// index in steps of 16, whatever the block, wave or call: rescans reproduce it exactly.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels.h"
#include "offer.cuh"
#include "tiles.cuh"

namespace simcore::cuda {
namespace {

constexpr int BM = kMmaTileCentroids, BK = kTileDepth, STAGES = 3, THREADS = 256, WARPS_M = 2, WARPS_N = 4;

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                            uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

template <typename T>
struct Mma;
template <>
struct Mma<__nv_bfloat16> {
  __device__ __forceinline__ static void run(float* c, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
template <>
struct Mma<__half> {
  __device__ __forceinline__ static void run(float* c, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

constexpr size_t smem_bytes(int bn) { return size_t(STAGES) * (BM + bn) * BK * 2; }

template <typename T, int BN, bool kAligned>
__global__ void __launch_bounds__(THREADS) mma_scan_kernel(const T* __restrict__ c, int d_pad,
                                                           const T* __restrict__ u, int64_t ldu,
                                                           int d, int ctiles, Epilogue ep) {
  constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  constexpr int MT = WM / 16, NT = WN / 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* As = reinterpret_cast<T*>(smem_raw);  // [STAGES][BM * BK]
  T* Bs = As + STAGES * BM * BK;           // [STAGES][BN * BK]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp / WARPS_N, warp_n = warp % WARPS_N;
  // Consecutive blocks share a row tile: its rows are read from memory once, then from L2.
  const int ctile = static_cast<int>(blockIdx.x % ctiles);
  const int64_t rbase = static_cast<int64_t>(blockIdx.x / ctiles) * BN;  // within the wave
  const T* cblock = c + static_cast<int64_t>(ctile) * BM * d_pad;
  const T* ublock = u + (ep.row0 + rbase) * ldu;
  const int rows_here = static_cast<int>(ep.rows - rbase < BN ? ep.rows - rbase : BN);
  const int KT = d_pad / BK;

  auto load_stage = [&](int stage, int kt) {
    load_tiles<T, BM, BN, THREADS, kAligned>(As + stage * BM * BK, Bs + stage * BN * BK, cblock,
                                             d_pad, ublock, u, ldu, d, rows_here, kt * BK, tid);
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load_stage(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kt has landed; stage kt-1's buffer is free for reuse
    if (kt + STAGES - 1 < KT) load_stage((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    cp_async_commit();
    const T* as = As + (kt % STAGES) * BM * BK;
    const T* bs = Bs + (kt % STAGES) * BN * BK;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t af[MT][4], bf[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int row = warp_m * WM + mt * 16 + (lane & 15);
        ldmatrix_x4(smem_addr(as + swz(row, kk * 2 + (lane >> 4))), af[mt][0], af[mt][1],
                    af[mt][2], af[mt][3]);
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        const int row = warp_n * WN + np * 16 + (lane & 7) + ((lane >> 4) << 3);
        ldmatrix_x4(smem_addr(bs + swz(row, kk * 2 + ((lane >> 3) & 1))), bf[2 * np][0],
                    bf[2 * np][1], bf[2 * np + 1][0], bf[2 * np + 1][1]);
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) Mma<T>::run(acc[mt][nt], af[mt], bf[nt]);
    }
  }

  // Accumulator layout of m16n8: c0,c1 at (row g, cols 2t, 2t+1), c2,c3 at row g + 8.
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int j0 = ctile * BM + warp_m * WM + mt * 16 + g;
    const float thr0 = ep.threshold(j0), thr1 = ep.threshold(j0 + 8);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int64_t r = rbase + warp_n * WN + nt * 8 + 2 * t;
      ep.offer(j0, r, acc[mt][nt][0], thr0);
      ep.offer(j0, r + 1, acc[mt][nt][1], thr0);
      ep.offer(j0 + 8, r, acc[mt][nt][2], thr1);
      ep.offer(j0 + 8, r + 1, acc[mt][nt][3], thr1);
    }
  }
}

template <typename T, int BN, bool kAligned>
cudaError_t launch_as(const ScanArgs& a, const Epilogue& ep, cudaStream_t stream) {
  auto kernel = mma_scan_kernel<T, BN, kAligned>;
  const size_t smem = smem_bytes(BN);
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int ctiles = a.k_pad / BM;
  const int64_t blocks = ctiles * ((a.rows + BN - 1) / BN);
  kernel<<<static_cast<unsigned>(blocks), THREADS, smem, stream>>>(
      static_cast<const T*>(a.c), a.d_pad, static_cast<const T*>(a.u), a.ldu, a.d, ctiles, ep);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dtype(const ScanArgs& a, const Epilogue& ep, cudaStream_t stream) {
  if (!a.aligned) return launch_as<T, 128, false>(a, ep, stream);
  if (a.tile_rows == 256) return launch_as<T, 256, true>(a, ep, stream);
  return launch_as<T, 128, true>(a, ep, stream);
}

}  // namespace

cudaError_t launch_mma_scan(const ScanArgs& a, cudaStream_t stream) {
  const Epilogue ep = make_epilogue(a);
  return a.dtype == Dtype::kFloat16 ? launch_dtype<__half>(a, ep, stream)
                                    : launch_dtype<__nv_bfloat16>(a, ep, stream);
}

}  // namespace simcore::cuda
