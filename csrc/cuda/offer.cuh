// The fused kernels' epilogue: offer one score to a centroid's candidate buffer.
#pragma once

#include <cmath>

#include "kernels.h"

namespace simcore::cuda {

struct Epilogue {
  int k;
  int64_t row0, rows;
  const float* __restrict__ norms;
  const uint32_t* __restrict__ bits;
  Candidates cand;

  __device__ __forceinline__ bool excluded(int64_t i) const {
    return bits != nullptr && ((__ldg(bits + (i >> 5)) >> (i & 31)) & 1u);
  }

  // j: centroid; r: row inside the wave; s: raw inner product; thr: cand.thr[j].
  // NaN never passes (comparisons with NaN are false), nor -inf (thr >= -inf).
  __device__ __forceinline__ void offer(int j, int64_t r, float s, float thr) const {
    if (j >= k || r >= rows) return;
    const int64_t i = row0 + r;
    if (norms != nullptr) s = s / __ldg(norms + i);
    if (!(s > thr) || excluded(i)) return;
    const int pos = atomicAdd(cand.count + j, 1);
    if (static_cast<unsigned>(pos) < static_cast<unsigned>(cand.cap)) {
      cand.value[static_cast<int64_t>(j) * cand.cap + pos] = s;
      cand.index[static_cast<int64_t>(j) * cand.cap + pos] = i;
    } else {
      cand.overflow[j] = 1;
    }
  }

  __device__ __forceinline__ float threshold(int j) const {
    return j < k ? __ldg(cand.thr + j) : INFINITY;
  }
};

inline Epilogue make_epilogue(const ScanArgs& a) {
  return Epilogue{a.k, a.row0, a.rows, a.norms, a.excluded_bits, a.cand};
}

}  // namespace simcore::cuda
