// Methods that average input gradients over many copies of each sample (Smilkov et al. 2017's SmoothGrad;
// Sundararajan et al. 2017's integrated gradients). The copies of a batch go through the model `chunk`
// rows at a time (the memory of one forward of `chunk` samples), never one Python call per copy; each
// chunk's gradients are added into their sample's row at once.
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace mi {

struct SampledOptions {
  int64_t copies = 16;     // smoothgrad: noisy samples; integrated gradients: steps
  double noise_level = 0;  // smoothgrad: noise std as a fraction of each sample's value range (max - min)
  double baseline = 0;     // integrated gradients: the baseline image's constant value
  int64_t chunk = 0;       // rows per forward pass (0: the batch size)
  int64_t seed = 0;        // smoothgrad: mixed with each sample's own seed
};

// Mean over `copies` noisy versions x + N(0, (noise_level * (max x - min x))^2) of the input gradient.
// The noise of sample i comes from a generator seeded by (seed, sample_seeds[i]) only, so a sample's map
// does not depend on its batch, rank or part, or on a resumed run.
at::Tensor smoothgrad(torch::jit::Module& model, const at::Tensor& batch, const at::Tensor& targets,
                      std::optional<c10::ScalarType> amp, const SampledOptions& options,
                      const std::vector<int64_t>& sample_seeds, int64_t node = -1);

// (x - baseline) times the mean input gradient at baseline + a (x - baseline), a = (k + 0.5) / steps
// (the midpoint rule; completeness: the map sums to about f(x) - f(baseline)).
at::Tensor integrated_gradients(torch::jit::Module& model, const at::Tensor& batch, const at::Tensor& targets,
                                std::optional<c10::ScalarType> amp, const SampledOptions& options,
                                int64_t node = -1);

}  // namespace mi
