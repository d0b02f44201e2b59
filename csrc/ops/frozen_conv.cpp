// maps_interpret::frozen_conv: a convolution with frozen weights whose input gradient runs on
// channels-last copies on the CPU.
//
// The forward pass is torch's own convolution on the input as given (bit-identical values, so every later
// ReLU/max-pool decision is unchanged: those decisions, not rounding, are what make two implementations'
// maps differ). Only the input gradient, a linear map whose rounding stays at float precision, is computed
// with oneDNN's channels-last kernels, up to 6x faster on 3D volumes than the contiguous ones. On CUDA the
// backward is torch's usual one. The weights are constants: no weight or bias gradient is ever computed.
//
// Kernels: one device-generic forward for CPU, CUDA and Meta (at::convolution, which fake tensors run too);
// Autograd: the backward is the frozen_conv_input_grad op (ops/frozen_conv_input_grad.cpp); AutocastCPU and
// AutocastCUDA: a custom op is on none of autocast's lists, so it casts as autocast does for torch's own
// convolutions (input, weight and bias to the autocast dtype).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "ops/ops.h"

namespace mi {
namespace {

at::Tensor forward_kernel(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                          int64_t groups) {
  return at::convolution(x, weight, bias, stride, padding, dilation, /*transposed=*/false,
                         std::vector<int64_t>(stride.size(), 0), groups);
}

class FrozenConv : public torch::autograd::Function<FrozenConv> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({weight});  // in the computation dtype (autocast casts before autograd)
    ctx->saved_data["input_sizes"] = x.sym_sizes();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    return ops::frozen_conv(x, weight, bias, stride, padding, dilation, groups);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor weight = ctx->get_saved_variables()[0];
    const at::Tensor grad = grads[0].to(weight.scalar_type());
    // The device policy: oneDNN's channels-last kernels on the CPU (2D and 3D), cuDNN's usual path elsewhere.
    // Chosen here, where the device is known, and passed on: see frozen_conv_input_grad.cpp for why.
    const bool channels_last = grad.is_cpu() && (grad.dim() == 4 || grad.dim() == 5);
    const at::Tensor input_grad = ops::frozen_conv_input_grad(
        grad, weight, ctx->saved_data["input_sizes"].toSymIntVector(), ctx->saved_data["stride"].toIntVector(),
        ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(),
        ctx->saved_data["groups"].toInt(), channels_last);
    return {input_grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor autograd_kernel(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                           int64_t groups) {
  return FrozenConv::apply(x, weight.detach(), ops::detached(bias), stride, padding, dilation, groups);
}

template <c10::DeviceType device>
at::Tensor autocast_kernel(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                           int64_t groups) {
  // Below this guard the convolution runs in the dtype it is given (autocast's casting stops here, for
  // this device only); x's cast stays in the graph, so x's gradient comes back in x's dtype.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
  const auto dtype = at::autocast::get_autocast_dtype(device);
  std::optional<at::Tensor> cast_bias;
  if (bias.has_value() && bias->defined()) cast_bias = bias->detach().to(dtype);
  return ops::frozen_conv(x.to(dtype), weight.detach().to(dtype), cast_bias, stride, padding, dilation, groups);
}

}  // namespace

at::Tensor ops::frozen_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                            int64_t groups) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("maps_interpret::frozen_conv", "")
                             .typed<decltype(forward_kernel)>();
  return op.call(x, weight, bias, stride, padding, dilation, groups);
}

}  // namespace mi

TORCH_LIBRARY_FRAGMENT(maps_interpret, m) {
  m.def("frozen_conv(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
        "int groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(maps_interpret, CPU, m) {
  m.impl("frozen_conv", &mi::forward_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, CUDA, m) {
  m.impl("frozen_conv", &mi::forward_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, Meta, m) {
  m.impl("frozen_conv", &mi::forward_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, Autograd, m) {
  m.impl("frozen_conv", &mi::autograd_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, AutocastCPU, m) {
  m.impl("frozen_conv", &mi::autocast_kernel<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(maps_interpret, AutocastCUDA, m) {
  m.impl("frozen_conv", &mi::autocast_kernel<c10::DeviceType::CUDA>);
}
