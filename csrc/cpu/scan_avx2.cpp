// The fused pass on AVX2 + FMA (+ F16C for float16 input): for CPUs without AVX-512
// (e.g. AMD Zen 2/3, Intel client cores). Same structure as the AVX-512 path:
//   - packing: 8x8 register transposes turn 64 rows of U into float32 panels laid out
//     [4 blocks of 16 rows][d][16], so the micro-kernel streams each block sequentially;
//     float16/bfloat16 are widened on the way (exact), norms are one FMA per feature;
//   - micro-kernel: 6 centroids x 16 rows = 12 ymm accumulators (+2 B loads, 1 broadcast:
//     15 of the 16 registers), one FMA per (centroid, row, feature) in feature order;
//   - epilogue: optional division by the row norm, one compare + movemask per 8 scores,
//     a scalar offer only for the rare scores at or above the list's threshold.
// Exactness: the score of (j, i) is fma(c_j[d-1], u_i[d-1], ... fma(c_j[0], u_i[0], 0)),
// whatever the tile, block, thread or centroid panel; these are also the AVX-512 path's bits.
#include "scan_common.h"

#if SIMCORE_X86
#include <immintrin.h>

#define SIMCORE_AVX2 "avx2,fma,f16c"

namespace simcore::cpu::detail {
namespace {

constexpr int64_t RB = 16;  // rows per micro-kernel block

// 8 features of one row as float32.
template <Scalar S>
__attribute__((target(SIMCORE_AVX2), always_inline)) inline __m256 load8(const char* src) {
  if constexpr (S == Scalar::kFloat32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(src));
  } else if constexpr (S == Scalar::kFloat16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  } else {  // bfloat16 is the high half of a float32
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

// The first `cnt` (< 8) features of one row, zeros after: never reads past the row.
template <Scalar S>
__attribute__((target(SIMCORE_AVX2))) inline __m256 load8_partial(const char* src, int64_t cnt) {
  constexpr size_t es = S == Scalar::kFloat32 ? 4 : 2;
  alignas(32) char tmp[32] = {};
  std::memcpy(tmp, src, static_cast<size_t>(cnt) * es);
  return load8<S>(tmp);
}

// r[i] (row i, features 0..7) -> r[q] (feature q, rows 0..7).
__attribute__((target(SIMCORE_AVX2), always_inline)) inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  for (int q = 0; q < 4; ++q) {
    r[q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x20);
    r[4 + q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x31);
  }
}

// Packs rows [row0, row0 + rows) into B ([4][d][16] float32, zeros for rows past `rows`)
// and writes their norms: per row, ss = fma(x_p, x_p, ss) for p = 0..d-1, then sqrt.
template <Scalar S>
__attribute__((target(SIMCORE_AVX2))) void pack_avx2(const ScanRows& in, int64_t d, int64_t row0,
                                                     int64_t rows, float* B, float* nrm) {
  constexpr int64_t es = S == Scalar::kFloat32 ? 4 : 2;
  const char* base = static_cast<const char*>(in.data);
  const int64_t stride = in.row_stride * es;
  for (int64_t g = 0; g < NT / 8; ++g) {  // groups of 8 rows
    const int64_t rbase = g * 8;
    float* out = B + (rbase / RB) * d * RB + rbase % RB;
    const char* src0 = base + (row0 + rbase) * stride;
    __m256 ss = _mm256_setzero_ps();
    int64_t p0 = 0;
    if (rbase + 8 <= rows) {  // full 8x8 blocks: constant register indices, no spills
      for (; p0 + 8 <= d; p0 += 8) {
        __m256 r[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) r[i] = load8<S>(src0 + i * stride + p0 * es);
        transpose8(r);
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) {
          _mm256_store_ps(out + (p0 + q) * RB, r[q]);
          ss = _mm256_fmadd_ps(r[q], r[q], ss);
        }
      }
    }
    for (; p0 < d; p0 += 8) {  // edges: the last features, the rows past the end of U
      const int64_t cnt = d - p0 < 8 ? d - p0 : 8;
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        const char* src = src0 + i * stride + p0 * es;
        r[i] = rbase + i >= rows ? _mm256_setzero_ps()
               : cnt == 8        ? load8<S>(src)
                                 : load8_partial<S>(src, cnt);
      }
      transpose8(r);
      for (int q = 0; q < cnt; ++q) {
        _mm256_store_ps(out + (p0 + q) * RB, r[q]);
        ss = _mm256_fmadd_ps(r[q], r[q], ss);
      }
    }
    _mm256_store_ps(nrm + rbase, _mm256_sqrt_ps(ss));
  }
}

// Offers the scores of centroids j0.. (6) x rows row0.. (16) that reach the thresholds.
template <bool kDivide>
__attribute__((target(SIMCORE_AVX2), always_inline)) inline void epilogue_avx2(
    __m256 (&acc)[MR][2], int64_t j0, int64_t k, const float* nrm, uint32_t vm, int64_t row0,
    TopKLists& L) {
  const float* thr = L.thresholds();
  __m256 n0 = _mm256_setzero_ps(), n1 = _mm256_setzero_ps();
  if (kDivide) n0 = _mm256_load_ps(nrm), n1 = _mm256_load_ps(nrm + 8);
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    const int64_t j = j0 + r;
    if (j >= k) break;
    const __m256 t = _mm256_set1_ps(thr[j]);
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) {
      __m256 s = acc[r][v];
      if (kDivide) s = _mm256_div_ps(s, v == 0 ? n0 : n1);
      // ordered >=: a NaN threshold (K = 0) or score never passes
      uint32_t m = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s, t, _CMP_GE_OQ))) &
                   (vm >> (8 * v)) & 0xffu;
      if (m) {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, s);
        while (m) {
          const int b = __builtin_ctz(m);
          m &= m - 1;
          L.offer(j, tmp[b], row0 + 8 * v + b);
        }
      }
    }
  }
}

// One 6-centroid panel x one 16-row block, over all d features.
template <bool kDivide>
__attribute__((target(SIMCORE_AVX2), always_inline)) inline void block_avx2(
    const float* b, const float* ap, int64_t d, int64_t j0, int64_t k, const float* nrm,
    uint32_t vm, int64_t row0, TopKLists& L) {
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int64_t p = 0; p < d; ++p, b += RB, ap += MR) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 ar = _mm256_broadcast_ss(ap + r);
      acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
    }
  }
  epilogue_avx2<kDivide>(acc, j0, k, nrm, vm, row0, L);
}

// Loop order (same bits either way; each list still sees its rows in ascending order):
// blocks outside when a packed block (d x 64 bytes) fits in L1 beside a panel, so small d
// re-reads the centroids (0.4 lines per feature) rather than the tile (1 line).
template <bool kDivide>
__attribute__((target(SIMCORE_AVX2))) void tile_avx2(const float* B, const float* A,
                                                     int64_t panels, int64_t d, int64_t k,
                                                     const float* nrm, uint64_t valid,
                                                     int64_t row0, TopKLists& L,
                                                     NextTilePrefetch& pf, bool blocks_outer) {
  const int64_t pf_lines = (pf.total_lines() + panels * (NT / RB) - 1) / (panels * (NT / RB));
  for (int64_t outer = 0; outer < (blocks_outer ? NT / RB : panels); ++outer) {
    for (int64_t inner = 0; inner < (blocks_outer ? panels : NT / RB); ++inner) {
      const int64_t panel = blocks_outer ? inner : outer, blk = blocks_outer ? outer : inner;
      const uint32_t vm = static_cast<uint32_t>(valid >> (RB * blk)) & 0xffffu;
      if (!vm) continue;
      pf.step(pf_lines);
      block_avx2<kDivide>(B + blk * d * RB, A + panel * d * MR, d, panel * MR, k,
                          nrm + RB * blk, vm, row0 + RB * blk, L);
    }
  }
}

}  // namespace

void scan_tiles_avx2(const ScanRows& in, const CentroidPanels& C, int64_t tile_begin,
                     int64_t tile_end, TopKLists& L) {
  const int64_t d = C.d(), k = C.k(), panels = C.panels();
  AlignedBuffer packed(static_cast<size_t>(d * NT) * 4);
  float* B = static_cast<float*>(packed.ptr);
  const float* A = static_cast<const float*>(C.data());
  alignas(32) float nrm[NT];
  const bool blocks_outer = d * RB * 4 <= 16384;  // d <= 256: a few % faster at d = 128/256
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t row0 = tile * NT;
    const int64_t rows = in.n - row0 < NT ? in.n - row0 : NT;
    const uint64_t valid = valid_rows_mask(in.excluded, row0, rows);
    if (!valid && !in.norms) continue;  // nothing to score, nothing to report
    NextTilePrefetch pf(in, d, tile + 1 < tile_end ? row0 + NT : in.n);
    switch (in.scalar) {
      case Scalar::kFloat32: pack_avx2<Scalar::kFloat32>(in, d, row0, rows, B, nrm); break;
      case Scalar::kFloat16: pack_avx2<Scalar::kFloat16>(in, d, row0, rows, B, nrm); break;
      default: pack_avx2<Scalar::kBFloat16>(in, d, row0, rows, B, nrm);
    }
    if (valid) {
      if (in.divide_by_norm)
        tile_avx2<true>(B, A, panels, d, k, nrm, valid, row0, L, pf, blocks_outer);
      else
        tile_avx2<false>(B, A, panels, d, k, nrm, valid, row0, L, pf, blocks_outer);
    }
    if (in.norms)
      for (int64_t t = 0; t < rows; ++t) in.norms[row0 + t] = nrm[t];
  }
}

}  // namespace simcore::cpu::detail

#endif  // SIMCORE_X86
