#include "methods/stages.h"

#include <algorithm>

namespace mi {
namespace {

// A CPU's time for Conv5_FC3's occlusion at full size (benchmarks/occlusion.py, every choice of stages timed) is
// fitted by multiply-adds plus 32 per value read or written, plus 2e5 per stage run on a crop.
constexpr double kPerValue = 32, kPerCrop = 2e5;

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }  // b > 0
int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// The box [0, n) along each axis of a spatial size.
Box all_of(const std::vector<int64_t>& size) {
  Box box;
  for (int64_t n : size) box.push_back({0, n});
  return box;
}

std::vector<int64_t> ints(const c10::IValue& value) { return value.toIntVector(); }

}  // namespace

double volume(const Box& box) {
  double out = 1;
  for (const Span& span : box) out *= static_cast<double>(std::max<int64_t>(0, span.length()));
  return out;
}

std::optional<Stages> Stages::of(const torch::jit::Module& model) {
  if (!model.hasattr("stages") || !model.hasattr("rest")) return std::nullopt;
  const c10::IValue list = model.attr("stages"), rest = model.attr("rest");
  if (!list.isModule() || !rest.isModule()) return std::nullopt;
  Stages out;
  out.rest_ = rest.toModule();
  for (const torch::jit::Module& module : list.toModule().children()) {
    for (const char* name : {"kernel", "stride", "fill", "macs", "native", "channels"})
      if (!module.hasattr(name)) return std::nullopt;  // a `stages` list of someone else's: run whole passes
    if (!module.find_method("padding")) return std::nullopt;
    const std::vector<int64_t> channels = ints(module.attr("channels"));
    Stage stage;
    stage.module = module;
    stage.kernel = ints(module.attr("kernel"));
    stage.stride = ints(module.attr("stride"));
    stage.fill = module.attr("fill").toDouble();
    stage.macs = module.attr("macs").toDouble();
    stage.native = module.attr("native").toBool();
    stage.in_channels = channels.at(0);
    stage.out_channels = channels.at(1);
    out.stages_.push_back(std::move(stage));
  }
  return out;
}

void Stages::prepare(const std::vector<int64_t>& size) {
  std::vector<int64_t> input = size;
  for (Stage& stage : stages_) {
    TORCH_CHECK(stage.kernel.size() == input.size() && stage.stride.size() == input.size(),
                "occlusion: a stage of the network has ", stage.kernel.size(), " spatial axes, its input ",
                input.size());
    stage.input = input;
    stage.padding = ints(stage.module.run_method("padding", c10::List<int64_t>(input)));
    for (size_t d = 0; d < input.size(); ++d) {
      const int64_t padded = input[d] + stage.padding[2 * d] + stage.padding[2 * d + 1];
      TORCH_CHECK(padded >= stage.kernel[d], "occlusion: the network's layers shrink spatial axis ", d,
                  " below a layer's window (", padded, " < ", stage.kernel[d], "): the input is too small");
      input[d] = (padded - stage.kernel[d]) / stage.stride[d] + 1;
    }
    stage.output = input;
  }
}

double Stages::cost(int64_t i, const Box& input, const Box& output, bool crop) const {
  const Stage& stage = stages_[i];
  return stage.macs * volume(output) +
         kPerValue * (stage.in_channels * volume(input) + stage.out_channels * volume(output)) +
         (crop ? kPerCrop : 0);
}

double Stages::copy_cost(int64_t i) const { return kPerValue * stages_[i].out_channels * volume(output(i)); }

Box Stages::whole(int64_t i) const { return all_of(stages_[i].input); }

Box Stages::output(int64_t i) const { return all_of(stages_[i].output); }

Box Stages::affected(int64_t i, const Box& changed) const {
  const Stage& stage = stages_[i];
  const Box whole_output = output(i);
  if (volume(changed) == 0) return Box(changed.size(), Span{0, 0});  // nothing changed, nothing changes
  Box out;
  for (size_t d = 0; d < changed.size(); ++d) {
    const int64_t k = stage.kernel[d], s = stage.stride[d], begin = stage.padding[2 * d];
    const int64_t outputs = whole_output[d].end;
    // output o reads inputs [o s - begin, o s - begin + k)
    const int64_t first = std::max<int64_t>(0, ceil_div(changed[d].begin + begin - k + 1, s));
    out.push_back({first, std::max(first, std::min(outputs, floor_div(changed[d].end - 1 + begin, s) + 1))});
  }
  return out;
}

Box Stages::needed(int64_t i, const Box& outputs) const {
  const Stage& stage = stages_[i];
  Box out;
  for (size_t d = 0; d < outputs.size(); ++d) {
    if (outputs[d].length() <= 0) return Box(outputs.size(), Span{0, 0});  // nothing to read
    const int64_t s = stage.stride[d], begin = stage.padding[2 * d];
    out.push_back({std::max<int64_t>(0, outputs[d].begin * s - begin),
                   std::min(stage.input[d], (outputs[d].end - 1) * s - begin + stage.kernel[d])});
  }
  return out;
}

at::Tensor Stages::run(int64_t i, const at::Tensor& x, const Box& box, const Box& outputs) const {
  const Stage& stage = stages_[i];
  const int64_t axes = static_cast<int64_t>(box.size());
  std::vector<int64_t> pads(2 * axes, 0);  // padded here, in at::constant_pad_nd's order: the last axis first
  std::vector<int64_t> native(axes, 0);    // padded by the stage on both sides (no copy)
  bool padded = false;
  for (int64_t d = 0; d < axes; ++d) {
    const int64_t begin = box[d].begin == 0 ? stage.padding[2 * d] : 0;
    const int64_t end = box[d].end == stage.input[d] ? stage.padding[2 * d + 1] : 0;
    native[d] = stage.native ? std::min(begin, end) : 0;
    pads[2 * (axes - 1 - d)] = begin - native[d];
    pads[2 * (axes - 1 - d) + 1] = end - native[d];
    padded = padded || begin > native[d] || end > native[d];
  }
  torch::jit::Module module = stage.module;  // a handle: forward() is not const
  const at::Tensor input = padded ? at::constant_pad_nd(x, pads, stage.fill) : x;
  at::Tensor out = module.forward({input, c10::List<int64_t>(native)}).toTensor();
  for (int64_t d = 0; d < axes; ++d) {
    const int64_t begin = box[d].begin, shift = stage.padding[2 * d];
    TORCH_CHECK(begin == 0 || (begin + shift) % stage.stride[d] == 0, "occlusion: a crop starting at ", begin,
                " is not aligned with stage ", i, "'s stride");
    const int64_t first = begin == 0 ? 0 : (begin + shift) / stage.stride[d];  // the output's first voxel
    TORCH_CHECK(outputs[d].begin >= first && outputs[d].end <= first + out.size(2 + d),
                "occlusion: stage ", i, "'s crop yields outputs [", first, ", ", first + out.size(2 + d),
                ") along axis ", d, ", not [", outputs[d].begin, ", ", outputs[d].end, ")");
    out = out.narrow(2 + d, outputs[d].begin - first, outputs[d].length());
  }
  return out;
}

at::Tensor Stages::run(int64_t i, const at::Tensor& x) const { return run(i, x, whole(i), output(i)); }

}  // namespace mi
