// The leading local layers of a network exported by models/staged.py (its `stages` and `rest`), run on whole
// inputs or on crops of them. A crop is padded only where it meets its input's border, as the layer pads a
// whole input, so every voxel of a crop's output is a voxel of the whole output: occlusion recomputes only the
// voxels an occluded patch changes (methods/occlusion.cpp).
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace mi {

// [begin, end) along each spatial axis.
struct Span {
  int64_t begin, end;
  int64_t length() const { return end - begin; }
};
using Box = std::vector<Span>;

class Stages {
 public:
  // The stages of `model`, or none when it has no `stages` list and `rest` module.
  static std::optional<Stages> of(const torch::jit::Module& model);

  int64_t size() const { return static_cast<int64_t>(stages_.size()); }
  torch::jit::Module& rest() { return rest_; }

  // Fixes the geometry for inputs of spatial `size`: each stage's input size and padding (asked of the stage).
  void prepare(const std::vector<int64_t>& size);

  // The whole input of stage i, and its whole output, as boxes.
  Box whole(int64_t i) const;
  Box output(int64_t i) const;
  // The outputs of stage i whose window meets `changed` (a box of its input).
  Box affected(int64_t i, const Box& changed) const;
  // The inputs of stage i that its `outputs` read, padding left out.
  Box needed(int64_t i, const Box& outputs) const;
  // Stage i on `x`, which covers `box` of its input (aligned as needed() makes boxes); returns its output cut to
  // `outputs` (a box of the output inside what `box` yields).
  at::Tensor run(int64_t i, const at::Tensor& x, const Box& box, const Box& outputs) const;
  // Stage i on its whole input.
  at::Tensor run(int64_t i, const at::Tensor& x) const;
  // What stage i costs, in multiply-adds, run on `input` to yield `output` (`crop`: once per patch).
  double cost(int64_t i, const Box& input, const Box& output, bool crop) const;
  // What copying the output of stage i costs, in the same measure.
  double copy_cost(int64_t i) const;

 private:
  struct Stage {
    torch::jit::Module module;
    std::vector<int64_t> kernel, stride;
    double fill = 0, macs = 0;
    bool native = true;  // forward(x, padding) pads by `fill` itself, on both sides
    int64_t in_channels = 0, out_channels = 0;
    std::vector<int64_t> input, padding, output;  // set by prepare(): input size; [begin, end] per axis; output size
  };
  std::vector<Stage> stages_;
  torch::jit::Module rest_;
};

double volume(const Box& box);

}  // namespace mi
