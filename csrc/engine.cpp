#include "engine.h"

#include <ATen/Context.h>
#include <torch/cuda.h>

#include "methods/grad_cam.h"
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
      amp_(parse_amp(options_.amp)),
      model_(model.clone()) {  // own copy: moving it to the device leaves the caller's intact
  TORCH_CHECK(options_.method == "gradients" || options_.method == "grad-cam", "unknown attribution method '",
              options_.method, "': use gradients or grad-cam");
  TORCH_CHECK(options_.cam_variant == "published" || options_.cam_variant == "clinicadl",
              "unknown Grad-CAM variant '", options_.cam_variant, "': use published or clinicadl");
  TORCH_CHECK(options_.target >= 0, "target node must be >= 0, got ", options_.target);
  if (device_.is_cuda() && !amp_.has_value()) {
    // float32 means float32: torch lets cuDNN convolutions use TensorFloat-32 by default (~1e-3 relative
    // error on H100). This is process-wide; the engine owns its process. --amp is the fast path.
    at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV,
                                            at::Float32Precision::IEEE);
    at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL,
                                            at::Float32Precision::IEEE);
  }
  model_.to(device_);
  model_.eval();
  // Frozen weights: autograd then computes the input gradient only, never weight gradients.
  for (auto p : model_.parameters()) p.set_requires_grad(false);
  if (options_.method == "grad-cam") {
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
  if (trunk_.has_value()) {
    const auto variant = options_.cam_variant == "clinicadl" ? CamVariant::kClinicaDL : CamVariant::kPublished;
    return grad_cam(*trunk_, *head_, x, options_.target, amp_, variant);
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
  at::Tensor x = batch.to(device_, at::kFloat, /*non_blocking=*/true);
  if (options_.channels_last && (x.dim() == 4 || x.dim() == 5)) {
    // A copy with channels-last strides: contiguous(ChannelsLast) would keep a single-channel input as it
    // is (both layouts are the same memory), and the kernels would then not take the channels-last path.
    const auto format = x.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
    x = at::empty_like(x, x.options(), format).copy_(x);
  }
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
