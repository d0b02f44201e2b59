// maps_interpret::frozen_batch_norm: eval-mode batch norm whose backward is one multiplication.
//
// The forward values are torch's own batch_norm (bit-identical, so every later ReLU/max-pool decision is
// unchanged); the backward is grad * alpha with alpha = weight / sqrt(running_var + eps) per channel, the
// exact derivative of the affine map batch norm is in eval mode. torch's channels-last batch-norm
// backward on the CPU costs more than the first convolution's; this costs one pass over the gradient.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace mi {
namespace {

class FrozenBatchNorm : public torch::autograd::Function<FrozenBatchNorm> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                            const at::Tensor& running_mean, const at::Tensor& running_var, double eps,
                            const at::Tensor& alpha) {
    ctx->save_for_backward({alpha});
    return at::batch_norm(x, weight, bias, running_mean, running_var, /*training=*/false, /*momentum=*/0.0, eps,
                          /*cudnn_enabled=*/true);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor alpha = ctx->get_saved_variables()[0];
    const at::Tensor grad = grads[0];
    return {(grad * alpha).to(grad.scalar_type()), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor frozen_batch_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                             const at::Tensor& running_var, double eps, const at::Tensor& alpha) {
  TORCH_CHECK(alpha.dim() == x.dim() - 1 && alpha.size(0) == x.size(1), "frozen_batch_norm: alpha must be (C, 1, ...)"
              " for an input of ", x.sizes(), "; got ", alpha.sizes());
  return FrozenBatchNorm::apply(x, weight, bias, running_mean, running_var, eps, alpha);
}

}  // namespace
}  // namespace mi

TORCH_LIBRARY(maps_interpret, m) {
  m.def("frozen_batch_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor running_mean, Tensor running_var, "
        "float eps, Tensor alpha) -> Tensor");
}

TORCH_LIBRARY_IMPL(maps_interpret, CompositeImplicitAutograd, m) {
  m.impl("frozen_batch_norm", &mi::frozen_batch_norm);
}
