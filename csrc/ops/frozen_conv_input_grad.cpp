// maps_interpret::frozen_conv_input_grad: frozen_conv's input gradient (the adjoint of the convolution for
// constant weights), computed on channels-last copies when asked; no weight or bias gradient.
//
// Why channels_last is an argument and not a per-device choice inside the kernels: the channels-last path
// returns a channels-last tensor and the plain one a contiguous tensor, and the Meta kernel, which fake
// tensors run, cannot tell whether it stands in for a CPU or a CUDA tensor (it sees the meta device). If the
// CPU kernel chose channels-last by itself, the Meta kernel's strides would be wrong for one of the two
// devices (opcheck compares them; compilers trust them). So the caller, frozen_conv's autograd kernel, which
// knows the device, chooses, and every kernel (CPU, CUDA, Meta: one function) does what it is told.
//
// Autograd: the result is linear in grad, so its own backward is the convolution with the same weights
// (double backward, as torch's convolution_backward allows); nothing else is differentiable.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "ops/ops.h"

namespace mi {
namespace {

at::Tensor input_grad_kernel(const at::Tensor& grad, const at::Tensor& weight, c10::SymIntArrayRef input_sizes,
                             c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                             int64_t groups, bool channels_last) {
  TORCH_CHECK(!channels_last || grad.dim() == 4 || grad.dim() == 5,
              "frozen_conv_input_grad: channels_last needs a 2D or 3D convolution; got a gradient of ",
              grad.sym_sizes());
  at::Tensor g = grad;
  auto format = at::MemoryFormat::Contiguous;
  if (channels_last) {
    format = grad.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
    g = at::empty_like(grad, grad.options(), format).copy_(grad);
  }
  // The input's values do not enter its gradient: only its shape, dtype and layout, and the layout picks
  // the kernel (oneDNN's channels-last one on the CPU when asked).
  const at::Tensor layout = at::empty_symint(input_sizes, grad.options().memory_format(format));
  auto result = at::convolution_backward(g, layout, weight, std::nullopt, stride, padding, dilation,
                                         /*transposed=*/false, std::vector<int64_t>(stride.size(), 0), groups,
                                         {true, false, false});
  return std::get<0>(result);
}

class FrozenConvInputGrad : public torch::autograd::Function<FrozenConvInputGrad> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& weight,
                            c10::SymIntArrayRef input_sizes, c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation, int64_t groups, bool channels_last) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({weight});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    return ops::frozen_conv_input_grad(grad, weight, input_sizes, stride, padding, dilation, groups, channels_last);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor weight = ctx->get_saved_variables()[0];
    const at::Tensor grad_grad = ops::frozen_conv(
        grads[0], weight, std::nullopt, ctx->saved_data["stride"].toIntVector(),
        ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(),
        ctx->saved_data["groups"].toInt());
    return {grad_grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor autograd_kernel(const at::Tensor& grad, const at::Tensor& weight, c10::SymIntArrayRef input_sizes,
                           c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                           int64_t groups, bool channels_last) {
  return FrozenConvInputGrad::apply(grad, weight.detach(), input_sizes, stride, padding, dilation, groups,
                                    channels_last);
}

}  // namespace

at::Tensor ops::frozen_conv_input_grad(const at::Tensor& grad, const at::Tensor& weight,
                                       c10::SymIntArrayRef input_sizes, c10::IntArrayRef stride,
                                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                                       bool channels_last) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("maps_interpret::frozen_conv_input_grad", "")
                             .typed<decltype(input_grad_kernel)>();
  return op.call(grad, weight, input_sizes, stride, padding, dilation, groups, channels_last);
}

}  // namespace mi

TORCH_LIBRARY_FRAGMENT(maps_interpret, m) {
  m.def("frozen_conv_input_grad(Tensor grad, Tensor weight, SymInt[] input_sizes, int[] stride, int[] padding, "
        "int[] dilation, int groups, bool channels_last) -> Tensor");
}

TORCH_LIBRARY_IMPL(maps_interpret, CPU, m) {
  m.impl("frozen_conv_input_grad", &mi::input_grad_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, CUDA, m) {
  m.impl("frozen_conv_input_grad", &mi::input_grad_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, Meta, m) {
  m.impl("frozen_conv_input_grad", &mi::input_grad_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, Autograd, m) {
  m.impl("frozen_conv_input_grad", &mi::autograd_kernel);
}
