// Argument checks shared by the CPU and CUDA implementations. TORCH_CHECK_VALUE and
// TORCH_CHECK_TYPE surface in Python as ValueError and TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace simcore {

inline bool is_feature_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_rows_pair(const at::Tensor& centroids, const at::Tensor& openset,
                            c10::DeviceType device) {
  TORCH_CHECK_VALUE(centroids.dim() == 2, "centroids must be 2-D (k, d), got shape ",
                    centroids.sizes());
  TORCH_CHECK_VALUE(openset.dim() == 2, "openset must be 2-D (n, d), got shape ", openset.sizes());
  TORCH_CHECK_TYPE(is_feature_dtype(centroids.scalar_type()),
                   "centroids must be float32, float16 or bfloat16, got ", centroids.scalar_type());
  TORCH_CHECK_TYPE(centroids.scalar_type() == openset.scalar_type(),
                   "centroids and openset must have the same dtype, got ",
                   centroids.scalar_type(), " and ", openset.scalar_type());
  TORCH_CHECK_VALUE(centroids.size(1) == openset.size(1),
                    "centroids and openset must have the same feature dimension, got ",
                    centroids.size(1), " and ", openset.size(1));
  TORCH_CHECK_VALUE(openset.size(1) >= 1, "the feature dimension must be at least 1");
  TORCH_CHECK(centroids.device().type() == device && openset.device().type() == device,
              "centroids and openset must be on the same device, got ", centroids.device(),
              " and ", openset.device());
  TORCH_CHECK(centroids.device() == openset.device(),
              "centroids and openset must be on the same device, got ", centroids.device(),
              " and ", openset.device());
}

inline void check_row_flags(const at::Tensor& flags, const at::Tensor& openset, const char* name) {
  TORCH_CHECK_TYPE(flags.scalar_type() == at::kBool, name, " must be a bool tensor, got ",
                   flags.scalar_type());
  TORCH_CHECK_VALUE(flags.dim() == 1 && flags.size(0) == openset.size(0), name,
                    " must have shape (", openset.size(0), ",), got ", flags.sizes());
  TORCH_CHECK(flags.device() == openset.device(), name, " must be on ", openset.device(),
              ", got ", flags.device());
}

inline void check_scan_inputs(const at::Tensor& centroids, const at::Tensor& openset,
                              const std::optional<at::Tensor>& excluded, int64_t K,
                              c10::DeviceType device) {
  check_rows_pair(centroids, openset, device);
  if (excluded.has_value()) check_row_flags(*excluded, openset, "excluded");
  TORCH_CHECK_VALUE(K >= 0, "K must be >= 0, got ", K);
}

inline void check_floor(const std::optional<at::Tensor>& floor, const at::Tensor& centroids) {
  if (!floor.has_value()) return;
  TORCH_CHECK_TYPE(floor->scalar_type() == at::kFloat, "floor must be float32, got ",
                   floor->scalar_type());
  TORCH_CHECK_VALUE(floor->dim() == 1 && floor->size(0) == centroids.size(0),
                    "floor must have shape (", centroids.size(0), ",), got ", floor->sizes());
  TORCH_CHECK(floor->device() == centroids.device(), "floor must be on ", centroids.device(),
              ", got ", floor->device());
}

inline void check_facility_inputs(const at::Tensor& centroids, const at::Tensor& openset,
                                  const at::Tensor& selected, c10::DeviceType device) {
  check_rows_pair(centroids, openset, device);
  check_row_flags(selected, openset, "selected");
}

}  // namespace simcore
