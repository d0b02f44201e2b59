// Input x gradient (Shrikumar et al. 2016): the input times the gradient of the target output w.r.t. it.
#include "methods/autograd.h"
#include "methods/method.h"

namespace mi {

MI_REGISTER_METHOD("input-x-gradient", [](const Network& network, const Parameters&) {
  return gradient_method(network, [](at::Tensor gradient, const at::Tensor& x) { return gradient.mul_(x); });
})

}  // namespace mi
