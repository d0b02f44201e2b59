// C++ entry points of the maps_interpret ops (torch.ops.maps_interpret.*), for kernels that call one op
// from another. Each goes through the dispatcher, so the caller's guards decide which kernels run: a call
// from inside an autograd or autocast kernel reaches the kernels below it, not that kernel again.
//
// Every op file registers the same way: its schema in a TORCH_LIBRARY_FRAGMENT, then one TORCH_LIBRARY_IMPL
// per dispatch key (CPU, CUDA and Meta: the computation; Autograd: the backward; AutocastCPU/AutocastCUDA:
// the dtype policy).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>

namespace mi::ops {

// Eval-mode batch norm (torch's values) whose input gradient is grad * alpha (ops/frozen_batch_norm.cpp).
at::Tensor frozen_batch_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                             const at::Tensor& running_var, double eps, const at::Tensor& alpha);

// torch's convolution with constant weights: only x gets a gradient (ops/frozen_conv.cpp).
at::Tensor frozen_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups);

// frozen_conv's input gradient, on channels-last copies when asked (ops/frozen_conv_input_grad.cpp).
at::Tensor frozen_conv_input_grad(const at::Tensor& grad, const at::Tensor& weight, c10::SymIntArrayRef input_sizes,
                                  c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                  int64_t groups, bool channels_last);

// A frozen constant: the autograd kernels hand weights on detached, so only x is differentiable.
inline std::optional<at::Tensor> detached(const std::optional<at::Tensor>& t) {
  if (t.has_value() && t->defined()) return t->detach();
  return std::nullopt;
}

}  // namespace mi::ops
