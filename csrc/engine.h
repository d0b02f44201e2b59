// The hot loop: one TorchScript model on one device, batches in, per-element running sums kept.
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "methods/grad_cam.h"
#include "stats.h"

namespace mi {

// As Python sets them; parsed once, by the constructor, into the enums below.
struct EngineOptions {
  std::string device = "cpu";   // "cpu", "cuda", "cuda:N"
  std::string method = "gradients";
  int64_t target = 0;           // output node whose gradient is taken
  std::string amp = "none";     // autocast dtype of the forward pass: none, bfloat16, float16
  std::string cam_variant = "published";  // grad-cam only: published or clinicadl
  bool deterministic = false;   // CUDA: deterministic cuDNN algorithms, no autotuning
  bool count_zeros = false;     // count exactly-zero map values (shows underflow under --amp)
};

enum class Method { kGradients, kGradCam };

class Engine {
 public:
  // On CUDA the constructor also sets the process's device policy (the one place that does): cuDNN
  // autotuning unless deterministic, and IEEE float32 convolutions and matmuls unless amp.
  Engine(const torch::jit::Module& model, EngineOptions options);
  static std::unique_ptr<Engine> from_file(const std::string& path, EngineOptions options);

  // Computes the maps of `batch` (B, C, *spatial), adds each to the running sum of its element id
  // and returns the maps (on the engine's device) only when asked to.
  std::optional<at::Tensor> accumulate(const at::Tensor& batch, const std::vector<int64_t>& ids,
                                       bool return_maps);

  // The element ids this engine will see (from the plan): their sums are allocated once.
  void reserve(const std::vector<int64_t>& ids);

  std::vector<int64_t> ids() const;
  std::vector<int64_t> counts() const;
  at::Tensor sums() const;
  at::Tensor means() const;
  // Fraction of exactly-zero values among all map values computed (count_zeros only; else -1).
  double zero_fraction() const;
  std::string device() const { return device_.str(); }
  const EngineOptions& options() const { return options_; }

 private:
  at::Tensor compute(const at::Tensor& x);

  EngineOptions options_;
  c10::Device device_;
  Method method_;
  CamVariant cam_variant_;
  std::optional<c10::ScalarType> amp_;
  torch::jit::Module model_;
  std::optional<torch::jit::Module> trunk_, head_;  // grad-cam: the model's `trunk` and `head` submodules
  ElementSums sums_;
  at::Tensor zeros_;        // on the device: no synchronisation per batch
  int64_t values_ = 0;
  mutable std::mutex mutex_;  // Python threads may call in parallel (the GIL is released)
};

}  // namespace mi
