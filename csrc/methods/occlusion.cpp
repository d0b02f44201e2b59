// Occlusion (Zeiler & Fergus 2014), as Captum's Occlusion defines it: a patch of `occlusion_size` voxels along
// each spatial axis (every channel) moved by `occlusion_stride` is replaced by `baseline`; a voxel's value is the
// target output's drop, f(x) - f(occluded x), averaged over the patches that cover it. Patches start at 0,
// stride, 2 stride, ... until one reaches the last voxel (the last ones cut at the border). Forward passes only,
// `chunk_size` occluded copies at a time (0: the batch's size), every sample's patches in one stream of chunks.
//
// A network exported with stages (models/staged.py) is not run whole on each copy: a patch changes only the
// activations whose receptive field meets it, so the first `depth` stages run on the crop of the image those
// activations read, the result is pasted into the intact image's activation after them, and the remaining
// stages and `rest` run on the pasted copies (the same outputs up to float rounding). `depth` is the one that
// costs least for a patch in the middle of the image, by the stages' own cost measures (0: whole passes), unless
// the optional parameter `depth` (for tests and benchmarks; Python never sets it) fixes it (cut to the stages').
#include <algorithm>
#include <limits>

#include "autocast.h"
#include "methods/autograd.h"
#include "methods/forward.h"
#include "methods/method.h"
#include "methods/stages.h"

namespace mi {
namespace {

// `t` (B, C, *spatial) cut to `box`.
at::Tensor crop(at::Tensor t, const Box& box, const Box& origin = {}) {
  for (size_t d = 0; d < box.size(); ++d)
    t = t.narrow(2 + d, box[d].begin - (origin.empty() ? 0 : origin[d].begin), box[d].length());
  return t;
}

Box intersection(const Box& a, const Box& b) {
  Box out;
  for (size_t d = 0; d < a.size(); ++d) {
    const int64_t begin = std::max(a[d].begin, b[d].begin);
    out.push_back({begin, std::max(begin, std::min(a[d].end, b[d].end))});
  }
  return out;
}

// Rows [first, first + rows of `out`) of `drops`: each copy's image's reference output minus the copy's output, at
// the image's target (`owners`: each copy's image).
void record(at::Tensor& drops, int64_t first, const at::Tensor& reference, const at::Tensor& out,
            const at::Tensor& owners, const at::Tensor& targets) {
  const at::Tensor occluded = out.gather(1, targets.index_select(0, owners).view({-1, 1})).squeeze(1);
  drops.narrow(0, first, out.size(0)).copy_(reference.index_select(0, owners) - occluded);
}

// A copy of `t`; volumes go through a CPU's convolutions channels-last (methods/forward.h says why).
at::Tensor layout(const at::Tensor& t) {
  if (t.is_cuda() || t.dim() != 5) return t.clone(at::MemoryFormat::Contiguous);
  return at::empty_like(t, t.options(), at::MemoryFormat::ChannelsLast3d).copy_(t);
}

class Occlusion : public Method {
 public:
  Occlusion(const Network& network, const Parameters& parameters)
      : network_(network),
        forward_(network.amp),
        rest_forward_(network.amp),
        stages_(Stages::of(network.model)),
        size_(parameters.integer("occlusion_size")),
        stride_(parameters.integer("occlusion_stride")),
        baseline_(parameters.number("baseline")),
        chunk_(parameters.integer("chunk_size")),
        depth_(parameters.integer("depth", -1)) {
    TORCH_CHECK(size_ >= 1 && stride_ >= 1 && stride_ <= size_, "occlusion: the stride (", stride_,
                ") must be between 1 and the patch's size (", size_, "): a larger one leaves voxels uncovered");
  }

  at::Tensor attribute(const at::Tensor& batch, const at::Tensor& targets, int64_t node,
                       const std::vector<int64_t>& /*seeds*/) override {
    const at::Tensor x = batch.to(at::kFloat);
    const int64_t samples = x.size(0), axes = x.dim() - 2;
    TORCH_CHECK(axes == 2 || axes == 3, "occlusion needs 2D or 3D inputs (B, C, *spatial); got ", x.sizes());
    counts_.assign(axes, 0);  // patches along each spatial axis
    int64_t patches = 1;
    for (int64_t d = 0; d < axes; ++d) {
      const int64_t n = x.size(2 + d);
      TORCH_CHECK(size_ <= n, "occlusion: a patch of ", size_, " voxels does not fit the input's ", n,
                  " along spatial axis ", d, " (input ", x.sizes(), "): lower --occlusion_size");
      counts_[d] = (n - size_ + stride_ - 1) / stride_ + 1;
      patches *= counts_[d];
    }
    const at::Tensor drops = stages_ ? staged_drops(x, targets, node, patches) : whole_drops(x, targets, node, patches);
    // Each patch's drop over its voxels, summed, over the number of patches on each voxel: a transposed
    // convolution of the drops' grid with a box of the patch's size, cut to the input.
    std::vector<int64_t> grid{samples, 1}, one{1, 1}, box{1, 1};
    for (int64_t d = 0; d < axes; ++d) {
      grid.push_back(counts_[d]);
      one.push_back(counts_[d]);
      box.push_back(size_);
    }
    const at::Tensor kernel = at::ones(box, x.options());
    auto spread = [&](const at::Tensor& values) {
      at::Tensor out = axes == 3 ? at::conv_transpose3d(values, kernel, {}, stride_)
                                 : at::conv_transpose2d(values, kernel, {}, stride_);
      for (int64_t d = 0; d < axes; ++d) out = out.narrow(2 + d, 0, x.size(2 + d));
      return out;
    };
    const at::Tensor map = spread(drops.view(grid)).div_(spread(at::ones(one, x.options())));
    return map.expand(x.sizes()).contiguous();
  }

 private:
  // Patch `patch` (row-major over the axes: the last one fastest), cut at the border.
  Box patch_box(int64_t patch, const at::Tensor& x) const {
    const int64_t axes = static_cast<int64_t>(counts_.size());
    Box box(axes);
    for (int64_t d = axes - 1; d >= 0; --d) {
      const int64_t start = (patch % counts_[d]) * stride_;
      patch /= counts_[d];
      box[d] = {start, std::min(start + size_, x.size(2 + d))};
    }
    return box;
  }

  // Every copy through the whole network.
  at::Tensor whole_drops(const at::Tensor& x, const at::Tensor& targets, int64_t node, int64_t patches) {
    const at::Tensor reference = forward_(network_.model, x, node).gather(1, targets.view({-1, 1})).squeeze(1);
    const int64_t rows = x.size(0) * patches, chunk = chunk_ > 0 ? chunk_ : x.size(0);
    at::Tensor drops = at::empty({rows}, x.options());
    for (int64_t first = 0; first < rows; first += chunk) {
      const int64_t count = std::min(chunk, rows - first);
      const at::Tensor owners =
          at::arange(first, first + count, x.options().dtype(at::kLong)).floor_divide(patches);
      at::Tensor copies = x.index_select(0, owners);
      for (int64_t r = 0; r < count; ++r)
        crop(copies.narrow(0, r, 1), patch_box((first + r) % patches, x)).fill_(baseline_);
      const at::Tensor out = forward_(network_.model, copies, node);
      record(drops, first, reference, out, owners, targets);
    }
    return drops;
  }

  // The stages from `depth` on, then `rest`, on whole inputs: the outputs (B, n_outputs).
  at::Tensor tail(at::Tensor h, int64_t depth, int64_t node) {
    for (int64_t i = depth; i < stages_->size(); ++i) h = stages_->run(i, h);
    return rest_forward_(stages_->rest(), h, node);
  }

  // The boxes of one patch: changed[i], the activations it changes before stage i (changed[0]: the patch), and
  // read[i], what stage i reads to recompute them (read[depth] = changed[depth]).
  void patch_boxes(const Box& patch, int64_t depth, std::vector<Box>& changed, std::vector<Box>& read) const {
    changed.assign(depth + 1, {});
    read.assign(depth + 1, {});
    changed[0] = patch;
    for (int64_t i = 0; i < depth; ++i) changed[i + 1] = stages_->affected(i, changed[i]);
    read[depth] = changed[depth];
    for (int64_t i = depth - 1; i >= 0; --i) read[i] = stages_->needed(i, read[i + 1]);
  }

  int64_t cheapest_depth(const at::Tensor& x) const {
    int64_t middle = 0;
    for (int64_t count : counts_) middle = middle * count + count / 2;
    std::vector<Box> changed, read;
    const int64_t n = stages_->size();
    int64_t best = 0;
    double best_cost = std::numeric_limits<double>::infinity();
    for (int64_t depth = 0; depth <= n; ++depth) {
      patch_boxes(patch_box(middle, x), depth, changed, read);
      double cost = depth > 0 ? stages_->copy_cost(depth - 1) : 0;  // the pasted copy
      for (int64_t i = 0; i < n; ++i)
        cost += i < depth ? stages_->cost(i, read[i], read[i + 1], true)
                          : stages_->cost(i, stages_->whole(i), stages_->output(i), false);
      if (cost < best_cost) best = depth, best_cost = cost;
    }
    return best;
  }

  at::Tensor staged_drops(const at::Tensor& x, const at::Tensor& targets, int64_t node, int64_t patches) {
    stages_->prepare(std::vector<int64_t>(x.sizes().begin() + 2, x.sizes().end()));
    const int64_t depth = depth_ >= 0 ? std::min(depth_, stages_->size()) : cheapest_depth(x);
    if (depth == 0) return whole_drops(x, targets, node, patches);
    torch::NoGradGuard no_grad;
    AutocastGuard autocast(x.device().type(), network_.amp);
    const at::Tensor image = layout(x);
    at::Tensor h = image, intact;  // intact: the activations before stage `depth`
    for (int64_t i = 0; i < depth; ++i) h = stages_->run(i, h);
    intact = h.clone();  // a stage may work in place (ReLU(inplace=True))
    const at::Tensor reference = tail(h, depth, node).gather(1, targets.view({-1, 1})).squeeze(1);
    const int64_t rows = x.size(0) * patches, chunk = chunk_ > 0 ? chunk_ : x.size(0);
    at::Tensor drops = at::empty({rows}, x.options());
    std::vector<Box> changed, read;
    for (int64_t first = 0; first < rows; first += chunk) {
      const int64_t count = std::min(chunk, rows - first);
      const at::Tensor owners =
          at::arange(first, first + count, x.options().dtype(at::kLong)).floor_divide(patches);
      at::Tensor copies = intact.index_select(0, owners);
      for (int64_t r = 0; r < count; ++r) {
        const int64_t sample = (first + r) / patches;
        patch_boxes(patch_box((first + r) % patches, x), depth, changed, read);
        if (volume(changed[depth]) == 0) continue;  // no activation reads the patch (a stride over the window)
        at::Tensor part = layout(crop(image.narrow(0, sample, 1), read[0]));
        crop(part, intersection(changed[0], read[0]), read[0]).fill_(baseline_);
        for (int64_t i = 0; i < depth; ++i) part = stages_->run(i, part, read[i], read[i + 1]);
        crop(copies.narrow(0, r, 1), changed[depth]).copy_(part);
      }
      const at::Tensor out = tail(copies, depth, node);
      record(drops, first, reference, out, owners, targets);
    }
    return drops;
  }

  Network network_;
  ForwardPass forward_, rest_forward_;
  std::optional<Stages> stages_;
  int64_t size_, stride_;
  double baseline_;
  int64_t chunk_, depth_;
  std::vector<int64_t> counts_;
};

}  // namespace

MI_REGISTER_METHOD("occlusion", [](const Network& network, const Parameters& parameters) {
  return std::make_unique<Occlusion>(network, parameters);
})

}  // namespace mi
