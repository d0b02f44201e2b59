// maps_interpret::frozen_batch_norm: eval-mode batch norm whose backward is one multiplication.
//
// The forward values are torch's own batch_norm (bit-identical, so every later ReLU/max-pool decision is
// unchanged); the backward is grad * alpha with alpha = weight / sqrt(running_var + eps) per channel, the
// exact derivative of the affine map batch norm is in eval mode. torch's channels-last batch-norm
// backward on the CPU costs more than the first convolution's; this costs one pass over the gradient.
//
// Kernels: one device-generic forward for CPU, CUDA and Meta (at::batch_norm, which fake tensors run too);
// Autograd: the multiplication, plain ATen ops (no device-specific backward, so no backward op).
// Autocast passes through on purpose: the op runs in x's dtype, and the inner at::batch_norm gets whatever
// autocast does for torch's own batch norm (today: nothing), exactly as nn.BatchNorm under autocast.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/ops.h"

namespace mi {
namespace {

at::Tensor forward_kernel(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                          const at::Tensor& running_var, double eps, const at::Tensor& alpha) {
  // sym_size: fake tensors with dynamic shapes reach this kernel (as Meta) without concrete sizes; a
  // symbolic channel count becomes a runtime assertion of the traced graph instead of a guess.
  const bool shaped = x.dim() >= 2 && alpha.dim() == x.dim() - 1 &&
                      alpha.sym_size(0).sym_eq(x.sym_size(1)).expect_true(__FILE__, __LINE__);
  TORCH_CHECK(shaped, "frozen_batch_norm: alpha must be (C, 1, ...) for an input of ", x.sym_sizes(), "; got ",
              alpha.sym_sizes());
  return at::batch_norm(x, weight, bias, running_mean, running_var, /*training=*/false, /*momentum=*/0.0, eps,
                        /*cudnn_enabled=*/true);
}

class FrozenBatchNorm : public torch::autograd::Function<FrozenBatchNorm> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                            const at::Tensor& running_mean, const at::Tensor& running_var, double eps,
                            const at::Tensor& alpha) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({alpha});
    return ops::frozen_batch_norm(x, weight, bias, running_mean, running_var, eps, alpha);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor alpha = ctx->get_saved_variables()[0];
    const at::Tensor grad = grads[0];
    return {(grad * alpha).to(grad.scalar_type()), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor autograd_kernel(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                           const at::Tensor& running_var, double eps, const at::Tensor& alpha) {
  return FrozenBatchNorm::apply(x, ops::detached(weight), ops::detached(bias), running_mean.detach(),
                                running_var.detach(), eps, alpha.detach());
}

}  // namespace

at::Tensor ops::frozen_batch_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                                  const at::Tensor& running_var, double eps, const at::Tensor& alpha) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("maps_interpret::frozen_batch_norm", "")
                             .typed<decltype(forward_kernel)>();
  return op.call(x, weight, bias, running_mean, running_var, eps, alpha);
}

}  // namespace mi

TORCH_LIBRARY_FRAGMENT(maps_interpret, m) {
  m.def("frozen_batch_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor running_mean, Tensor running_var, "
        "float eps, Tensor alpha) -> Tensor");
}

TORCH_LIBRARY_IMPL(maps_interpret, CPU, m) {
  m.impl("frozen_batch_norm", &mi::forward_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, CUDA, m) {
  m.impl("frozen_batch_norm", &mi::forward_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, Meta, m) {
  m.impl("frozen_batch_norm", &mi::forward_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, Autograd, m) {
  m.impl("frozen_batch_norm", &mi::autograd_kernel);
}

TORCH_LIBRARY_IMPL(maps_interpret, AutocastCPU, m) {
  m.impl("frozen_batch_norm", torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(maps_interpret, AutocastCUDA, m) {
  m.impl("frozen_batch_norm", torch::CppFunction::makeFallthrough());
}
