// Input x gradient (Shrikumar et al. 2016): the input times the gradient of the target output w.r.t. it.
#include "methods/autograd.h"
#include "methods/method.h"

namespace mi {
namespace {

class InputXGradient : public Method {
 public:
  explicit InputXGradient(Network network) : network_(std::move(network)) {}

  at::Tensor attribute(const at::Tensor& x, const at::Tensor& targets, int64_t node,
                       const std::vector<int64_t>& /*seeds*/) override {
    return input_gradients(network_.model, x, targets, network_.amp, node).mul_(x);
  }

 private:
  Network network_;
};

}  // namespace

MI_REGISTER_METHOD("input-x-gradient", [](const Network& network, const Parameters&) {
  return std::make_unique<InputXGradient>(network);
})

}  // namespace mi
