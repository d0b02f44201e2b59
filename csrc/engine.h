// The hot loop: one TorchScript model on one device, batches in, per-element running sums kept.
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "methods/forward.h"
#include "methods/method.h"
#include "stats.h"

namespace mi {

// As Python sets them; parsed once, by the constructor. Python checks the values' ranges (target >= 0,
// n_samples >= 1, ...) before it calls in; the engine checks what only it can see (the model's outputs, the
// devices, the batches).
struct EngineOptions {
  std::string device = "cpu";   // "cpu", "cuda", "cuda:N"
  std::string method = "gradients";  // a registered method (methods/method.h: method_names())
  // The method's and the noise tunnel's parameters by name (each method file lists the ones it reads).
  std::map<std::string, ParameterValue> parameters;
  bool noise_tunnel = false;    // wrap the method in the noise tunnel (methods/noise_tunnel.h)
  int64_t target = 0;           // output node whose gradient is taken (target_mode node)
  std::string target_mode = "node";  // node (`target` for every sample), given (per sample), predicted (argmax)
  std::string amp = "none";     // autocast dtype of the forward pass: none, bfloat16, float16
  bool deterministic = false;   // CUDA: deterministic cuDNN algorithms, no autotuning
  bool count_zeros = false;     // count exactly-zero map values (shows underflow under --amp)
  bool abs = false;             // magnitudes: |map| is what is returned and accumulated
  bool statistics = false;      // also |map| sums and Welford mean/M2 per element (and per subset)
  std::string group_by = "none";  // subsets: none, given (per sample), predicted (class), correct (pred == label)
};

// Subset statistics are kept under key (subset + 1) * kSubsetStride + element id: above every element id.
constexpr int64_t kSubsetStride = int64_t{1} << 20;

enum class TargetMode { kNode, kGiven, kPredicted };
enum class GroupBy { kNone, kGiven, kPredicted, kCorrect };

class Engine {
 public:
  // On CUDA each call sets the device policy of its computations (the one place that does: cuDNN autotuning
  // unless deterministic, IEEE float32 convolutions and matmuls unless amp) and restores the process's after it.
  Engine(const torch::jit::Module& model, EngineOptions options);
  static std::unique_ptr<Engine> from_file(const std::string& path, EngineOptions options);

  // The maps of `batch` (B, C, *spatial), on the engine's device (|map| with `abs`); no sums are touched
  // (exactly-zero values are counted with count_zeros). `targets`: each sample's output node (target_mode
  // given); `seeds`: each sample's own seed (noise tunnel: what makes its noise independent of its batch).
  at::Tensor attribute(const at::Tensor& batch, const std::vector<int64_t>& targets = {},
                       const std::vector<int64_t>& seeds = {});

  // `attribute`, then each map added to the running sums of its element id (and of its subset's key);
  // the maps come back only when asked to.
  // `subsets`: each sample's subset (group_by given); `labels`: each sample's true class (group_by correct).
  std::optional<at::Tensor> accumulate(const at::Tensor& batch, const std::vector<int64_t>& ids,
                                       bool return_maps, const std::vector<int64_t>& targets = {},
                                       const std::vector<int64_t>& seeds = {},
                                       const std::vector<int64_t>& subsets = {},
                                       const std::vector<int64_t>& labels = {});

  // The model's outputs (B, n_outputs) for `batch`, forward only (no graph kept), float32, on the engine's device,
  // under its amp and device policy; no sums are touched. What the evaluation's perturbed copies go through
  // (analysis/faithfulness.py). On a CPU, volumes go channels-last (methods/forward.h).
  at::Tensor outputs(const at::Tensor& batch);

  // The element ids this engine will see (from the plan): their sums are allocated once.
  void reserve(const std::vector<int64_t>& ids);

  // What an interrupted run had summed (its checkpoint), per element id or, with `subsets`, per subset key: the
  // next maps continue those very running sums (ElementSums::restore). Moved to the engine's device.
  void restore(bool subsets, const std::vector<int64_t>& ids, const std::vector<int64_t>& counts,
               const at::Tensor& sums, const std::optional<at::Tensor>& abs_sums,
               const std::optional<at::Tensor>& mean64, const std::optional<at::Tensor>& m2);

  // Per element id, or with `subsets` per (subset, element) key (see kSubsetStride).
  std::vector<int64_t> ids(bool subsets = false) const;
  std::vector<int64_t> counts(bool subsets = false) const;
  at::Tensor sums(bool subsets = false) const;
  at::Tensor means() const;
  at::Tensor abs_sums(bool subsets = false) const;
  at::Tensor welford_means(bool subsets = false) const;
  at::Tensor m2(bool subsets = false) const;
  // Fraction of exactly-zero values among all map values computed (count_zeros only; else -1).
  double zero_fraction() const;
  // group_by: the subset of each sample of the last batch (for the listing of who fell where).
  std::vector<int64_t> last_subsets() const;
  std::string device() const { return device_.str(); }
  const EngineOptions& options() const { return options_; }

 private:
  // The caller holds mutex_.
  at::Tensor compute(const at::Tensor& x, const std::vector<int64_t>& targets, const at::Tensor& predicted,
                     const std::vector<int64_t>& seeds);
  at::Tensor targets_for(const at::Tensor& x, const std::vector<int64_t>& given, const at::Tensor& predicted);
  // Each sample's subset key; `groups` receives each sample's subset.
  std::vector<int64_t> subset_keys(const std::vector<int64_t>& ids, const std::vector<int64_t>& subsets,
                                   const std::vector<int64_t>& labels, const at::Tensor& predicted,
                                   std::vector<int64_t>& groups) const;

  EngineOptions options_;
  c10::Device device_;
  TargetMode target_mode_;
  GroupBy group_by_;
  std::optional<c10::ScalarType> amp_;
  torch::jit::Module model_;
  std::unique_ptr<Method> method_;  // chosen once, from the registry (and wrapped in the noise tunnel)
  ElementSums sums_;
  ElementSums subsets_;
  std::vector<int64_t> last_subsets_;
  at::Tensor zeros_;        // on the device: no synchronisation per batch
  int64_t values_ = 0;
  ForwardPass forward_;  // outputs(): channels-last volumes on a CPU (methods/forward.h)
  mutable std::mutex mutex_;  // Python threads may call in parallel (the GIL is released)
};

}  // namespace mi
