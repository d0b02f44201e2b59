#include "methods/grad_cam.h"

#include <torch/csrc/autograd/autograd.h>

#include "autocast.h"
#include "methods/gradients.h"

namespace mi {

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
    at::Tensor weights = grads.mean(axes, /*keepdim=*/true);
    cam = at::relu((features * weights).sum(1, /*keepdim=*/true));
    align_corners = false;
  }
  const auto size = batch.sizes().slice(2).vec();
  if (spatial_dims == 3) {
    return at::upsample_trilinear3d(cam, size, align_corners, std::nullopt, std::nullopt, std::nullopt);
  }
  return at::upsample_bilinear2d(cam, size, align_corners, std::nullopt, std::nullopt);
}

}  // namespace mi
