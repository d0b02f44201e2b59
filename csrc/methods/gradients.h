// Vanilla gradients (ClinicaDL's `gradients`): d output[:, target] / d input.
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <optional>

namespace mi {

// Signed gradient of output node `target` w.r.t. each sample of `batch` (B, C, *spatial), same shape
// and float32. The model's parameters must not require grad: only the input gradient is computed.
// `amp` names the autocast dtype of the forward pass (none = float32 throughout).
at::Tensor input_gradients(torch::jit::Module& model, const at::Tensor& batch, int64_t target,
                           std::optional<c10::ScalarType> amp);

// The model's output for `batch`, checked to be (B, n_outputs) with `target` in range.
at::Tensor checked_output(const at::Tensor& output, int64_t batch_size, int64_t target);

}  // namespace mi
