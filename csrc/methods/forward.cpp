#include "methods/forward.h"

#include <exception>

#include "autocast.h"
#include "methods/autograd.h"

namespace mi {

at::Tensor ForwardPass::operator()(torch::jit::Module& model, const at::Tensor& batch, int64_t node) {
  torch::NoGradGuard no_grad;
  AutocastGuard autocast(batch.device().type(), amp_);
  if (!batch.is_cuda() && batch.dim() == 5 && channels_last_) {
    // Copied, not .contiguous(format): with one channel both layouts count as contiguous and nothing would move.
    const at::Tensor last = at::empty_like(batch, batch.options(), at::MemoryFormat::ChannelsLast3d).copy_(batch);
    std::optional<at::Tensor> out;
    try {
      out = model.forward({last}).toTensor();
    } catch (const std::exception&) {  // TorchScript raises its own exception types, not only c10::Error
      channels_last_ = false;  // the contiguous pass below says what was wrong, if anything else was
    }
    if (out) return checked_output(*out, batch.size(0), node).to(at::kFloat);
  }
  return checked_output(model.forward({batch}).toTensor(), batch.size(0), node).to(at::kFloat);
}

}  // namespace mi
