// Occlusion (Zeiler & Fergus 2014), as Captum's Occlusion defines it: a patch of `occlusion_size` voxels along
// each spatial axis (every channel) moved by `occlusion_stride` is replaced by `baseline`; a voxel's value is the
// target output's drop, f(x) - f(occluded x), averaged over the patches that cover it. Patches start at 0,
// stride, 2 stride, ... until one reaches the last voxel (the last ones cut at the border). Forward passes only,
// through methods/forward.h, `chunk_size` occluded copies at a time (0: the batch's size), every sample's patches
// in one stream of chunks.
#include <algorithm>

#include "methods/forward.h"
#include "methods/method.h"

namespace mi {
namespace {

class Occlusion : public Method {
 public:
  Occlusion(const Network& network, const Parameters& parameters)
      : network_(network),
        forward_(network.amp),
        size_(parameters.integer("occlusion_size")),
        stride_(parameters.integer("occlusion_stride")),
        baseline_(parameters.number("baseline")),
        chunk_(parameters.integer("chunk_size")) {
    TORCH_CHECK(size_ >= 1 && stride_ >= 1 && stride_ <= size_, "occlusion: the stride (", stride_,
                ") must be between 1 and the patch's size (", size_, "): a larger one leaves voxels uncovered");
  }

  at::Tensor attribute(const at::Tensor& batch, const at::Tensor& targets, int64_t node,
                       const std::vector<int64_t>& /*seeds*/) override {
    const at::Tensor x = batch.to(at::kFloat);
    const int64_t samples = x.size(0), axes = x.dim() - 2;
    TORCH_CHECK(axes == 2 || axes == 3, "occlusion needs 2D or 3D inputs (B, C, *spatial); got ", x.sizes());
    std::vector<int64_t> counts(axes);  // patches along each spatial axis
    int64_t patches = 1;
    for (int64_t d = 0; d < axes; ++d) {
      const int64_t n = x.size(2 + d);
      TORCH_CHECK(size_ <= n, "occlusion: a patch of ", size_, " voxels does not fit the input's ", n,
                  " along spatial axis ", d, " (input ", x.sizes(), "): lower --occlusion_size");
      counts[d] = (n - size_ + stride_ - 1) / stride_ + 1;
      patches *= counts[d];
    }
    const at::Tensor reference = forward_(network_.model, x, node).gather(1, targets.view({-1, 1})).squeeze(1);
    const int64_t rows = samples * patches, chunk = chunk_ > 0 ? chunk_ : samples;
    at::Tensor drops = at::empty({rows}, x.options());
    for (int64_t first = 0; first < rows; first += chunk) {
      const int64_t count = std::min(chunk, rows - first);
      const at::Tensor owners =
          at::arange(first, first + count, x.options().dtype(at::kLong)).floor_divide(patches);
      at::Tensor copies = x.index_select(0, owners);
      for (int64_t r = 0; r < count; ++r) {
        at::Tensor region = copies[r];
        int64_t patch = (first + r) % patches;  // row-major over the axes: the last one fastest
        for (int64_t d = axes - 1; d >= 0; --d) {
          const int64_t start = (patch % counts[d]) * stride_;
          patch /= counts[d];
          region = region.narrow(1 + d, start, std::min(size_, x.size(2 + d) - start));
        }
        region.fill_(baseline_);
      }
      const at::Tensor out = forward_(network_.model, copies, node);
      drops.narrow(0, first, count)
          .copy_(reference.index_select(0, owners) - out.gather(1, targets.index_select(0, owners).view({-1, 1}))
                                                         .squeeze(1));
    }
    // Each patch's drop over its voxels, summed, over the number of patches on each voxel: a transposed
    // convolution of the drops' grid with a box of the patch's size, cut to the input.
    std::vector<int64_t> grid{samples, 1}, one{1, 1}, box{1, 1};
    for (int64_t d = 0; d < axes; ++d) {
      grid.push_back(counts[d]);
      one.push_back(counts[d]);
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
  Network network_;
  ForwardPass forward_;
  int64_t size_, stride_;
  double baseline_;
  int64_t chunk_;
};

}  // namespace

MI_REGISTER_METHOD("occlusion", [](const Network& network, const Parameters& parameters) {
  return std::make_unique<Occlusion>(network, parameters);
})

}  // namespace mi
