// Grad-CAM and Grad-CAM++: class activation maps from the gradient of one output node w.r.t. a feature map. The
// model must have `trunk` (input -> feature map) and `head` (feature map -> outputs) submodules
// (models/export.py: to_torchscript_cam). Parameter: variant, "published", "clinicadl" or "plusplus".
#include <torch/csrc/autograd/autograd.h>

#include "autocast.h"
#include "methods/autograd.h"
#include "methods/method.h"

namespace mi {
namespace {

enum class CamVariant {
  kPublished,  // Selvaraju et al.: channel weights = gradient mean over all spatial axes, weighted sum, ReLU
  kClinicaDL,  // ClinicaDL 1.6.1: mean over the first two spatial axes only, mean over channels, no ReLU
  kPlusPlus,   // Chattopadhyay et al. 2018: each position's positive gradient weighted by alpha (their eq. 19)
};

CamVariant parse_variant(const std::string& variant) {
  if (variant == "published") return CamVariant::kPublished;
  if (variant == "clinicadl") return CamVariant::kClinicaDL;
  if (variant == "plusplus") return CamVariant::kPlusPlus;
  TORCH_CHECK(false, "unknown Grad-CAM variant '", variant, "': use published, clinicadl or plusplus");
}

// `targets` (B,) int64 the output node of each sample. Returns (B, 1, *spatial) float32 maps upsampled to the
// input grid (trilinear/bilinear; align_corners=false for kPublished, true for kClinicaDL as ClinicaDL does).
at::Tensor grad_cam(torch::jit::Module& trunk, torch::jit::Module& head, const at::Tensor& batch,
                    const at::Tensor& targets, std::optional<c10::ScalarType> amp, CamVariant variant,
                    int64_t node) {
  const int64_t spatial_dims = batch.dim() - 2;
  TORCH_CHECK(spatial_dims == 2 || spatial_dims == 3, "Grad-CAM needs 2D or 3D inputs (B, C, *spatial); got ",
              batch.sizes());
  at::Tensor features;
  {
    // The trunk needs no graph: only d output / d feature map is used.
    torch::NoGradGuard no_grad;
    AutocastGuard autocast(batch.device().type(), amp);
    features = trunk.forward({batch}).toTensor();
  }
  TORCH_CHECK(features.dim() == batch.dim(), "the feature map must keep the input's layout (B, C, *spatial); got ",
              features.sizes(), " for an input of ", batch.sizes(), ": choose another --level_grad_cam");
  torch::AutoGradMode grad_mode(true);
  features = features.to(at::kFloat).detach().requires_grad_(true);
  at::Tensor output;
  {
    AutocastGuard autocast(batch.device().type(), amp);
    // A copy goes in: a head starting with an in-place op (resnet18's ReLU(inplace=True) at level 2)
    // must not write into the leaf whose gradient is taken (ClinicaDL crashes there).
    output = head.forward({features.clone()}).toTensor();
  }
  checked_output(output, batch.size(0), node);
  at::Tensor grads = torch::autograd::grad({output}, {features}, {one_hot_seed(output, targets)})[0].to(at::kFloat);
  features = features.detach();

  at::Tensor cam;
  bool align_corners;
  if (variant == CamVariant::kClinicaDL) {
    // torch.mean(grads, dim=[2, 3]).unsqueeze(2).unsqueeze(3): for 3D maps the weight still varies along W.
    at::Tensor weights = grads.mean({2, 3}).unsqueeze(2).unsqueeze(3);
    cam = (features * weights).mean(1, /*keepdim=*/true);
    align_corners = true;
  } else {
    std::vector<int64_t> axes;
    for (int64_t d = 2; d < grads.dim(); ++d) axes.push_back(d);
    at::Tensor weights;
    if (variant == CamVariant::kPlusPlus) {
      // alpha = g^2 / (2 g^2 + sum(A) g^3), 0 where g is 0; the gradient of the score itself, not of exp(score)
      // (as pytorch-grad-cam and the authors' code compute it); the same 1e-6 in the denominator.
      const at::Tensor square = grads * grads;
      at::Tensor alpha = square / (2 * square + features.sum(axes, /*keepdim=*/true) * square * grads + 1e-6);
      alpha = at::where(grads != 0, alpha, at::zeros_like(alpha));
      weights = (at::relu(grads) * alpha).sum(axes, /*keepdim=*/true);
    } else {
      weights = grads.mean(axes, /*keepdim=*/true);
    }
    cam = at::relu((features * weights).sum(1, /*keepdim=*/true));
    align_corners = false;
  }
  const auto size = batch.sizes().slice(2).vec();
  if (spatial_dims == 3) {
    return at::upsample_trilinear3d(cam, size, align_corners, std::nullopt, std::nullopt, std::nullopt);
  }
  return at::upsample_bilinear2d(cam, size, align_corners, std::nullopt, std::nullopt);
}

class GradCam : public Method {
 public:
  GradCam(const Network& network, const Parameters& parameters)
      : variant_(parse_variant(parameters.text("variant"))), amp_(network.amp) {
    TORCH_CHECK(network.model.hasattr("trunk") && network.model.hasattr("head"),
                "grad-cam needs a model with `trunk` (input -> feature map) and `head` (feature map -> outputs) "
                "submodules");
    trunk_ = network.model.attr("trunk").toModule();
    head_ = network.model.attr("head").toModule();
  }

  at::Tensor attribute(const at::Tensor& x, const at::Tensor& targets, int64_t node,
                       const std::vector<int64_t>& /*seeds*/) override {
    return grad_cam(trunk_, head_, x, targets, amp_, variant_, node);
  }

 private:
  CamVariant variant_;
  std::optional<c10::ScalarType> amp_;
  torch::jit::Module trunk_, head_;
};

}  // namespace

MI_REGISTER_METHOD("grad-cam", [](const Network& network, const Parameters& parameters) {
  return std::make_unique<GradCam>(network, parameters);
})

}  // namespace mi
