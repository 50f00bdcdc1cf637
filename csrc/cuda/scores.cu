// Plain, correct CUDA kernels for the simcore ops (the fast fused kernel is separate work).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "scores.h"

namespace simcore::cuda {
namespace {

constexpr int kTile = 16;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__global__ void tile_scores_kernel(const T* __restrict__ c, int64_t k, int64_t ldc,
                                   const T* __restrict__ u, int64_t n, int64_t ldu, int64_t d,
                                   const float* __restrict__ norms, float* __restrict__ out,
                                   int64_t ldo) {
  __shared__ float cs[kTile][kTile + 1];
  __shared__ float us[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kTile;
  float acc = 0.f;
  for (int64_t p0 = 0; p0 < d; p0 += kTile) {
    const int64_t p = p0 + tx;
    cs[ty][tx] = (j0 + ty < k && p < d) ? to_float(c[(j0 + ty) * ldc + p]) : 0.f;
    us[ty][tx] = (i0 + ty < n && p < d) ? to_float(u[(i0 + ty) * ldu + p]) : 0.f;
    __syncthreads();
    const int lim = d - p0 < kTile ? static_cast<int>(d - p0) : kTile;
    for (int q = 0; q < lim; ++q) acc = fmaf(cs[ty][q], us[tx][q], acc);
    __syncthreads();
  }
  const int64_t i = i0 + tx, j = j0 + ty;
  if (i < n && j < k) out[j * ldo + i] = norms ? acc / norms[i] : acc;
}

template <typename T>
__global__ void row_norms_kernel(const T* __restrict__ u, int64_t n, int64_t ldu, int64_t d,
                                 float* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const T* row = u + i * ldu;
  float ss = 0.f;
  for (int64_t p = 0; p < d; ++p) {
    const float x = to_float(row[p]);
    ss = fmaf(x, x, ss);
  }
  out[i] = sqrtf(ss);
}

template <typename T>
cudaError_t scores_as(const void* c, int64_t k, int64_t ldc, const void* u, int64_t n,
                      int64_t ldu, int64_t d, const float* norms, float* out, int64_t ldo,
                      cudaStream_t stream) {
  if (k == 0 || n == 0) return cudaSuccess;
  const dim3 block(kTile, kTile);
  const dim3 grid(static_cast<unsigned>((n + kTile - 1) / kTile),
                  static_cast<unsigned>((k + kTile - 1) / kTile));
  tile_scores_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(c), k, ldc,
                                                    static_cast<const T*>(u), n, ldu, d, norms,
                                                    out, ldo);
  return cudaGetLastError();
}

template <typename T>
cudaError_t norms_as(const void* u, int64_t n, int64_t ldu, int64_t d, float* out,
                     cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  row_norms_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(u), n, ldu, d, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_tile_scores(Dtype dtype, const void* c, int64_t k, int64_t ldc, const void* u,
                               int64_t n, int64_t ldu, int64_t d, const float* norms, float* out,
                               int64_t ldo, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return scores_as<float>(c, k, ldc, u, n, ldu, d, norms, out, ldo, stream);
    case Dtype::kFloat16: return scores_as<__half>(c, k, ldc, u, n, ldu, d, norms, out, ldo, stream);
    default: return scores_as<__nv_bfloat16>(c, k, ldc, u, n, ldu, d, norms, out, ldo, stream);
  }
}

cudaError_t launch_row_norms(Dtype dtype, const void* u, int64_t n, int64_t ldu, int64_t d,
                             float* out, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return norms_as<float>(u, n, ldu, d, out, stream);
    case Dtype::kFloat16: return norms_as<__half>(u, n, ldu, d, out, stream);
    default: return norms_as<__nv_bfloat16>(u, n, ldu, d, out, stream);
  }
}

}  // namespace simcore::cuda
