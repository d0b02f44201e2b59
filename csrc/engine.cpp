#include "engine.h"

#include <ATen/Context.h>
#include <torch/cuda.h>

#include "methods/gradients.h"

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

Method parse_method(const std::string& method) {
  if (method == "gradients") return Method::kGradients;
  if (method == "grad-cam") return Method::kGradCam;
  TORCH_CHECK(false, "unknown attribution method '", method, "': use gradients or grad-cam");
}

CamVariant parse_cam_variant(const std::string& variant) {
  if (variant == "published") return CamVariant::kPublished;
  if (variant == "clinicadl") return CamVariant::kClinicaDL;
  TORCH_CHECK(false, "unknown Grad-CAM variant '", variant, "': use published or clinicadl");
}

// Process-wide flags: every engine of a run is made with the same options, and the engine owns its process.
void set_cuda_policy(bool deterministic, bool float32) {
  auto& context = at::globalContext();
  // One image size per MAPS: autotuning pays off (once per shape) unless runs must repeat bit for bit.
  context.setBenchmarkCuDNN(!deterministic);
  context.setDeterministicCuDNN(deterministic);
  if (float32) {
    // float32 means float32: torch lets cuDNN convolutions use TensorFloat-32 by default (~1e-3 relative
    // error on H100). --amp is the fast path.
    context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, at::Float32Precision::IEEE);
    context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, at::Float32Precision::IEEE);
  }
}

std::optional<c10::ScalarType> parse_amp(const std::string& amp) {
  if (amp == "none") return std::nullopt;
  if (amp == "bfloat16") return c10::ScalarType::BFloat16;
  if (amp == "float16") return c10::ScalarType::Half;
  TORCH_CHECK(false, "unknown amp dtype '", amp, "': use none, bfloat16 or float16");
}

}  // namespace

Engine::Engine(const torch::jit::Module& model, EngineOptions options)
    : options_(std::move(options)),
      device_(parse_device(options_.device)),
      method_(parse_method(options_.method)),
      cam_variant_(parse_cam_variant(options_.cam_variant)),
      amp_(parse_amp(options_.amp)),
      model_(model.clone()) {  // own copy: moving it to the device leaves the caller's intact
  TORCH_CHECK(options_.target >= 0, "target node must be >= 0, got ", options_.target);
  if (device_.is_cuda()) set_cuda_policy(options_.deterministic, !amp_.has_value());
  model_.to(device_);
  model_.eval();
  // Frozen weights: autograd then computes the input gradient only, never weight gradients.
  for (auto p : model_.parameters()) p.set_requires_grad(false);
  if (method_ == Method::kGradCam) {
    TORCH_CHECK(model_.hasattr("trunk") && model_.hasattr("head"),
                "grad-cam needs a model with `trunk` (input -> feature map) and `head` (feature map -> outputs) "
                "submodules");
    trunk_ = model_.attr("trunk").toModule();
    head_ = model_.attr("head").toModule();
  }
}

std::unique_ptr<Engine> Engine::from_file(const std::string& path, EngineOptions options) {
  return std::make_unique<Engine>(torch::jit::load(path, c10::Device("cpu")), std::move(options));
}

at::Tensor Engine::compute(const at::Tensor& x) {
  switch (method_) {
    case Method::kGradCam:
      return grad_cam(*trunk_, *head_, x, options_.target, amp_, cam_variant_);
    case Method::kGradients:
      break;
  }
  return input_gradients(model_, x, options_.target, amp_);
}

std::optional<at::Tensor> Engine::accumulate(const at::Tensor& batch,
                                             const std::vector<int64_t>& ids, bool return_maps) {
  TORCH_CHECK(batch.dim() >= 3, "a batch must be (B, C, *spatial); got shape ", batch.sizes());
  TORCH_CHECK(batch.size(0) == static_cast<int64_t>(ids.size()), "got ", ids.size(),
              " element ids for a batch of ", batch.size(0));
  TORCH_CHECK(batch.is_floating_point(), "a batch must hold floating-point values, got ",
              batch.scalar_type());
  std::lock_guard<std::mutex> lock(mutex_);
  // non_blocking overlaps the copy with compute when the caller pinned the batch.
  // A batch already on the device (preprocessed there) is used as is; a host one is copied here.
  at::Tensor x = batch.to(device_, at::kFloat, /*non_blocking=*/true);
  at::Tensor maps = compute(x);
  sums_.add(maps, ids);
  if (options_.count_zeros) {
    at::Tensor zeros = maps.eq(0).sum();
    zeros_ = zeros_.defined() ? zeros_.add_(zeros) : zeros;
    values_ += maps.numel();
  }
  if (return_maps) return maps;
  return std::nullopt;
}

double Engine::zero_fraction() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!options_.count_zeros) return -1.0;
  if (values_ == 0) return 0.0;
  return static_cast<double>(zeros_.item<int64_t>()) / static_cast<double>(values_);
}

void Engine::reserve(const std::vector<int64_t>& ids) {
  std::lock_guard<std::mutex> lock(mutex_);
  sums_.reserve(ids);
}

std::vector<int64_t> Engine::ids() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sums_.ids();
}

std::vector<int64_t> Engine::counts() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sums_.counts();
}

at::Tensor Engine::sums() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sums_.sums();
}

at::Tensor Engine::means() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sums_.means();
}

}  // namespace mi
