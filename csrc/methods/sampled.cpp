#include "methods/sampled.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <functional>

#include "methods/gradients.h"

namespace mi {
namespace {

// splitmix64: two seeds into one well-mixed seed.
uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ULL + b + 0x632BE59BD9B4E019ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

at::Generator generator_for(const c10::Device& device, uint64_t seed) {
  if (device.is_cuda()) {
    at::Generator generator = at::detail::getCUDAHooks().getNewGenerator(device.index() < 0 ? 0 : device.index());
    generator.set_current_seed(seed);
    return generator;
  }
  return at::detail::createCPUGenerator(seed);
}

// Adds the input gradients of `copies` rows per sample into (B, ...) sums, `chunk` rows per forward pass;
// `rows(first, count)` makes the input rows first..first+count-1 (row r belongs to sample r / copies).
at::Tensor gradient_sums(torch::jit::Module& model, const at::Tensor& batch, const at::Tensor& targets,
                         std::optional<c10::ScalarType> amp, int64_t copies, int64_t chunk, int64_t node,
                         const std::function<at::Tensor(int64_t, int64_t)>& rows) {
  TORCH_CHECK(copies >= 1, "the number of samples or steps must be at least 1, got ", copies);
  const int64_t total = batch.size(0) * copies;
  const int64_t step = chunk > 0 ? chunk : batch.size(0);
  at::Tensor sums = at::zeros(batch.sizes(), batch.options().dtype(at::kFloat));
  for (int64_t first = 0; first < total; first += step) {
    const int64_t count = std::min(step, total - first);
    at::Tensor owner = at::arange(first, first + count, batch.options().dtype(at::kLong)).floor_divide_(copies);
    at::Tensor grads = input_gradients(model, rows(first, count), targets.index_select(0, owner), amp, node);
    sums.index_add_(0, owner, grads);
  }
  return sums;
}

}  // namespace

at::Tensor smoothgrad(torch::jit::Module& model, const at::Tensor& batch, const at::Tensor& targets,
                      std::optional<c10::ScalarType> amp, const SampledOptions& options,
                      const std::vector<int64_t>& sample_seeds, int64_t node) {
  const int64_t n = batch.size(0);
  TORCH_CHECK(static_cast<int64_t>(sample_seeds.size()) == n, "smoothgrad: got ", sample_seeds.size(),
              " sample seeds for a batch of ", n);
  TORCH_CHECK(options.noise_level >= 0, "smoothgrad: the noise level must be >= 0, got ", options.noise_level);
  at::Tensor flat = batch.flatten(1);
  at::Tensor sigma = (flat.amax(1) - flat.amin(1)).mul_(options.noise_level);  // (B,), on the device
  std::vector<at::Generator> generators;
  for (int64_t i = 0; i < n; ++i) {
    generators.push_back(generator_for(batch.device(), mix(static_cast<uint64_t>(options.seed),
                                                           static_cast<uint64_t>(sample_seeds[i]))));
  }
  const int64_t copies = options.copies;
  auto rows = [&](int64_t first, int64_t count) {
    std::vector<at::Tensor> out;
    for (int64_t r = first; r < first + count; ++r) {
      const int64_t i = r / copies;  // a sample's copies come in order: its generator draws them in order
      at::Tensor noise = at::randn(batch.sizes().slice(1), generators[i], batch.options());
      out.push_back(batch[i] + noise.mul_(sigma[i]));
    }
    return at::stack(out);
  };
  return gradient_sums(model, batch, targets, amp, copies, options.chunk, node, rows).div_(copies);
}

at::Tensor integrated_gradients(torch::jit::Module& model, const at::Tensor& batch, const at::Tensor& targets,
                                std::optional<c10::ScalarType> amp, const SampledOptions& options, int64_t node) {
  const int64_t steps = options.copies;
  const at::Tensor x = batch.to(at::kFloat);
  const at::Tensor difference = x - options.baseline;
  auto rows = [&](int64_t first, int64_t count) {
    at::Tensor index = at::arange(first, first + count, x.options().dtype(at::kLong));
    at::Tensor owner = index.floor_divide(steps);
    at::Tensor alpha = (index.remainder(steps).to(at::kFloat) + 0.5) / static_cast<double>(steps);
    std::vector<int64_t> shape(x.dim(), 1);
    shape[0] = count;
    return difference.index_select(0, owner).mul_(alpha.view(shape)).add_(options.baseline);
  };
  return gradient_sums(model, x, targets, amp, steps, options.chunk, node, rows).div_(steps).mul_(difference);
}

}  // namespace mi
