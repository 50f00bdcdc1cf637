// CUDA implementations (plain and exact): scores tile by tile with the kernels of
// scores.cu, candidate lists merged with a stable sort (ties keep the smaller row index).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "scores.h"

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
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

at::Tensor row_major(const at::Tensor& t) {
  return t.stride(1) == 1 && t.stride(0) >= t.size(1) ? t : t.contiguous();
}

// Scores of all centroids against rows [r0, r0 + rows) of U: a [k, rows] float32 tensor.
at::Tensor score_rows(const at::Tensor& C, const at::Tensor& U, int64_t r0, int64_t rows,
                      const float* norms, at::Tensor& buffer) {
  const int64_t k = C.size(0), d = C.size(1);
  at::Tensor s = buffer.narrow(0, 0, k * rows).view({k, rows});
  const char* base = static_cast<const char*>(U.data_ptr()) + r0 * U.stride(0) * U.element_size();
  check_cuda(cuda::launch_tile_scores(dtype_of(U), C.data_ptr(), k, C.stride(0), base, rows,
                                      U.stride(0), d, norms ? norms + r0 : nullptr,
                                      s.data_ptr<float>(), rows,
                                      c10::cuda::getCurrentCUDAStream()),
             "simcore tile_scores kernel");
  return s.masked_fill_(s.isnan(), -INFINITY);
}

int64_t tile_rows(int64_t k, int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(n, (int64_t(1) << 26) / std::max<int64_t>(k, 1)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan(const at::Tensor& centroids,
                                                    const at::Tensor& openset,
                                                    const std::optional<at::Tensor>& excluded,
                                                    int64_t K, bool normalize, bool want_norms,
                                                    const std::optional<at::Tensor>& floor) {
  check_scan_inputs(centroids, openset, excluded, K, at::kCUDA);
  check_floor(floor, centroids);
  const c10::cuda::CUDAGuard guard(openset.device());
  const at::Tensor C = centroids.contiguous();
  const at::Tensor U = row_major(openset);
  const int64_t k = C.size(0), n = U.size(0), d = U.size(1);
  const auto f32 = C.options().dtype(at::kFloat);
  at::Tensor norms = at::empty({(normalize || want_norms) ? n : 0}, f32);
  if (norms.numel() > 0)
    check_cuda(cuda::launch_row_norms(dtype_of(U), U.data_ptr(), n, U.stride(0), d,
                                      norms.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
               "simcore row_norms kernel");

  at::Tensor run_v = at::empty({k, 0}, f32);
  at::Tensor run_i = at::empty({k, 0}, C.options().dtype(at::kLong));
  if (K > 0 && k > 0 && n > 0) {
    const int64_t tile = tile_rows(k, n);
    at::Tensor buffer = at::empty({k * tile}, f32);
    for (int64_t r0 = 0; r0 < n; r0 += tile) {
      const int64_t rows = std::min(tile, n - r0);
      at::Tensor s = score_rows(C, U, r0, rows, normalize ? norms.data_ptr<float>() : nullptr, buffer);
      if (excluded.has_value()) s.masked_fill_(excluded->narrow(0, r0, rows).unsqueeze(0), -INFINITY);
      if (floor.has_value()) s.masked_fill_(s <= floor->unsqueeze(1), -INFINITY);
      at::Tensor idx = at::arange(r0, r0 + rows, run_i.options()).expand({k, rows});
      // Running list first: its rows precede this tile's, so a stable sort keeps ties in
      // ascending row order.
      at::Tensor all_v = at::cat({run_v, s}, 1), all_i = at::cat({run_i, idx}, 1);
      auto [sorted, order] = all_v.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true);
      const int64_t take = std::min<int64_t>(K, all_v.size(1));
      run_v = sorted.narrow(1, 0, take).contiguous();
      run_i = all_i.gather(1, order.narrow(1, 0, take));
    }
  }
  at::Tensor values = at::full({k, K}, -INFINITY, f32);
  at::Tensor indices = at::full({k, K}, -1, C.options().dtype(at::kLong));
  if (run_v.size(1) > 0) {
    values.narrow(1, 0, run_v.size(1)).copy_(run_v);
    indices.narrow(1, 0, run_v.size(1)).copy_(at::where(run_v == -INFINITY, -1, run_i));
  }
  if (!want_norms) norms = at::empty({0}, f32);
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

at::Tensor facility_location_cuda(const at::Tensor& centroids, const at::Tensor& openset,
                                  const at::Tensor& selected) {
  check_facility_inputs(centroids, openset, selected, at::kCUDA);
  const c10::cuda::CUDAGuard guard(openset.device());
  const at::Tensor C = centroids.contiguous();
  const at::Tensor rows = openset.index_select(0, selected.nonzero().view(-1)).contiguous();
  const int64_t k = C.size(0), m = rows.size(0);
  at::Tensor best = at::full({k}, -INFINITY, C.options().dtype(at::kFloat));
  if (k == 0 || m == 0) return best;
  const int64_t tile = tile_rows(k, m);
  at::Tensor buffer = at::empty({k * tile}, best.options());
  for (int64_t r0 = 0; r0 < m; r0 += tile) {
    const int64_t n = std::min(tile, m - r0);
    best = at::maximum(best, std::get<0>(score_rows(C, rows, r0, n, nullptr, buffer).max(1)));
  }
  return best;
}

}  // namespace

TORCH_LIBRARY_IMPL(simcore, CUDA, m) {
  m.impl("masked_topk", &masked_topk_cuda);
  m.impl("scan_topk", &scan_topk_cuda);
  m.impl("facility_location", &facility_location_cuda);
}

}  // namespace simcore
