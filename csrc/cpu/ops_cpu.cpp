// CPU implementations: tensor checks, threading (at::parallel_for over row tiles, one set
// of candidate lists per thread, merged at the end) and the calls into scan_kernel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

#include "../checks.h"
#include "scan_kernel.h"

namespace simcore {
namespace {

using cpu::Scalar;

Scalar scalar_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Scalar::kFloat32;
    case at::kHalf: return Scalar::kFloat16;
    default: return Scalar::kBFloat16;
  }
}

cpu::Isa active_isa() {
  static const cpu::Isa best = cpu::best_isa();
  const char* env = std::getenv("SIMCORE_CPU_ISA");
  if (!env || !*env) return best;
  cpu::Isa want;
  try {
    want = cpu::parse_isa(env);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, "SIMCORE_CPU_ISA: ", e.what());
  }
  TORCH_CHECK_VALUE(static_cast<int>(want) <= static_cast<int>(best), "SIMCORE_CPU_ISA=", env,
                    " is not supported by this CPU (best: ", cpu::isa_name(best), ")");
  return want;
}

// Runs the fused pass over `rows`; returns values [k,K], indices [k,K] and, if asked, norms.
std::tuple<at::Tensor, at::Tensor, at::Tensor> scan(const at::Tensor& centroids,
                                                    const at::Tensor& openset,
                                                    const std::optional<at::Tensor>& excluded,
                                                    int64_t K, bool normalize, bool want_norms,
                                                    const std::optional<at::Tensor>& floor) {
  check_scan_inputs(centroids, openset, excluded, K, at::kCPU);
  check_floor(floor, centroids);
  const at::Tensor fl = floor.has_value() ? floor->contiguous() : at::Tensor();
  const at::Tensor C = centroids.contiguous();
  const at::Tensor U = openset.stride(1) == 1 && openset.stride(0) >= openset.size(1)
                           ? openset
                           : openset.contiguous();
  const int64_t k = C.size(0), n = U.size(0), d = U.size(1);
  at::Tensor values = at::full({k, K}, -INFINITY, C.options().dtype(at::kFloat));
  at::Tensor indices = at::full({k, K}, -1, C.options().dtype(at::kLong));
  at::Tensor norms = at::empty({want_norms ? n : 0}, C.options().dtype(at::kFloat));
  at::Tensor ex;
  if (excluded.has_value()) ex = excluded->contiguous();

  cpu::ScanRows rows{scalar_of(U), U.data_ptr(), n, U.stride(0),
                     ex.defined() ? ex.data_ptr<bool>() : nullptr, normalize,
                     want_norms ? norms.data_ptr<float>() : nullptr};
  if (n == 0 || (k == 0 && !want_norms) || (K == 0 && !want_norms)) return {values, indices, norms};

  const cpu::CentroidPanels panels(active_isa(), scalar_of(C), C.data_ptr(), k, C.stride(0), d);
  const int threads = at::get_num_threads();
  std::vector<std::unique_ptr<cpu::TopKLists>> lists(threads);
  at::parallel_for(0, cpu::num_tiles(n), 1, [&](int64_t begin, int64_t end) {
    auto& mine = lists[at::get_thread_num()];
    if (!mine)
      mine = std::make_unique<cpu::TopKLists>(k, K, fl.defined() ? fl.data_ptr<float>() : nullptr);
    cpu::scan_tiles(rows, panels, begin, end, *mine);
  });

  float* vout = values.data_ptr<float>();
  int64_t* iout = indices.data_ptr<int64_t>();
  at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
    std::vector<cpu::Candidate> all;
    for (int64_t j = begin; j < end; ++j) {
      all.clear();
      for (const auto& l : lists)
        if (l) l->append_to(j, all);
      cpu::write_best(all, K, vout + j * K, iout + j * K);
    }
  });
  return {values, indices, norms};
}

std::tuple<at::Tensor, at::Tensor> masked_topk_cpu(const at::Tensor& centroids,
                                                   const at::Tensor& openset,
                                                   const std::optional<at::Tensor>& excluded,
                                                   int64_t K) {
  auto [v, i, n] = scan(centroids, openset, excluded, K, /*normalize=*/false,
                        /*want_norms=*/false, std::nullopt);
  return {v, i};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_topk_cpu(
    const at::Tensor& centroids, const at::Tensor& openset,
    const std::optional<at::Tensor>& excluded, int64_t K, bool normalize,
    const std::optional<at::Tensor>& floor) {
  return scan(centroids, openset, excluded, K, normalize, /*want_norms=*/true, floor);
}

at::Tensor facility_location_cpu(const at::Tensor& centroids, const at::Tensor& openset,
                                 const at::Tensor& selected) {
  check_facility_inputs(centroids, openset, selected, at::kCPU);
  // Gathering keeps every score bit-identical to the in-place pass (see scan_kernel.h).
  const at::Tensor rows = openset.index_select(0, selected.nonzero().view(-1));
  auto [v, i, n] = scan(centroids, rows, std::nullopt, 1, false, false, std::nullopt);
  return v.view(-1).clone();
}

}  // namespace

// For the Python module (ops.cpp): the instruction set the CPU kernels use now.
const char* cpu_isa_name() { return cpu::isa_name(active_isa()); }

TORCH_LIBRARY_IMPL(simcore, CPU, m) {
  m.impl("masked_topk", &masked_topk_cpu);
  m.impl("scan_topk", &scan_topk_cpu);
  m.impl("facility_location", &facility_location_cpu);
}

}  // namespace simcore
