// Vanilla gradients (ClinicaDL's `gradients`): the gradient of each sample's target output w.r.t. its input.
#include "methods/autograd.h"
#include "methods/method.h"

namespace mi {
namespace {

class Gradients : public Method {
 public:
  explicit Gradients(Network network) : network_(std::move(network)) {}

  at::Tensor attribute(const at::Tensor& x, const at::Tensor& targets, int64_t node,
                       const std::vector<int64_t>& /*seeds*/) override {
    return input_gradients(network_.model, x, targets, network_.amp, node);
  }

 private:
  Network network_;
};

}  // namespace

MI_REGISTER_METHOD("gradients", [](const Network& network, const Parameters&) {
  return std::make_unique<Gradients>(network);
})

}  // namespace mi
