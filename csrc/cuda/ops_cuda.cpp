// CUDA implementations of the simcore ops: tensor checks, the wave schedule and dispatch
// to the ATen-free kernels of this folder (kernels.h).
//
// A pass scores U in waves of rows. Each wave's fused kernel appends the scores above a
// centroid's threshold to its candidate buffer (capacity cap, see below); a compaction
// keeps the best K and raises the threshold to the K-th score. Waves grow with the rows
// seen, so that about K * wave / seen entries arrive per wave when rows come in random
// order: room / (4 + 32 / K), a margin that widens for small K, whose arrival counts
// scatter more (K = 1: geometric). (cap is 4 * pow2(K) where the compaction's shared
// memory allows, else 2 * pow2(K).) A centroid whose buffer still overflows (rows in
// rising score order, say) is recomputed with smaller waves, down to waves of cap - K
// rows, which can never overflow. No k x n buffer is ever formed.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "../checks.h"
#include "kernels.h"

namespace simcore {

bool built_with_cuda() { return true; }

namespace {

cuda::Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::Dtype::kFloat32;
    case at::kHalf: return cuda::Dtype::kFloat16;
    default: return cuda::Dtype::kBFloat16;
  }
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "simcore: ", what, " failed: ", cudaGetErrorString(err));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

at::Tensor row_major(const at::Tensor& t) {
  return t.stride(1) == 1 && t.stride(0) >= t.size(1) ? t : t.contiguous();
}

// 16-byte vector loads are possible: aligned base, row stride and d in whole granules.
bool rows_aligned(const at::Tensor& U) {
  const int64_t granule = 16 / U.element_size();
  return reinterpret_cast<uintptr_t>(U.data_ptr()) % 16 == 0 && U.stride(0) % granule == 0 &&
         (U.scalar_type() == at::kFloat || U.size(1) % granule == 0);
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoll(v) : fallback;
}

int64_t pow2_at_least(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

// The tensor-core kernel for 16-bit types: SIMCORE_CUDA_KERNEL=mma|wgmma; by default
// wgmma where this build has sm_90a code for the device (H100/H200), else mma.sync.
bool use_wgmma() {
  const char* v = std::getenv("SIMCORE_CUDA_KERNEL");
  const std::string want = v && *v ? v : "auto";
  TORCH_CHECK_VALUE(want == "auto" || want == "mma" || want == "wgmma",
                    "SIMCORE_CUDA_KERNEL must be auto, mma or wgmma, got '", want, "'");
  if (want == "auto") return cuda::wgmma_available();
  if (want == "mma") return false;
  TORCH_CHECK(cuda::wgmma_available(),
              "SIMCORE_CUDA_KERNEL=wgmma needs an sm_90 GPU and a build for 9.0a");
  return true;
}

// Shared memory a block may opt into on the current device.
int64_t max_shared_bytes() {
  int device = 0, bytes = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute");
  return bytes;
}

// The buffers of one pass over U for k centroids.
struct Buffers {
  at::Tensor value, index, count, length, thr, overflow;
  int cap;
  cuda::Candidates view() {
    return {value.data_ptr<float>(), index.data_ptr<int64_t>(), cap, count.data_ptr<int>(),
            length.data_ptr<int>(), thr.data_ptr<float>(), overflow.data_ptr<int>()};
  }
};

// Compaction with ATen sorts: for K too large for one block's shared memory.
void compact_aten(Buffers& b, int64_t K) {
  const at::Tensor total = b.count.clamp_max(b.cap);
  const at::Tensor slot = at::arange(b.cap, total.options()).unsqueeze(0);
  const at::Tensor empty = slot >= total.unsqueeze(1);
  const at::Tensor v = b.value.masked_fill(empty, -INFINITY);
  const at::Tensor i = b.index.masked_fill(empty, std::numeric_limits<int64_t>::max());
  // (score desc, row asc): sort by row, then a stable sort by score.
  auto [i1, o1] = i.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false);
  auto [v2, o2] = v.gather(1, o1).sort(/*stable=*/true, /*dim=*/1, /*descending=*/true);
  const at::Tensor i2 = i1.gather(1, o2);
  b.value.narrow(1, 0, K).copy_(v2.narrow(1, 0, K));
  b.index.narrow(1, 0, K).copy_(i2.narrow(1, 0, K));
  const at::Tensor len = total.clamp_max(K);
  b.count.copy_(len);
  b.length.copy_(len);
  b.thr.copy_(at::where(len == K, v2.select(1, K - 1), b.thr));
}

struct Pass {
  const at::Tensor& U;           // row-major rows
  const uint32_t* bits;          // excluded rows, or null
  const float* norms;            // divide by these, or null
  bool aligned;
};

// Best K per centroid of C over the rows of the pass, into values/indices ([k, K], filled
// with -inf/-1 beforehand). `level` > 0: a retry with smaller waves after an overflow.
void topk_pass(const at::Tensor& C, const Pass& pass, int64_t K_out,
               const std::optional<at::Tensor>& floor, int level, at::Tensor& values,
               at::Tensor& indices) {
  const at::Tensor& U = pass.U;
  const int64_t k = C.size(0), n = U.size(0), d = U.size(1);
  const int64_t K = std::min(K_out, n);  // slots past n stay -inf / -1
  const cuda::Dtype dt = dtype_of(U);
  int k_pad = 0, d_pad = 0;
  cuda::pad_sizes(dt, static_cast<int>(k), static_cast<int>(d), &k_pad, &d_pad);
  at::Tensor Cp = at::zeros({k_pad, d_pad}, C.options());
  Cp.narrow(0, 0, k).narrow(1, 0, d).copy_(C);

  TORCH_CHECK_VALUE(K <= (int64_t(1) << 28), "K is too large for the CUDA kernels: ", K);
  const int64_t smem = max_shared_bytes();
  const bool aten_compact = env_int("SIMCORE_CUDA_ATEN_COMPACT", 0) != 0;
  auto fits = [&](int64_t c) {
    return static_cast<int64_t>(cuda::compact_shared_bytes(static_cast<int>(K), static_cast<int>(c))) <= smem;
  };
  const int64_t kp = std::max<int64_t>(32, pow2_at_least(K));
  const int64_t cap = fits(4 * kp) ? 4 * kp : 2 * kp;
  const bool smem_compact = !aten_compact && fits(cap);
  const auto i32 = C.options().dtype(at::kInt);
  Buffers b{at::empty({k, cap}, C.options().dtype(at::kFloat)),
            at::empty({k, cap}, C.options().dtype(at::kLong)),
            at::zeros({k}, i32),
            at::zeros({k}, i32),
            floor.has_value() ? floor->to(C.device()).contiguous().clone()
                              : at::full({k}, -INFINITY, C.options().dtype(at::kFloat)),
            at::zeros({k}, i32),
            static_cast<int>(cap)};

  cuda::ScanArgs a{};
  a.dtype = dt;
  a.c = Cp.data_ptr();
  a.k = static_cast<int>(k);
  a.k_pad = k_pad;
  a.d_pad = d_pad;
  a.u = U.data_ptr();
  a.ldu = U.stride(0);
  a.d = static_cast<int>(d);
  a.norms = pass.norms;
  a.excluded_bits = pass.bits;
  a.cand = b.view();
  a.aligned = pass.aligned;
  a.tile_rows = static_cast<int>(env_int("SIMCORE_CUDA_TILE_ROWS", 128));
  a.stages = static_cast<int>(env_int("SIMCORE_CUDA_STAGES", 3));
  a.use_wgmma = dt != cuda::Dtype::kFloat32 && use_wgmma();

  const int64_t room = cap - K;  // free slots after a compaction, at least
  // Waves small enough for int counters and a grid of < 2^31 blocks (64-row tiles or wider).
  const int64_t int_max = std::numeric_limits<int>::max();
  const int64_t max_wave = std::min(int_max - cap, int_max / std::max<int64_t>(1, k_pad / 64) * 64);
  int64_t seen = floor.has_value() ? n : 0;  // a floor stands for rows seen before
  for (int64_t pos = 0; pos < n;) {
    int64_t wave;
    if (level >= 2) wave = room;  // never overflows: each row adds at most one entry
    else if (seen == 0) wave = cap;  // the buffer is empty
    else wave = std::max(room, seen * room / ((level == 0 ? 1 : 8) * (4 * K + 32)));
    wave = std::min({wave, n - pos, max_wave});
    a.row0 = pos;
    a.rows = wave;
    check_cuda(cuda::launch_fused_scan(a, stream()), "fused scan kernel");
    if (smem_compact)
      check_cuda(cuda::launch_compact(a.cand, static_cast<int>(k), static_cast<int>(K), stream()),
                 "compaction kernel");
    else
      compact_aten(b, K);
    pos += wave;
    seen += wave;
  }

  const at::Tensor slot = at::arange(K, b.length.options()).unsqueeze(0);
  const at::Tensor filled = slot < b.length.unsqueeze(1);
  values.narrow(1, 0, K).copy_(at::where(filled, b.value.narrow(1, 0, K), -INFINITY));
  indices.narrow(1, 0, K).copy_(at::where(filled, b.index.narrow(1, 0, K), -1));

  const at::Tensor over = b.overflow.nonzero().view(-1);
  if (over.numel() > 0) {
    TORCH_CHECK(level < 2, "simcore: candidate buffer overflow with overflow-free waves (bug)");
    const at::Tensor sub_c = C.index_select(0, over);
    std::optional<at::Tensor> sub_floor;
    if (floor.has_value()) sub_floor = floor->to(C.device()).index_select(0, over);
    at::Tensor sv = at::full({over.numel(), K_out}, -INFINITY, values.options());
    at::Tensor si = at::full({over.numel(), K_out}, -1, indices.options());
    topk_pass(sub_c, pass, K_out, sub_floor, level + 1, sv, si);
    values.index_copy_(0, over, sv);
    indices.index_copy_(0, over, si);
  }
}

at::Tensor pack_bits(const at::Tensor& flags) {
  const at::Tensor f = flags.contiguous();
  const int64_t n = f.size(0);
  at::Tensor bits = at::empty({(n + 31) / 32}, f.options().dtype(at::kInt));
  check_cuda(cuda::launch_pack_bits(f.data_ptr<bool>(), n,
                                    reinterpret_cast<uint32_t*>(bits.data_ptr<int>()), stream()),
             "pack_bits kernel");
  return bits;
}

at::Tensor row_norms(const at::Tensor& U, bool aligned) {
  at::Tensor norms = at::empty({U.size(0)}, U.options().dtype(at::kFloat));
  check_cuda(cuda::launch_row_norms(dtype_of(U), U.data_ptr(), U.size(0), U.stride(0),
                                    static_cast<int>(U.size(1)), aligned, norms.data_ptr<float>(),
                                    stream()),
             "row norms kernel");
  return norms;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan(const at::Tensor& centroids,
                                                    const at::Tensor& openset,
                                                    const std::optional<at::Tensor>& excluded,
                                                    int64_t K, bool normalize, bool want_norms,
                                                    const std::optional<at::Tensor>& floor) {
  check_scan_inputs(centroids, openset, excluded, K, at::kCUDA);
  check_floor(floor, centroids);
  TORCH_CHECK_VALUE(openset.size(1) <= (int64_t(1) << 30) && centroids.size(0) < (int64_t(1) << 30),
                    "feature dimension or centroid count too large for the CUDA kernels");
  const c10::cuda::CUDAGuard guard(openset.device());
  const at::Tensor C = centroids.contiguous();
  const at::Tensor U = row_major(openset);
  const int64_t k = C.size(0), n = U.size(0);
  const bool aligned = rows_aligned(U);
  at::Tensor norms = (normalize || want_norms) ? row_norms(U, aligned)
                                               : at::empty({0}, C.options().dtype(at::kFloat));
  at::Tensor values = at::full({k, K}, -INFINITY, C.options().dtype(at::kFloat));
  at::Tensor indices = at::full({k, K}, -1, C.options().dtype(at::kLong));
  if (K > 0 && k > 0 && n > 0) {
    const at::Tensor bits = excluded.has_value() ? pack_bits(*excluded) : at::Tensor();
    const Pass pass{U, bits.defined() ? reinterpret_cast<const uint32_t*>(bits.data_ptr<int>()) : nullptr,
                    normalize ? norms.data_ptr<float>() : nullptr, aligned};
    topk_pass(C, pass, K, floor, 0, values, indices);
  }
  if (!want_norms) norms = at::empty({0}, C.options().dtype(at::kFloat));
  return {values, indices, norms};
}

std::tuple<at::Tensor, at::Tensor> masked_topk_cuda(const at::Tensor& centroids,
                                                    const at::Tensor& openset,
                                                    const std::optional<at::Tensor>& excluded,
                                                    int64_t K) {
  auto [v, i, n] = scan(centroids, openset, excluded, K, false, false, std::nullopt);
  return {v, i};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_topk_cuda(
    const at::Tensor& centroids, const at::Tensor& openset,
    const std::optional<at::Tensor>& excluded, int64_t K, bool normalize,
    const std::optional<at::Tensor>& floor) {
  return scan(centroids, openset, excluded, K, normalize, true, floor);
}

// max over the selected rows = the best candidate with every other row excluded. Few
// selected rows: gather them and scan those (scores are position-independent).
at::Tensor facility_location_cuda(const at::Tensor& centroids, const at::Tensor& openset,
                                  const at::Tensor& selected) {
  check_facility_inputs(centroids, openset, selected, at::kCUDA);
  const c10::cuda::CUDAGuard guard(openset.device());
  const int64_t n = openset.size(0), m = selected.sum().item<int64_t>();
  at::Tensor v;
  if (4 * m <= n) {
    const at::Tensor rows = openset.index_select(0, selected.nonzero().view(-1));
    v = std::get<0>(scan(centroids, rows, std::nullopt, 1, false, false, std::nullopt));
  } else {
    v = std::get<0>(scan(centroids, openset, selected.logical_not(), 1, false, false, std::nullopt));
  }
  return v.select(1, 0).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(simcore, CUDA, m) {
  m.impl("masked_topk", &masked_topk_cuda);
  m.impl("scan_topk", &scan_topk_cuda);
  m.impl("facility_location", &facility_location_cuda);
}

}  // namespace simcore
