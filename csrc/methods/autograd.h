// What the gradient methods share: the input gradient of a batch, each sample's predicted class, the checked
// output and the one-hot seed of the backward pass.
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <functional>
#include <memory>
#include <optional>

#include "methods/method.h"

namespace mi {

// Signed gradient of output[i, targets[i]] w.r.t. each sample of `batch` (B, C, *spatial), same shape
// and float32. `targets`: (B,) int64 on the batch's device. The model's parameters must not require grad:
// only the input gradient is computed. `amp` names the autocast dtype of the forward pass (none = float32).
// `node` >= 0: every target is that node, checked against the output's width (a clear error, not a CUDA
// assertion).
at::Tensor input_gradients(torch::jit::Module& model, const at::Tensor& batch, const at::Tensor& targets,
                           std::optional<c10::ScalarType> amp, int64_t node = -1);

// Each sample's predicted class: the argmax of the model's output on `batch` (no graph), (B,) int64.
at::Tensor predicted_targets(torch::jit::Module& model, const at::Tensor& batch, std::optional<c10::ScalarType> amp);

// The model's output for `batch`, checked to be (B, n_outputs) (and to have output node `node` when >= 0).
at::Tensor checked_output(const at::Tensor& output, int64_t batch_size, int64_t node = -1);

// A one-hot seed for `output` (B, n_outputs): 1 at (i, targets[i]), as ClinicaDL's `output.backward(one_hot)`.
at::Tensor one_hot_seed(const at::Tensor& output, const at::Tensor& targets);

// A method whose map is made from each sample's input gradient and the sample itself by `map(gradient, x)`
// (gradients: the gradient; input x gradient: their product), which may work in place on the gradient.
using FromGradient = std::function<at::Tensor(at::Tensor gradient, const at::Tensor& x)>;
std::unique_ptr<Method> gradient_method(const Network& network, FromGradient map);

}  // namespace mi
