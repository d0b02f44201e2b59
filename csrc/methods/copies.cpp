#include "methods/copies.h"

#include <algorithm>
#include <vector>

namespace mi {

at::Tensor copy_sums(const at::Tensor& batch, const at::Tensor& targets, int64_t copies, int64_t chunk,
                     const CopyRows& rows, const ChunkAttribution& attribute, bool deterministic) {
  const int64_t total = batch.size(0) * copies;
  const int64_t step = chunk > 0 ? chunk : batch.size(0);
  at::Tensor sums;
  for (int64_t first = 0; first < total; first += step) {
    const int64_t count = std::min(step, total - first);
    at::Tensor owner = at::arange(first, first + count, batch.options().dtype(at::kLong)).floor_divide_(copies);
    at::Tensor maps = attribute(rows(first, count), targets.index_select(0, owner));
    if (!sums.defined()) {
      // Shaped like the attribution, not the input: Grad-CAM's maps have one channel.
      std::vector<int64_t> shape = maps.sizes().vec();
      shape[0] = batch.size(0);
      sums = at::zeros(shape, batch.options().dtype(at::kFloat));
    }
    if (!deterministic) {
      sums.index_add_(0, owner, maps);
      continue;
    }
    // A chunk's rows come sample by sample: one run of rows per sample, each summed on its own.
    for (int64_t sample = first / copies; sample * copies < first + count; ++sample) {
      const int64_t begin = std::max(first, sample * copies), end = std::min(first + count, (sample + 1) * copies);
      sums[sample].add_(maps.narrow(0, begin - first, end - begin).sum(0));
    }
  }
  // No copies at all (Python refuses that): zero sums of the input's shape.
  return sums.defined() ? sums : at::zeros(batch.sizes(), batch.options().dtype(at::kFloat));
}

}  // namespace mi
