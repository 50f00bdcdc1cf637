// ATen-free launch API of the CUDA kernels (the .cu files); ops_cuda.cpp does the tensor
// checks, the wave schedule and the dispatch.
//
// The fused pass offers every score s(j, i) = <c_j, u_i> (divided by ||u_i|| when norms
// are given) of a wave of rows to a per-centroid candidate buffer: a score is appended
// when row i is not excluded and s > thr[j] (thr: the K-th best so far, or the floor).
// Appends go to free slots through an atomic counter, so their order varies; `compact`
// then sorts by (score desc, row asc), keeps the best K and raises thr[j]. Scores are
// accumulated in one fixed order per (j, i) (no split-K, no atomics on scores), so a
// rescan reproduces every score bit for bit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace simcore::cuda {

enum class Dtype { kFloat32, kFloat16, kBFloat16 };

// Per-centroid candidate buffers, [k][cap] each, cap a power of two >= 2K.
struct Candidates {
  float* value;
  int64_t* index;
  int cap;
  int* count;     // [k] entries written (may exceed cap: then overflow[j] is set)
  int* length;    // [k] sorted entries at the front of the buffer (<= K)
  float* thr;     // [k] a score must be strictly above it to be appended
  int* overflow;  // [k] set when an append found the buffer full
};

struct ScanArgs {
  Dtype dtype;
  const void* c;  // centroids, padded with zeros: [k_pad][d_pad] row-major (see pad_sizes)
  int k;          // real centroids
  int k_pad, d_pad;
  const void* u;  // rows of U, row-major with row stride ldu (elements)
  int64_t ldu;
  int d;
  int64_t row0, rows;  // this wave: rows [row0, row0 + rows) of U
  const float* norms;  // divide by norms[i] when not null
  const uint32_t* excluded_bits;  // bit i set: row i is excluded (null: none)
  Candidates cand;
  bool aligned;  // U rows are 16-byte aligned and d % 8 == 0 (16-bit types)
  int tile_rows;    // 128 or 256 for 16-bit types (benchmarking knob); ignored for float32
  int stages;       // 3 or 4: wgmma pipeline depth (benchmarking knob)
  bool use_wgmma;   // 16-bit types on sm_90a: warpgroup MMA instead of mma.sync
};

// Tile sizes: the centroids are zero-padded to whole tiles ([k_pad][d_pad]).
constexpr int kMmaTileCentroids = 128, kMmaTileDepth = 64;  // float16/bfloat16
constexpr int kSimtTile = 64, kSimtTileDepth = 16;          // float32

inline void pad_sizes(Dtype dtype, int k, int d, int* k_pad, int* d_pad) {
  const int tm = dtype == Dtype::kFloat32 ? kSimtTile : kMmaTileCentroids;
  const int tk = dtype == Dtype::kFloat32 ? kSimtTileDepth : kMmaTileDepth;
  *k_pad = (k + tm - 1) / tm * tm;
  *d_pad = (d + tk - 1) / tk * tk;
}

cudaError_t launch_mma_scan(const ScanArgs& a, cudaStream_t stream);    // scan_mma.cu
cudaError_t launch_wgmma_scan(const ScanArgs& a, cudaStream_t stream);  // scan_wgmma.cu
cudaError_t launch_simt_scan(const ScanArgs& a, cudaStream_t stream);   // scan_f32.cu
bool wgmma_available();  // the current device runs sm_90a code of this build

inline cudaError_t launch_fused_scan(const ScanArgs& a, cudaStream_t stream) {
  if (a.rows <= 0 || a.k <= 0) return cudaSuccess;
  if (a.dtype == Dtype::kFloat32) return launch_simt_scan(a, stream);
  return a.use_wgmma ? launch_wgmma_scan(a, stream) : launch_mma_scan(a, stream);
}

// Sorts the entries appended since the last compaction, merges them into the sorted front
// of the buffer, keeps the best K, sets length/count and raises thr. One block per centroid.
// `shared_bytes` must be compact_shared_bytes(K, cap) and within the device's opt-in limit.
size_t compact_shared_bytes(int K, int cap);
cudaError_t launch_compact(const Candidates& cand, int k, int K, cudaStream_t stream);

// out[i] = ||u_i||_2 in float32, one fixed summation order per row (a warp per row).
cudaError_t launch_row_norms(Dtype dtype, const void* u, int64_t n, int64_t ldu, int d,
                             bool aligned, float* out, cudaStream_t stream);

// bits[w] bit b = flags[32 w + b] (zero past n).
cudaError_t launch_pack_bits(const bool* flags, int64_t n, uint32_t* bits, cudaStream_t stream);

}  // namespace simcore::cuda
