// Grad-CAM: class activation maps from the gradient of one output node w.r.t. a feature map.
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <optional>

namespace mi {

enum class CamVariant {
  kPublished,  // Selvaraju et al.: channel weights = gradient mean over all spatial axes, weighted sum, ReLU
  kClinicaDL,  // ClinicaDL 1.6.1: mean over the first two spatial axes only, mean over channels, no ReLU
};

// `trunk` maps the input batch (B, C, *spatial) to the feature map; `head` maps the feature map to the
// outputs (B, n_outputs); `targets` (B,) int64 the output node of each sample. Returns (B, 1, *spatial) float32 maps upsampled to the input grid
// (trilinear/bilinear; align_corners=false for kPublished, true for kClinicaDL as ClinicaDL does).
at::Tensor grad_cam(torch::jit::Module& trunk, torch::jit::Module& head, const at::Tensor& batch,
                    const at::Tensor& targets, std::optional<c10::ScalarType> amp, CamVariant variant,
                    int64_t node = -1);

}  // namespace mi
