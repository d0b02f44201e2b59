#include "methods/noise_tunnel.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include "methods/copies.h"

namespace mi {
namespace {

// splitmix64: two seeds into one well-mixed seed.
uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ULL + b + 0x632BE59BD9B4E019ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Through the CUDA hooks: compiles and links against a CPU-only torch too.
at::Generator generator_for(const c10::Device& device, uint64_t seed) {
  if (device.is_cuda()) {
    at::Generator generator = at::detail::getCUDAHooks().getNewGenerator(device.index() < 0 ? 0 : device.index());
    generator.set_current_seed(seed);
    return generator;
  }
  return at::detail::createCPUGenerator(seed);
}

class NoiseTunnel : public Method {
 public:
  NoiseTunnel(std::unique_ptr<Method> base, bool deterministic, const Parameters& parameters)
      : base_(std::move(base)),
        deterministic_(deterministic),
        samples_(parameters.integer("n_samples")),
        noise_level_(parameters.number("noise_level")),
        seed_(parameters.integer("seed")),
        chunk_(parameters.integer("chunk_size")) {}

  at::Tensor attribute(const at::Tensor& x, const at::Tensor& targets, int64_t node,
                       const std::vector<int64_t>& seeds) override {
    const int64_t n = x.size(0);
    // A sample without a seed of its own is seeded by its index in the batch.
    std::vector<int64_t> own_seeds = seeds;
    if (own_seeds.empty()) {
      for (int64_t i = 0; i < n; ++i) own_seeds.push_back(i);
    }
    TORCH_CHECK(static_cast<int64_t>(own_seeds.size()) == n, "the noise tunnel got ", seeds.size(),
                " sample seeds for a batch of ", n);
    at::Tensor flat = x.flatten(1);
    at::Tensor sigma = (flat.amax(1) - flat.amin(1)).mul_(noise_level_);  // (B,), on the device
    std::vector<at::Generator> generators;
    for (int64_t i = 0; i < n; ++i) {
      generators.push_back(generator_for(x.device(), mix(static_cast<uint64_t>(seed_),
                                                         static_cast<uint64_t>(own_seeds[i]))));
    }
    const int64_t copies = samples_;
    auto rows = [&](int64_t first, int64_t count) {
      std::vector<at::Tensor> out;
      for (int64_t r = first; r < first + count; ++r) {
        const int64_t i = r / copies;  // a sample's copies come in order: its generator draws them in order
        at::Tensor noise = at::randn(x.sizes().slice(1), generators[i], x.options());
        out.push_back(x[i] + noise.mul_(sigma[i]));
      }
      return at::stack(out);
    };
    // The base method sees each chunk of noisy rows as a batch of its own, with their owners' targets.
    auto attribute = [&](const at::Tensor& noisy, const at::Tensor& noisy_targets) {
      return base_->attribute(noisy, noisy_targets, node, {});
    };
    return copy_sums(x, targets, copies, chunk_, rows, attribute, deterministic_).div_(copies);
  }

 private:
  std::unique_ptr<Method> base_;
  bool deterministic_;
  int64_t samples_;
  double noise_level_;
  int64_t seed_;
  int64_t chunk_;
};

}  // namespace

std::unique_ptr<Method> noise_tunnel(std::unique_ptr<Method> base, const Network& network,
                                     const Parameters& parameters) {
  return std::make_unique<NoiseTunnel>(std::move(base), network.deterministic, parameters);
}

}  // namespace mi
