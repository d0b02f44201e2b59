// Forward passes without a graph, for what needs only the model's outputs: the evaluation's perturbed copies
// (Engine::outputs) and occlusion's occluded copies.
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <cstdint>
#include <optional>

namespace mi {

// On a CPU, volumes (B, C, D, H, W) go through the model channels-last: oneDNN's 3D convolutions run them about
// 1.5x faster there (benchmarks/evaluation.py). A model whose forward cannot take that layout (a view() of a
// non-contiguous tensor) gets contiguous volumes from then on. The outputs are the same up to float rounding.
class ForwardPass {
 public:
  explicit ForwardPass(std::optional<c10::ScalarType> amp) : amp_(amp) {}

  // The outputs (B, n_outputs) of `model` for `batch`, float32, checked as checked_output does (`node` >= 0:
  // the model must have that output node), under the amp dtype; no graph is kept.
  at::Tensor operator()(torch::jit::Module& model, const at::Tensor& batch, int64_t node = -1);

 private:
  std::optional<c10::ScalarType> amp_;
  bool channels_last_ = true;
};

}  // namespace mi
