// Integrated gradients (Sundararajan et al. 2017): (x - baseline) times the mean input gradient at
// baseline + a (x - baseline), a = (k + 0.5) / steps (the midpoint rule; completeness: the map sums to about
// f(x) - f(baseline)). The path points go through the model `chunk_size` rows at a time (methods/copies.h).
#include "methods/autograd.h"
#include "methods/copies.h"
#include "methods/method.h"

namespace mi {
namespace {

class IntegratedGradients : public Method {
 public:
  IntegratedGradients(Network network, const Parameters& parameters)
      : network_(std::move(network)),
        steps_(parameters.integer("n_steps")),
        baseline_(parameters.number("baseline")),
        chunk_(parameters.integer("chunk_size")) {}

  at::Tensor attribute(const at::Tensor& batch, const at::Tensor& targets, int64_t node,
                       const std::vector<int64_t>& /*seeds*/) override {
    const int64_t steps = steps_;
    const at::Tensor x = batch.to(at::kFloat);
    const at::Tensor difference = x - baseline_;
    auto rows = [&](int64_t first, int64_t count) {
      at::Tensor index = at::arange(first, first + count, x.options().dtype(at::kLong));
      at::Tensor owner = index.floor_divide(steps);
      at::Tensor alpha = (index.remainder(steps).to(at::kFloat) + 0.5) / static_cast<double>(steps);
      std::vector<int64_t> shape(x.dim(), 1);
      shape[0] = count;
      return difference.index_select(0, owner).mul_(alpha.view(shape)).add_(baseline_);
    };
    auto gradients = [&](const at::Tensor& points, const at::Tensor& point_targets) {
      return input_gradients(network_.model, points, point_targets, network_.amp, node);
    };
    return copy_sums(x, targets, steps, chunk_, rows, gradients, network_.deterministic)
        .div_(steps)
        .mul_(difference);
  }

 private:
  Network network_;
  int64_t steps_;
  double baseline_;
  int64_t chunk_;
};

}  // namespace

MI_REGISTER_METHOD("integrated-gradients", [](const Network& network, const Parameters& parameters) {
  return std::make_unique<IntegratedGradients>(network, parameters);
})

}  // namespace mi
