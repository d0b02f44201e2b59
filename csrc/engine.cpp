#include "engine.h"

#include <ATen/Context.h>
#include <torch/cuda.h>

#include <algorithm>

#include "autocast.h"
#include "methods/autograd.h"
#include "methods/noise_tunnel.h"

namespace mi {
namespace {

c10::Device parse_device(const std::string& spec) {
  c10::Device device(spec);  // throws on a malformed spec
  TORCH_CHECK(device.is_cpu() || device.is_cuda(), "unsupported device '", spec,
              "': use cpu, cuda or cuda:N");
  if (device.is_cuda()) {
    const auto n = static_cast<int64_t>(torch::cuda::device_count());
    TORCH_CHECK(n > 0, "device '", spec, "' was requested but no CUDA GPU is visible");
    TORCH_CHECK(!device.has_index() || device.index() < n, "device '", spec,
                "' does not exist: ", n, " CUDA GPU(s) visible");
  }
  return device;
}

GroupBy parse_group_by(const std::string& group_by) {
  if (group_by == "none") return GroupBy::kNone;
  if (group_by == "given") return GroupBy::kGiven;
  if (group_by == "predicted") return GroupBy::kPredicted;
  if (group_by == "correct") return GroupBy::kCorrect;
  TORCH_CHECK(false, "unknown group_by '", group_by, "': use none, given, predicted or correct");
}

TargetMode parse_target_mode(const std::string& mode) {
  if (mode == "node") return TargetMode::kNode;
  if (mode == "given") return TargetMode::kGiven;
  if (mode == "predicted") return TargetMode::kPredicted;
  TORCH_CHECK(false, "unknown target mode '", mode, "': use node, given or predicted");
}

// The CUDA policy of an engine's computations, set for the duration of one call and restored after it: the flags
// are process-wide, and an engine of the in-memory API must not change them for the rest of its caller's process.
class CudaPolicy {
 public:
  CudaPolicy(bool active, bool deterministic, bool float32) : active_(active) {
    if (!active_) return;
    auto& context = at::globalContext();
    benchmark_ = context.benchmarkCuDNN();
    deterministic_ = context.deterministicCuDNN();
    conv_ = context.float32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV);
    matmul_ = context.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL);
    algorithms_ = context.deterministicAlgorithms();
    warn_only_ = context.deterministicAlgorithmsWarnOnly();
    // One image size per MAPS: autotuning pays off (once per shape) unless runs must repeat bit for bit.
    context.setBenchmarkCuDNN(!deterministic);
    context.setDeterministicCuDNN(deterministic);
    // Torch's deterministic kernels where it has them (index_put_, scatter...); an op without one warns and runs
    // (a backward with atomic additions is still exact where no two windows overlap, as in ClinicaDL's pools).
    if (deterministic) context.setDeterministicAlgorithms(true, /*warn_only=*/true);
    if (float32) {
      // float32 means float32: torch lets cuDNN convolutions use TensorFloat-32 by default (~1e-3 relative
      // error on H100). --amp is the fast path.
      context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, at::Float32Precision::IEEE);
      context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, at::Float32Precision::IEEE);
    }
  }
  ~CudaPolicy() {
    if (!active_) return;
    auto& context = at::globalContext();
    context.setBenchmarkCuDNN(benchmark_);
    context.setDeterministicCuDNN(deterministic_);
    context.setDeterministicAlgorithms(algorithms_, warn_only_);
    context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, conv_);
    context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, matmul_);
  }
  CudaPolicy(const CudaPolicy&) = delete;
  CudaPolicy& operator=(const CudaPolicy&) = delete;

 private:
  bool active_;
  bool benchmark_ = false, deterministic_ = false, algorithms_ = false, warn_only_ = false;
  at::Float32Precision conv_ = at::Float32Precision::NONE, matmul_ = at::Float32Precision::NONE;
};

std::optional<c10::ScalarType> parse_amp(const std::string& amp) {
  if (amp == "none") return std::nullopt;
  if (amp == "bfloat16") return c10::ScalarType::BFloat16;
  if (amp == "float16") return c10::ScalarType::Half;
  TORCH_CHECK(false, "unknown amp dtype '", amp, "': use none, bfloat16 or float16");
}

void check_batch(const at::Tensor& batch) {
  TORCH_CHECK(batch.dim() >= 3, "a batch must be (B, C, *spatial); got shape ", batch.sizes());
  TORCH_CHECK(batch.is_floating_point(), "a batch must hold floating-point values, got ", batch.scalar_type());
}

}  // namespace

Engine::Engine(const torch::jit::Module& model, EngineOptions options)
    : options_(std::move(options)),
      device_(parse_device(options_.device)),
      target_mode_(parse_target_mode(options_.target_mode)),
      group_by_(parse_group_by(options_.group_by)),
      amp_(parse_amp(options_.amp)),
      model_(model.clone()),  // own copy: moving it to the device leaves the caller's intact
      sums_(options_.statistics),
      subsets_(options_.statistics),
      forward_(amp_) {
  model_.to(device_);
  model_.eval();
  // Frozen weights: autograd then computes the input gradient only, never weight gradients.
  for (auto p : model_.parameters()) p.set_requires_grad(false);
  const Network network{model_, amp_, options_.deterministic};
  method_ = make_method(options_.method, network, Parameters(options_.parameters, options_.method));
  if (options_.noise_tunnel) {
    method_ = noise_tunnel(std::move(method_), network, Parameters(options_.parameters, "the noise tunnel"));
  }
}

std::unique_ptr<Engine> Engine::from_file(const std::string& path, EngineOptions options) {
  return std::make_unique<Engine>(torch::jit::load(path, c10::Device("cpu")), std::move(options));
}

at::Tensor Engine::targets_for(const at::Tensor& x, const std::vector<int64_t>& given,
                               const at::Tensor& predicted) {
  const int64_t n = x.size(0);
  const auto longs = x.options().dtype(at::kLong);
  switch (target_mode_) {
    case TargetMode::kGiven:
      TORCH_CHECK(static_cast<int64_t>(given.size()) == n, "got ", given.size(), " targets for a batch of ", n);
      return at::tensor(given, at::TensorOptions().dtype(at::kLong)).to(x.device(), /*non_blocking=*/true);
    case TargetMode::kPredicted:
      return predicted;
    case TargetMode::kNode:
      break;
  }
  return at::full({n}, options_.target, longs);
}

std::vector<int64_t> Engine::subset_keys(const std::vector<int64_t>& ids, const std::vector<int64_t>& subsets,
                                         const std::vector<int64_t>& labels, const at::Tensor& predicted,
                                         std::vector<int64_t>& groups) const {
  const size_t n = ids.size();
  if (group_by_ == GroupBy::kGiven) {
    TORCH_CHECK(subsets.size() == n, "got ", subsets.size(), " subsets for a batch of ", n);
    groups = subsets;
  } else {
    // One small copy per batch (B integers): the subsets decide which sums a map joins.
    const at::Tensor classes = predicted.cpu();
    const int64_t* p = classes.data_ptr<int64_t>();
    if (group_by_ == GroupBy::kCorrect) TORCH_CHECK(labels.size() == n, "got ", labels.size(), " labels for a batch of ", n);
    groups.clear();
    for (size_t i = 0; i < n; ++i) {
      groups.push_back(group_by_ == GroupBy::kPredicted ? p[i] : static_cast<int64_t>(p[i] == labels[i]));
    }
  }
  std::vector<int64_t> keys;
  for (size_t i = 0; i < n; ++i) {
    // Element ids below the stride keep the keys of two subsets, and the keys and the element ids, apart.
    TORCH_CHECK(groups[i] >= 0 && ids[i] >= 0 && ids[i] < kSubsetStride, "subset ", groups[i], " or element id ",
                ids[i], " out of range");
    keys.push_back((groups[i] + 1) * kSubsetStride + ids[i]);
  }
  return keys;
}

at::Tensor Engine::compute(const at::Tensor& x, const std::vector<int64_t>& targets, const at::Tensor& predicted,
                           const std::vector<int64_t>& seeds) {
  // The node checked against the output's width (which only the model knows): the fixed one, or the largest
  // given one (a node out of range would be a device-side assertion on CUDA, not an error); predicted
  // targets are in range by construction (argmax).
  int64_t node = target_mode_ == TargetMode::kNode ? options_.target : -1;
  if (target_mode_ == TargetMode::kGiven) {
    for (const auto t : targets) {
      TORCH_CHECK_INDEX(t >= 0, "target node ", t, " is out of range: output nodes are 0 or more");
      node = std::max(node, t);
    }
  }
  at::Tensor maps = method_->attribute(x, targets_for(x, targets, predicted), node, seeds);
  if (options_.abs) maps.abs_();
  if (options_.count_zeros) {
    at::Tensor zeros = maps.eq(0).sum();
    zeros_ = zeros_.defined() ? zeros_.add_(zeros) : zeros;
    values_ += maps.numel();
  }
  return maps;
}

at::Tensor Engine::attribute(const at::Tensor& batch, const std::vector<int64_t>& targets,
                             const std::vector<int64_t>& seeds) {
  check_batch(batch);
  std::lock_guard<std::mutex> lock(mutex_);
  const CudaPolicy policy(device_.is_cuda(), options_.deterministic, !amp_.has_value());
  const at::Tensor x = batch.to(device_, at::kFloat, /*non_blocking=*/true);
  const at::Tensor predicted =
      target_mode_ == TargetMode::kPredicted ? predicted_targets(model_, x, amp_) : at::Tensor();
  return compute(x, targets, predicted, seeds);
}

std::optional<at::Tensor> Engine::accumulate(const at::Tensor& batch, const std::vector<int64_t>& ids,
                                             bool return_maps, const std::vector<int64_t>& targets,
                                             const std::vector<int64_t>& seeds, const std::vector<int64_t>& subsets,
                                             const std::vector<int64_t>& labels) {
  check_batch(batch);
  TORCH_CHECK(batch.size(0) == static_cast<int64_t>(ids.size()), "got ", ids.size(),
              " element ids for a batch of ", batch.size(0));
  std::lock_guard<std::mutex> lock(mutex_);
  const CudaPolicy policy(device_.is_cuda(), options_.deterministic, !amp_.has_value());
  // non_blocking overlaps the copy with compute when the caller pinned the batch.
  // A batch already on the device (preprocessed there) is used as is; a host one is copied here.
  const at::Tensor x = batch.to(device_, at::kFloat, /*non_blocking=*/true);
  const bool need_classes = target_mode_ == TargetMode::kPredicted || group_by_ == GroupBy::kPredicted ||
                            group_by_ == GroupBy::kCorrect;
  const at::Tensor predicted = need_classes ? predicted_targets(model_, x, amp_) : at::Tensor();
  // The subsets first: a batch whose subsets are refused adds nothing anywhere.
  std::vector<int64_t> groups;
  const std::vector<int64_t> keys =
      group_by_ == GroupBy::kNone ? std::vector<int64_t>{} : subset_keys(ids, subsets, labels, predicted, groups);
  at::Tensor maps = compute(x, targets, predicted, seeds);
  sums_.add(maps, ids);
  if (group_by_ != GroupBy::kNone) {
    subsets_.add(maps, keys);
    last_subsets_ = std::move(groups);
  }
  if (return_maps) return maps;
  return std::nullopt;
}

at::Tensor Engine::outputs(const at::Tensor& batch) {
  check_batch(batch);
  std::lock_guard<std::mutex> lock(mutex_);
  const CudaPolicy policy(device_.is_cuda(), options_.deterministic, !amp_.has_value());
  return forward_(model_, batch.to(device_, at::kFloat, /*non_blocking=*/true));
}

std::vector<int64_t> Engine::last_subsets() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return last_subsets_;
}

double Engine::zero_fraction() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!options_.count_zeros) return -1.0;
  if (values_ == 0) return 0.0;
  return static_cast<double>(zeros_.item<int64_t>()) / static_cast<double>(values_);
}

void Engine::restore(bool subsets, const std::vector<int64_t>& ids, const std::vector<int64_t>& counts,
                     const at::Tensor& sums, const std::optional<at::Tensor>& abs_sums,
                     const std::optional<at::Tensor>& mean64, const std::optional<at::Tensor>& m2) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto on_device = [&](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return std::nullopt;
    return t->to(device_);
  };
  (subsets ? subsets_ : sums_).restore(ids, counts, sums.to(device_), on_device(abs_sums), on_device(mean64),
                                       on_device(m2));
}

void Engine::reserve(const std::vector<int64_t>& ids) {
  std::lock_guard<std::mutex> lock(mutex_);
  sums_.reserve(ids);
}

std::vector<int64_t> Engine::ids(bool subsets) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return subsets ? subsets_.ids() : sums_.ids();
}

std::vector<int64_t> Engine::counts(bool subsets) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return subsets ? subsets_.counts() : sums_.counts();
}

at::Tensor Engine::sums(bool subsets) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return subsets ? subsets_.sums() : sums_.sums();
}

at::Tensor Engine::abs_sums(bool subsets) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return subsets ? subsets_.abs_sums() : sums_.abs_sums();
}

at::Tensor Engine::welford_means(bool subsets) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return subsets ? subsets_.welford_means() : sums_.welford_means();
}

at::Tensor Engine::m2(bool subsets) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return subsets ? subsets_.m2() : sums_.m2();
}

at::Tensor Engine::means() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sums_.means();
}

}  // namespace mi
