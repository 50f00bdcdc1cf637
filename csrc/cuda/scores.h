// Plain CUDA kernels (ATen-free): tiled centroid x row scores and row norms, both
// accumulated sequentially over the feature index in float32 (the CPU kernel's order).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace simcore::cuda {

enum class Dtype { kFloat32, kFloat16, kBFloat16 };

// out[j * ldo + i] = <c_j, u_i> (divided by norms[i] when norms is not null),
// for j < k, i < n. Row strides in elements.
cudaError_t launch_tile_scores(Dtype dtype, const void* c, int64_t k, int64_t ldc, const void* u,
                               int64_t n, int64_t ldu, int64_t d, const float* norms, float* out,
                               int64_t ldo, cudaStream_t stream);

// out[i] = ||u_i||_2 in float32.
cudaError_t launch_row_norms(Dtype dtype, const void* u, int64_t n, int64_t ldu, int64_t d,
                             float* out, cudaStream_t stream);

}  // namespace simcore::cuda
