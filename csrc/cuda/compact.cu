// Compaction of the candidate buffers: one block per centroid sorts the entries appended
// since the last compaction (bitonic, in shared memory), merges them into the sorted
// front of the buffer by rank (each entry's place = its index + the number of entries of
// the other list before it; keys are distinct since rows are), keeps the best K and
// raises the centroid's threshold to the K-th score.
#include <cmath>
#include <cstdint>

#include "kernels.h"

namespace simcore::cuda {
namespace {

constexpr int THREADS = 512;

// Candidate order: higher score first, then the smaller row.
__device__ __forceinline__ bool before(float va, int64_t ia, float vb, int64_t ib) {
  return va > vb || (va == vb && ia < ib);
}

// Number of entries of the sorted list (v, i)[0, len) that come before (x, xi).
__device__ __forceinline__ int rank_in(const float* v, const int64_t* i, int len, float x,
                                       int64_t xi) {
  int lo = 0, hi = len;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (before(v[mid], i[mid], x, xi)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

__global__ void __launch_bounds__(THREADS) compact_kernel(Candidates cand, int K) {
  const int j = blockIdx.x;
  const int L = cand.length[j];
  const int total = min(cand.count[j], cand.cap);
  const int m = total - L;
  if (m <= 0) return;
  const int cap = cand.cap;
  extern __shared__ __align__(16) unsigned char smem[];
  int64_t* ni = reinterpret_cast<int64_t*>(smem);  // new entries [cap]
  int64_t* li = ni + cap;                          // the sorted list [K]
  float* nv = reinterpret_cast<float*>(li + K);
  float* lv = nv + cap;
  const int64_t base = static_cast<int64_t>(j) * cap;
  int P = 1;
  while (P < m) P <<= 1;
  for (int t = threadIdx.x; t < P; t += THREADS) {
    nv[t] = t < m ? cand.value[base + L + t] : -INFINITY;
    ni[t] = t < m ? cand.index[base + L + t] : INT64_MAX;
  }
  for (int t = threadIdx.x; t < L; t += THREADS) {
    lv[t] = cand.value[base + t];
    li[t] = cand.index[base + t];
  }
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int t = threadIdx.x; t < P / 2; t += THREADS) {
        const int a = 2 * t - (t & (stride - 1)), b = a + stride;
        const bool up = (a & size) == 0;  // this run is sorted first-to-last
        if (before(nv[b], ni[b], nv[a], ni[a]) == up) {
          const float tv = nv[a];
          nv[a] = nv[b];
          nv[b] = tv;
          const int64_t ti = ni[a];
          ni[a] = ni[b];
          ni[b] = ti;
        }
      }
    }
  }
  __syncthreads();  // every read of the buffer is done: rewrite it in place
  for (int t = threadIdx.x; t < L; t += THREADS) {
    const int out = t + rank_in(nv, ni, m, lv[t], li[t]);
    if (out < K) {
      cand.value[base + out] = lv[t];
      cand.index[base + out] = li[t];
      if (out == K - 1) cand.thr[j] = lv[t];
    }
  }
  for (int q = threadIdx.x; q < m; q += THREADS) {
    const int out = q + rank_in(lv, li, L, nv[q], ni[q]);
    if (out < K) {
      cand.value[base + out] = nv[q];
      cand.index[base + out] = ni[q];
      if (out == K - 1) cand.thr[j] = nv[q];
    }
  }
  if (threadIdx.x == 0) {
    const int len = L + m < K ? L + m : K;
    cand.count[j] = len;
    cand.length[j] = len;
  }
}

}  // namespace

size_t compact_shared_bytes(int K, int cap) {
  return static_cast<size_t>(cap + K) * (sizeof(int64_t) + sizeof(float));
}

cudaError_t launch_compact(const Candidates& cand, int k, int K, cudaStream_t stream) {
  if (k == 0) return cudaSuccess;
  const size_t smem = compact_shared_bytes(K, cand.cap);
  cudaError_t err = cudaFuncSetAttribute(compact_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  compact_kernel<<<k, THREADS, smem, stream>>>(cand, K);
  return cudaGetLastError();
}

}  // namespace simcore::cuda
