#include "methods/gradients.h"

#include <torch/csrc/autograd/autograd.h>

#include "autocast.h"

namespace mi {

at::Tensor checked_output(const at::Tensor& output, int64_t batch_size, int64_t target) {
  TORCH_CHECK(output.dim() == 2 && output.size(0) == batch_size,
              "the model must return one row of outputs per sample, shape (", batch_size,
              ", n_outputs); it returned ", output.sizes());
  TORCH_CHECK_INDEX(target >= 0 && target < output.size(1), "target node ", target,
                    " is out of range: the model has ", output.size(1), " output nodes (0..",
                    output.size(1) - 1, ")");
  return output;
}

at::Tensor input_gradients(torch::jit::Module& model, const at::Tensor& batch, int64_t target,
                           std::optional<c10::ScalarType> amp) {
  // Explicit: the caller may hold a no-grad mode, and an inference tensor cannot join a graph.
  torch::AutoGradMode grad_mode(true);
  at::Tensor x = batch.detach().requires_grad_(true);
  at::Tensor output;
  {
    AutocastGuard autocast(x.device().type(), amp);
    output = model.forward({x}).toTensor();
  }
  checked_output(output, x.size(0), target);
  // One-hot seed at the target column, as ClinicaDL's `output.backward(one_hot)`.
  at::Tensor seed = at::zeros_like(output);
  seed.select(1, target).fill_(1);
  auto grads = torch::autograd::grad({output}, {x}, {seed}, /*retain_graph=*/false,
                                     /*create_graph=*/false, /*allow_unused=*/false);
  return grads[0].to(at::kFloat);
}

}  // namespace mi
