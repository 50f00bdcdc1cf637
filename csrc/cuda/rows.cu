// Per-row kernels: L2 norms, and the exclusion flags packed into a bitset.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels.h"

namespace simcore::cuda {
namespace {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// A warp per row: lane l sums the squares of 16-byte granules l, l + 32, ... in order,
// then a butterfly adds the lanes. The order depends on d alone, not on alignment.
template <typename T>
__global__ void row_norms_kernel(const T* __restrict__ u, int64_t n, int64_t ldu, int d,
                                 bool aligned, float* __restrict__ out) {
  constexpr int G = 16 / sizeof(T);
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= n) return;  // whole warps
  const T* r = u + row * ldu;
  float acc = 0.f;
  const int granules = (d + G - 1) / G;
  for (int g = lane; g < granules; g += 32) {
    const int p = g * G;
    if (aligned && p + G <= d) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(r + p));
      const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int e = 0; e < G; ++e) {
        const float f = to_float(x[e]);
        acc = fmaf(f, f, acc);
      }
    } else {
#pragma unroll
      for (int e = 0; e < G; ++e) {
        if (p + e < d) {
          const float f = to_float(r[p + e]);
          acc = fmaf(f, f, acc);
        }
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) out[row] = sqrtf(acc);
}

template <typename T>
cudaError_t norms_as(const void* u, int64_t n, int64_t ldu, int d, bool aligned, float* out,
                     cudaStream_t stream) {
  const int threads = 256, rows_per_block = threads / 32;
  const int64_t blocks = (n + rows_per_block - 1) / rows_per_block;
  row_norms_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      static_cast<const T*>(u), n, ldu, d, aligned, out);
  return cudaGetLastError();
}

__global__ void pack_bits_kernel(const bool* __restrict__ flags, int64_t n,
                                 uint32_t* __restrict__ bits) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint32_t word = __ballot_sync(0xffffffffu, i < n && flags[i]);
  if ((threadIdx.x & 31) == 0 && i < n) bits[i >> 5] = word;
}

}  // namespace

cudaError_t launch_row_norms(Dtype dtype, const void* u, int64_t n, int64_t ldu, int d,
                             bool aligned, float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (dtype) {
    case Dtype::kFloat32: return norms_as<float>(u, n, ldu, d, aligned, out, stream);
    case Dtype::kFloat16: return norms_as<__half>(u, n, ldu, d, aligned, out, stream);
    default: return norms_as<__nv_bfloat16>(u, n, ldu, d, aligned, out, stream);
  }
}

cudaError_t launch_pack_bits(const bool* flags, int64_t n, uint32_t* bits, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  pack_bits_kernel<<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream>>>(
      flags, n, bits);
  return cudaGetLastError();
}

}  // namespace simcore::cuda
