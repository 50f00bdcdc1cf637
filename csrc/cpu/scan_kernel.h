// The fused CPU pass: centroid x row similarity on cache-sized tiles, fused with the
// per-centroid top-K and the exclusion mask. ATen-free; threading is the caller's.
//
// Exactness: the score of (centroid j, row i) is accumulated in one fixed order
// (sequentially over the feature dimension) whatever the tile, chunk, thread or call,
// so a rescan, a different chunking or a gathered subset reproduces it bit for bit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "topk_lists.h"

namespace simcore::cpu {

enum class Scalar { kFloat32, kFloat16, kBFloat16 };

// Instruction sets with a kernel, weakest first. `avx2` also needs FMA and F16C.
// `avx512bf16` multiplies bfloat16 pairs natively (vdpbf16ps); the others widen
// bfloat16/float16 to float32 when packing. `avx2` and `avx512` give the same bits.
enum class Isa { kGeneric, kAvx2, kAvx512, kAvx512Bf16 };

Isa best_isa();                       // what this CPU supports
Isa parse_isa(const std::string& s);  // "generic" | "avx2" | "avx512" | "avx512bf16"; throws
const char* isa_name(Isa isa);

constexpr int64_t kTileRows = 64;  // rows per tile; also the packed panel width
constexpr int64_t kPanelCentroids = 6;

// Centroids packed once per call into panels of kPanelCentroids rows.
class CentroidPanels {
 public:
  CentroidPanels(Isa isa, Scalar scalar, const void* data, int64_t k, int64_t row_stride, int64_t d);
  ~CentroidPanels();
  Isa isa() const { return isa_; }
  bool bf16_pairs() const { return bf16_pairs_; }
  int64_t k() const { return k_; }
  int64_t d() const { return d_; }
  int64_t panels() const { return panels_; }
  int64_t depth() const { return depth_; }  // d, or d/2 rounded up for bfloat16 pairs
  const void* data() const { return data_; }

 private:
  Isa isa_;
  bool bf16_pairs_;
  int64_t k_, d_, panels_, depth_;
  void* data_;
};

struct ScanRows {
  Scalar scalar;
  const void* data;  // n rows of d elements, unit stride within a row
  int64_t n;
  int64_t row_stride;        // in elements
  const bool* excluded;      // n flags, or null
  bool divide_by_norm;       // score = <c, u> / ||u||
  float* norms;              // n outputs (||u|| in float32), or null
};

inline int64_t num_tiles(int64_t n) { return (n + kTileRows - 1) / kTileRows; }

// Scores tiles [tile_begin, tile_end) and offers every candidate to `lists`.
void scan_tiles(const ScanRows& rows, const CentroidPanels& centroids, int64_t tile_begin,
                int64_t tile_end, TopKLists& lists);

}  // namespace simcore::cpu
