// Vanilla gradients (ClinicaDL's `gradients`, Simonyan et al. 2014): the gradient of each sample's target output
// w.r.t. its input.
#include "methods/autograd.h"
#include "methods/method.h"

namespace mi {

MI_REGISTER_METHOD("gradients", [](const Network& network, const Parameters&) {
  return gradient_method(network, [](at::Tensor gradient, const at::Tensor&) { return gradient; });
})

}  // namespace mi
