// Streaming per-element statistics of attribution maps, kept on the maps' device.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

namespace mi {

// Running float32 sum and count of maps per element id (`<mode>_id`: 0 for images, the patch,
// slice or ROI index otherwise). Samples are added one by one in the order given, which keeps
// the result deterministic on every device and equal to a sequential float32 sum.
// With `statistics`, also per id: the float32 sum of |map| and Welford's running mean and sum of squared
// deviations (M2) in float64 (a float32 M2 loses the variance of maps whose mean is large next to their
// spread; float64 keeps it over millions of samples). The float32 sum stays what the mean is made of.
class ElementSums {
 public:
  explicit ElementSums(bool statistics = false) : statistics_(statistics) {}

  // The element ids a run will add (known from its plan before the first batch): the sums are then
  // allocated once, at the first `add`, instead of growing by one row per new id. Only before any `add`.
  void reserve(const std::vector<int64_t>& ids);

  // maps: (B, *element_shape) on any device; ids: B element ids.
  void add(const at::Tensor& maps, const std::vector<int64_t>& ids);

  // Continues from what an earlier run had added (a checkpoint): per id its count, float32 sum and, with
  // statistics, |map| sum and float64 Welford mean and M2 (rows in `ids` order, any device). The maps added next
  // then join the very same running sums, in the same order, as in a run that was never interrupted. Only
  // before any `add`; reserved ids keep their rows.
  void restore(const std::vector<int64_t>& ids, const std::vector<int64_t>& counts, const at::Tensor& sums,
               const std::optional<at::Tensor>& abs_sums, const std::optional<at::Tensor>& mean64,
               const std::optional<at::Tensor>& m2);

  std::vector<int64_t> ids() const;     // sorted element ids seen so far
  std::vector<int64_t> counts() const;  // one per id, same order
  at::Tensor sums() const;              // (n_ids, *element_shape), same order
  at::Tensor means() const;             // sums / counts, float32
  // statistics only, same order: float32 sums of |map|, float64 Welford means and M2.
  at::Tensor abs_sums() const;
  at::Tensor welford_means() const;
  at::Tensor m2() const;
  bool statistics() const { return statistics_; }
  bool empty() const { return !sums_.defined(); }

 private:
  std::vector<int64_t> sorted_slots() const;
  // `all`'s rows of the ids with a count, sorted by id; `missing`: the error when nothing was accumulated.
  at::Tensor rows(const at::Tensor& all, const char* missing) const;
  bool statistics_;
  at::Tensor abs_sums_, mean64_, m2_;

  std::map<int64_t, int64_t> slot_of_;  // element id -> row of sums_
  at::Tensor sums_;                     // rows in order of first appearance
  std::vector<int64_t> counts_;         // per row
};

}  // namespace mi
