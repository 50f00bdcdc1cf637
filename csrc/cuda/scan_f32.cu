// The fused pass for float32 on CUDA cores: a block scores 64 centroids x 64 rows, each
// thread a 4 x 4 patch, every score one fmaf chain over the feature index in order (the
// CPU kernel's order), then offers the scores to the candidate buffers (offer.cuh).
// Exact float32: tensor-core tf32 would round the inputs.
#include "kernels.h"
#include "offer.cuh"

namespace simcore::cuda {
namespace {

constexpr int SB = kSimtTile, SK = kSimtTileDepth, THREADS = 256;

__global__ void __launch_bounds__(THREADS) simt_scan_kernel(const float* __restrict__ c, int d_pad,
                                                            const float* __restrict__ u,
                                                            int64_t ldu, int d, int ctiles,
                                                            Epilogue ep) {
  __shared__ float As[SK][SB + 4];  // [feature][centroid]
  __shared__ float Bs[SK][SB + 4];  // [feature][row]
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int ctile = static_cast<int>(blockIdx.x % ctiles);
  const int64_t rbase = static_cast<int64_t>(blockIdx.x / ctiles) * SB;
  const float* cblock = c + static_cast<int64_t>(ctile) * SB * d_pad;
  const float* ublock = u + (ep.row0 + rbase) * ldu;
  const int rows_here = static_cast<int>(ep.rows - rbase < SB ? ep.rows - rbase : SB);

  float acc[4][4] = {};
  for (int p0 = 0; p0 < d; p0 += SK) {
#pragma unroll
    for (int q = 0; q < SB * SK / THREADS; ++q) {
      const int e = tid + q * THREADS, row = e / SK, pp = e % SK;
      As[pp][row] = cblock[static_cast<int64_t>(row) * d_pad + p0 + pp];  // padded: in bounds
      Bs[pp][row] = (row < rows_here && p0 + pp < d) ? __ldg(ublock + row * ldu + p0 + pp) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int pp = 0; pp < SK; ++pp) {
      float a[4], b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = As[pp][ty * 4 + r];
#pragma unroll
      for (int q = 0; q < 4; ++q) b[q] = Bs[pp][tx * 4 + q];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[r][q] = fmaf(a[r], b[q], acc[r][q]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int j = ctile * SB + ty * 4 + r;
    const float thr = ep.threshold(j);
#pragma unroll
    for (int q = 0; q < 4; ++q) ep.offer(j, rbase + tx * 4 + q, acc[r][q], thr);
  }
}

}  // namespace

cudaError_t launch_simt_scan(const ScanArgs& a, cudaStream_t stream) {
  const Epilogue ep = make_epilogue(a);
  const int ctiles = a.k_pad / SB;
  const int64_t blocks = ctiles * ((a.rows + SB - 1) / SB);
  simt_scan_kernel<<<static_cast<unsigned>(blocks), THREADS, 0, stream>>>(
      static_cast<const float*>(a.c), a.d_pad, static_cast<const float*>(a.u), a.ldu, a.d, ctiles,
      ep);
  return cudaGetLastError();
}

}  // namespace simcore::cuda
