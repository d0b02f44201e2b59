#include "methods/autograd.h"

#include <torch/csrc/autograd/autograd.h>

#include "autocast.h"

namespace mi {

at::Tensor checked_output(const at::Tensor& output, int64_t batch_size, int64_t node) {
  TORCH_CHECK(output.dim() == 2 && output.size(0) == batch_size,
              "the model must return one row of outputs per sample, shape (", batch_size,
              ", n_outputs); it returned ", output.sizes());
  TORCH_CHECK_INDEX(node < output.size(1), "target node ", node, " is out of range: the model has ",
                    output.size(1), " output nodes (0..", output.size(1) - 1, ")");
  return output;
}

at::Tensor one_hot_seed(const at::Tensor& output, const at::Tensor& targets) {
  return at::zeros_like(output).scatter_(1, targets.view({-1, 1}).to(output.device()), 1);
}

at::Tensor predicted_targets(torch::jit::Module& model, const at::Tensor& batch, std::optional<c10::ScalarType> amp) {
  torch::NoGradGuard no_grad;
  AutocastGuard autocast(batch.device().type(), amp);
  at::Tensor output = checked_output(model.forward({batch}).toTensor(), batch.size(0));
  return output.argmax(1);
}

at::Tensor input_gradients(torch::jit::Module& model, const at::Tensor& batch, const at::Tensor& targets,
                           std::optional<c10::ScalarType> amp, int64_t node) {
  // Explicit: the caller may hold a no-grad mode, and an inference tensor cannot join a graph.
  torch::AutoGradMode grad_mode(true);
  at::Tensor x = batch.detach().requires_grad_(true);
  at::Tensor output;
  {
    AutocastGuard autocast(x.device().type(), amp);
    output = model.forward({x}).toTensor();
  }
  checked_output(output, x.size(0), node);
  auto grads = torch::autograd::grad({output}, {x}, {one_hot_seed(output, targets)}, /*retain_graph=*/false,
                                     /*create_graph=*/false, /*allow_unused=*/false);
  return grads[0].to(at::kFloat);
}

namespace {

class GradientMethod : public Method {
 public:
  GradientMethod(Network network, FromGradient map) : network_(std::move(network)), map_(std::move(map)) {}

  at::Tensor attribute(const at::Tensor& x, const at::Tensor& targets, int64_t node,
                       const std::vector<int64_t>& /*seeds*/) override {
    return map_(input_gradients(network_.model, x, targets, network_.amp, node), x);
  }

 private:
  Network network_;
  FromGradient map_;
};

}  // namespace

std::unique_ptr<Method> gradient_method(const Network& network, FromGradient map) {
  return std::make_unique<GradientMethod>(network, std::move(map));
}

}  // namespace mi
