// CPU kernels of the fused pass (see scan_kernel.h). Three kinds of code live here:
//   - packing: a tile of 64 rows is transposed so that the micro-kernel reads rows of one
//     feature as contiguous vectors; row norms fall out on the way;
//   - micro-kernels: 6 centroids x a block of rows, accumulators in registers, one pass over d;
//   - the epilogue: optional division by the row norm, mask, threshold test, rare inserts.
// An AVX-512 path (float32 FMA, or native bfloat16 pairs with vdpbf16ps) and a portable
// path (GCC/Clang vector extensions, compiled for the baseline target). The AVX2 path
// lives in scan_avx2.cpp; helpers shared by the paths in scan_common.h.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "scan_common.h"

#if SIMCORE_X86
#include <immintrin.h>
#endif

namespace simcore::cpu {
namespace {

using namespace detail;

// ---------------------------------------------------------------- portable path
// Blocks of GW rows: packed [NT/GW][d][GW], micro-kernel 6 centroids x GW rows with 4-wide
// vectors (12 accumulators: fits the 16 SSE registers of baseline x86-64 and NEON's 32).
constexpr int64_t GW = 8;

// Packs rows into float32 blocks, zeros past `rows`; norms only when asked (without
// hardware FMA, std::fma is a library call per element). The conversion is chosen at
// compile time so the loops over the GW rows can be vectorised.
template <Scalar S>
void pack_generic(const ScanRows& in, int64_t d, int64_t row0, int64_t rows, float* B, float* nrm,
                  bool norms) {
  const int64_t stride = in.row_stride * static_cast<int64_t>(elem_size(S));
  const char* base = static_cast<const char*>(in.data) + row0 * stride;
  for (int64_t blk = 0; blk < NT / GW; ++blk) {
    float* out = B + blk * d * GW;
    const int64_t live = rows - blk * GW < 0 ? 0 : rows - blk * GW < GW ? rows - blk * GW : GW;
    const char* src[GW];
    for (int64_t t = 0; t < GW; ++t) src[t] = base + (blk * GW + (t < live ? t : 0)) * stride;
    if (live == GW) {
      for (int64_t p = 0; p < d; ++p)
        for (int64_t t = 0; t < GW; ++t) out[p * GW + t] = load_as_float<S>(src[t], p);
    } else {
      for (int64_t p = 0; p < d; ++p)
        for (int64_t t = 0; t < GW; ++t)
          out[p * GW + t] = t < live ? load_as_float<S>(src[t], p) : 0.f;
    }
    if (norms) {  // sequential fma over the feature index, as on every path
      float ss[GW] = {};
      for (int64_t p = 0; p < d; ++p)
        for (int64_t t = 0; t < GW; ++t) ss[t] = std::fma(out[p * GW + t], out[p * GW + t], ss[t]);
      for (int64_t t = 0; t < GW; ++t) nrm[blk * GW + t] = std::sqrt(ss[t]);
    }
  }
}

typedef float v4f __attribute__((vector_size(16)));
typedef float v4f_u __attribute__((vector_size(16), aligned(4)));

void tile_generic(const float* B, const float* A, int64_t panels, int64_t d, int64_t k,
                  const float* nrm, bool divide, uint64_t valid, int64_t row0, TopKLists& L,
                  NextTilePrefetch& pf) {
  const float* thr = L.thresholds();
  const int64_t pf_lines = (pf.total_lines() + panels - 1) / panels;
  for (int64_t panel = 0; panel < panels; ++panel) {
    pf.step(pf_lines);
    const float* a = A + panel * d * MR;
    for (int64_t blk = 0; blk < NT / GW; ++blk) {
      const uint32_t vm = static_cast<uint32_t>(valid >> (GW * blk)) & 0xffu;
      if (!vm) continue;
      v4f acc[MR][2];
      for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = v4f{};
      const float* b = B + blk * d * GW;
      const float* ap = a;
      for (int64_t p = 0; p < d; ++p, b += GW, ap += MR) {
        const v4f b0 = *reinterpret_cast<const v4f_u*>(b);
        const v4f b1 = *reinterpret_cast<const v4f_u*>(b + 4);
#pragma GCC unroll 6
        for (int r = 0; r < MR; ++r) {
          const v4f ar = v4f{} + ap[r];
          acc[r][0] += ar * b0;
          acc[r][1] += ar * b1;
        }
      }
      for (int r = 0; r < MR; ++r) {
        const int64_t j = panel * MR + r;
        if (j >= k) break;
        for (int t = 0; t < GW; ++t) {
          if (!((vm >> t) & 1u)) continue;
          float s = acc[r][t >> 2][t & 3];
          if (divide) s = s / nrm[blk * GW + t];
          if (s >= thr[j]) L.offer(j, s, row0 + blk * GW + t);
        }
      }
    }
  }
}

#if SIMCORE_X86
// ---------------------------------------------------------------- AVX-512 path
#define SIMCORE_AVX512 "avx512f,avx512bw,avx512dq,avx512vl,fma"
#define SIMCORE_AVX512BF16 "avx512f,avx512bw,avx512dq,avx512vl,fma,avx512bf16"

__attribute__((target(SIMCORE_AVX512), always_inline)) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    __m512d c = _mm512_castps_pd(t[4 * i + 2]), e = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
    r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xdd);
  }
}

// Loads up to 16 features of one row as float32 (zeros past `cnt`).
template <Scalar S>
__attribute__((target(SIMCORE_AVX512), always_inline)) inline __m512 load16_f32(const char* src,
                                                                               __mmask16 m) {
  if constexpr (S == Scalar::kFloat32) {
    return _mm512_maskz_loadu_ps(m, src);
  } else if constexpr (S == Scalar::kFloat16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src));
  } else {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src)), 16));
  }
}

// Packs to float32 [d][64]; norms per row (sequential fma over the feature index).
// Full 16x16 blocks take a path with constant register indices (no spills); edges
// (last rows of U, last features) take a masked path.
template <Scalar S>
__attribute__((target(SIMCORE_AVX512))) void pack_avx512_f32(const ScanRows& in, int64_t d,
                                                            int64_t row0, int64_t rows, float* B,
                                                            float* nrm) {
  constexpr size_t es = S == Scalar::kFloat32 ? 4 : 2;
  const char* base = static_cast<const char*>(in.data);
  const int64_t stride = in.row_stride * es;
  for (int64_t g = 0; g < NT / 16; ++g) {
    __m512 ss = _mm512_setzero_ps();
    const int64_t rbase = g * 16;
    const char* src0 = base + (row0 + rbase) * stride;
    const bool full_rows = rbase + 16 <= rows;
    int64_t p0 = 0;
    if (full_rows) {
      for (; p0 + 16 <= d; p0 += 16) {
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) r[i] = load16_f32<S>(src0 + i * stride + p0 * es, 0xffff);
        transpose16(r);
        float* out = B + p0 * NT + rbase;
#pragma GCC unroll 16
        for (int q = 0; q < 16; ++q) {
          _mm512_store_ps(out + q * NT, r[q]);
          ss = _mm512_fmadd_ps(r[q], r[q], ss);
        }
      }
    }
    for (; p0 < d; p0 += 16) {  // edges
      const int64_t cnt = d - p0 < 16 ? d - p0 : 16;
      const __mmask16 m = cnt >= 16 ? __mmask16(0xffff) : __mmask16((1u << cnt) - 1);
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = rbase + i < rows ? load16_f32<S>(src0 + i * stride + p0 * es, m)
                                : _mm512_setzero_ps();
      transpose16(r);
      for (int q = 0; q < cnt; ++q) {
        _mm512_store_ps(B + (p0 + q) * NT + rbase, r[q]);
        ss = _mm512_fmadd_ps(r[q], r[q], ss);
      }
    }
    _mm512_store_ps(nrm + rbase, _mm512_sqrt_ps(ss));
  }
}

template <bool kDivide>
__attribute__((target(SIMCORE_AVX512), always_inline)) inline void epilogue_avx512(
    __m512 (&acc)[MR][4], int64_t j0, int64_t k, const float* nrm, uint64_t valid, int64_t row0,
    TopKLists& L) {
  const float* thr = L.thresholds();
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    const int64_t j = j0 + r;
    if (j >= k) break;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      __m512 s = acc[r][v];
      if (kDivide) s = _mm512_div_ps(s, _mm512_load_ps(nrm + 16 * v));
      __mmask16 m = _mm512_mask_cmp_ps_mask(static_cast<__mmask16>(valid >> (16 * v)), s,
                                            _mm512_set1_ps(thr[j]), _CMP_GE_OQ);
      if (m) {
        alignas(64) float tmp[16];
        _mm512_store_ps(tmp, s);
        while (m) {
          int b = __builtin_ctz(m);
          m &= m - 1;
          L.offer(j, tmp[b], row0 + 16 * v + b);
        }
      }
    }
  }
}

template <bool kDivide>
__attribute__((target(SIMCORE_AVX512))) void tile_avx512_f32(const float* B, const float* A,
                                                            int64_t panels, int64_t d, int64_t k,
                                                            const float* nrm, uint64_t valid,
                                                            int64_t row0, TopKLists& L,
                                                            NextTilePrefetch& pf) {
  const int64_t pf_lines = (pf.total_lines() + panels - 1) / panels;
  for (int64_t panel = 0; panel < panels; ++panel) {
    pf.step(pf_lines);
    const float* a = A + panel * d * MR;
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
    const float* b = B;
    const float* ap = a;
    for (int64_t p = 0; p < d; ++p, b += NT, ap += MR) {
      __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
      __m512 b2 = _mm512_load_ps(b + 32), b3 = _mm512_load_ps(b + 48);
#pragma GCC unroll 6
      for (int r = 0; r < MR; ++r) {
        __m512 ar = _mm512_set1_ps(ap[r]);
        acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);
        acc[r][2] = _mm512_fmadd_ps(ar, b2, acc[r][2]);
        acc[r][3] = _mm512_fmadd_ps(ar, b3, acc[r][3]);
      }
    }
    epilogue_avx512<kDivide>(acc, panel * MR, k, nrm, valid, row0, L);
  }
}

// Packs bfloat16 rows to pairs [ceil(d/2)][64] (uint32 = two consecutive features).
__attribute__((target(SIMCORE_AVX512BF16), always_inline)) inline void store_pairs(
    __m512 v, uint32_t* out, __m512& ss) {
  const __m512i x = _mm512_castps_si512(v);
  _mm512_store_si512(out, x);
  const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
  const __m512 hi =
      _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  ss = _mm512_fmadd_ps(lo, lo, ss);
  ss = _mm512_fmadd_ps(hi, hi, ss);
}

__attribute__((target(SIMCORE_AVX512BF16))) void pack_avx512_bf16(const ScanRows& in, int64_t d,
                                                                 int64_t row0, int64_t rows,
                                                                 uint32_t* B, float* nrm) {
  const int64_t depth = (d + 1) / 2;
  const uint16_t* base = static_cast<const uint16_t*>(in.data);
  for (int64_t g = 0; g < NT / 16; ++g) {
    __m512 ss = _mm512_setzero_ps();
    const int64_t rbase = g * 16;
    const uint16_t* src0 = base + (row0 + rbase) * in.row_stride;
    int64_t q0 = 0;
    if (rbase + 16 <= rows) {
      for (; 2 * (q0 + 16) <= d; q0 += 16) {
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src0 + i * in.row_stride + 2 * q0);
        transpose16(r);
        uint32_t* out = B + q0 * NT + rbase;
#pragma GCC unroll 16
        for (int q = 0; q < 16; ++q) store_pairs(r[q], out + q * NT, ss);
      }
    }
    for (; q0 < depth; q0 += 16) {  // edges
      const int64_t cnt_pairs = depth - q0 < 16 ? depth - q0 : 16;
      const int64_t cnt = d - 2 * q0 < 32 ? d - 2 * q0 : 32;  // bfloat16 elements
      const __mmask32 m = cnt >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << cnt) - 1);
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = rbase + i < rows ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(
                                      m, src0 + i * in.row_stride + 2 * q0))
                                : _mm512_setzero_ps();
      transpose16(r);
      for (int q = 0; q < cnt_pairs; ++q) store_pairs(r[q], B + (q0 + q) * NT + rbase, ss);
    }
    _mm512_store_ps(nrm + rbase, _mm512_sqrt_ps(ss));
  }
}

template <bool kDivide>
__attribute__((target(SIMCORE_AVX512BF16))) void tile_avx512_bf16(const uint32_t* B,
                                                                  const uint32_t* A,
                                                                  int64_t panels, int64_t depth,
                                                                  int64_t k, const float* nrm,
                                                                  uint64_t valid, int64_t row0,
                                                                  TopKLists& L,
                                                                  NextTilePrefetch& pf) {
  const int64_t pf_lines = (pf.total_lines() + panels - 1) / panels;
  for (int64_t panel = 0; panel < panels; ++panel) {
    pf.step(pf_lines);
    const uint32_t* a = A + panel * depth * MR;
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
    const uint32_t* b = B;
    const uint32_t* ap = a;
    for (int64_t q = 0; q < depth; ++q, b += NT, ap += MR) {
      __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
      __m512bh b2 = (__m512bh)_mm512_load_si512(b + 32), b3 = (__m512bh)_mm512_load_si512(b + 48);
#pragma GCC unroll 6
      for (int r = 0; r < MR; ++r) {
        __m512bh ar = (__m512bh)_mm512_set1_epi32(static_cast<int>(ap[r]));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
        acc[r][2] = _mm512_dpbf16_ps(acc[r][2], ar, b2);
        acc[r][3] = _mm512_dpbf16_ps(acc[r][3], ar, b3);
      }
    }
    epilogue_avx512<kDivide>(acc, panel * MR, k, nrm, valid, row0, L);
  }
}
#endif  // SIMCORE_X86

}  // namespace

// ---------------------------------------------------------------- ISA selection
Isa best_isa() {
#if SIMCORE_X86
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return Isa::kAvx512Bf16;
  if (avx512) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

Isa parse_isa(const std::string& s) {
  if (s == "generic") return Isa::kGeneric;
  if (s == "avx2") return Isa::kAvx2;
  if (s == "avx512") return Isa::kAvx512;
  if (s == "avx512bf16") return Isa::kAvx512Bf16;
  throw std::invalid_argument("unknown instruction set '" + s +
                              "' (expected generic, avx2, avx512 or avx512bf16)");
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kGeneric: return "generic";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    default: return "avx512bf16";
  }
}

// ---------------------------------------------------------------- centroid panels
CentroidPanels::CentroidPanels(Isa isa, Scalar scalar, const void* data, int64_t k,
                               int64_t row_stride, int64_t d)
    : isa_(isa),
      bf16_pairs_(isa == Isa::kAvx512Bf16 && scalar == Scalar::kBFloat16),
      k_(k),
      d_(d),
      panels_((k + MR - 1) / MR),
      depth_(bf16_pairs_ ? (d + 1) / 2 : d),
      data_(aligned_alloc64(static_cast<size_t>(panels_ * depth_ * MR) * 4)) {
  const size_t es = elem_size(scalar);
  for (int64_t j = 0; j < k; ++j) {
    const char* src = static_cast<const char*>(data) + j * row_stride * es;
    const int64_t panel = j / MR, r = j % MR;
    if (bf16_pairs_) {
      uint32_t* A = static_cast<uint32_t*>(data_) + panel * depth_ * MR;
      const uint16_t* s16 = reinterpret_cast<const uint16_t*>(src);
      for (int64_t q = 0; q < depth_; ++q) {
        uint32_t lo = s16[2 * q], hi = 2 * q + 1 < d ? s16[2 * q + 1] : 0;
        A[q * MR + r] = lo | (hi << 16);
      }
    } else {
      float* A = static_cast<float*>(data_) + panel * depth_ * MR;
      for (int64_t p = 0; p < d; ++p) A[p * MR + r] = load_as_float(scalar, src, p);
    }
  }
}

CentroidPanels::~CentroidPanels() { aligned_free64(data_); }

// ---------------------------------------------------------------- the tile loop
void scan_tiles(const ScanRows& in, const CentroidPanels& C, int64_t tile_begin, int64_t tile_end,
                TopKLists& L) {
  [[maybe_unused]] const Isa isa = C.isa();  // unused where only the generic path exists
  L.begin_rows(tile_begin * NT, std::min(tile_end * NT, in.n));
#if SIMCORE_X86
  if (isa == Isa::kAvx2) return detail::scan_tiles_avx2(in, C, tile_begin, tile_end, L);
#endif
  const int64_t d = C.d(), depth = C.depth(), k = C.k(), panels = C.panels();
  AlignedBuffer packed(static_cast<size_t>(depth * NT) * 4);
  alignas(64) float nrm[NT];
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t row0 = tile * NT;
    const int64_t rows = in.n - row0 < NT ? in.n - row0 : NT;
    const uint64_t valid = valid_rows_mask(in.excluded, row0, rows);
    if (!valid && !in.norms) continue;  // nothing to score, nothing to report
    NextTilePrefetch pf(in, d, tile + 1 < tile_end ? row0 + NT : in.n);
#if SIMCORE_X86
    if (C.bf16_pairs()) {
      uint32_t* B = static_cast<uint32_t*>(packed.ptr);
      pack_avx512_bf16(in, d, row0, rows, B, nrm);
      if (valid) {
        const uint32_t* A = static_cast<const uint32_t*>(C.data());
        if (in.divide_by_norm)
          tile_avx512_bf16<true>(B, A, panels, depth, k, nrm, valid, row0, L, pf);
        else
          tile_avx512_bf16<false>(B, A, panels, depth, k, nrm, valid, row0, L, pf);
      }
    } else if (isa == Isa::kAvx512 || isa == Isa::kAvx512Bf16) {
      float* B = static_cast<float*>(packed.ptr);
      switch (in.scalar) {
        case Scalar::kFloat32: pack_avx512_f32<Scalar::kFloat32>(in, d, row0, rows, B, nrm); break;
        case Scalar::kFloat16: pack_avx512_f32<Scalar::kFloat16>(in, d, row0, rows, B, nrm); break;
        default: pack_avx512_f32<Scalar::kBFloat16>(in, d, row0, rows, B, nrm);
      }
      if (valid) {
        const float* A = static_cast<const float*>(C.data());
        if (in.divide_by_norm)
          tile_avx512_f32<true>(B, A, panels, d, k, nrm, valid, row0, L, pf);
        else
          tile_avx512_f32<false>(B, A, panels, d, k, nrm, valid, row0, L, pf);
      }
    } else
#endif
    {
      float* B = static_cast<float*>(packed.ptr);
      const bool norms = in.divide_by_norm || in.norms;
      switch (in.scalar) {
        case Scalar::kFloat32: pack_generic<Scalar::kFloat32>(in, d, row0, rows, B, nrm, norms); break;
        case Scalar::kFloat16: pack_generic<Scalar::kFloat16>(in, d, row0, rows, B, nrm, norms); break;
        default: pack_generic<Scalar::kBFloat16>(in, d, row0, rows, B, nrm, norms);
      }
      if (valid)
        tile_generic(B, static_cast<const float*>(C.data()), panels, d, k, nrm, in.divide_by_norm,
                     valid, row0, L, pf);
    }
    if (in.norms)
      for (int64_t t = 0; t < rows; ++t) in.norms[row0 + t] = nrm[t];
  }
}

}  // namespace simcore::cpu
