#include "stats.h"

#include <c10/util/Exception.h>

namespace mi {

namespace {
constexpr const char* kNoStatistics = "no map has been accumulated yet, or statistics were not asked for";
}  // namespace

void ElementSums::reserve(const std::vector<int64_t>& ids) {
  TORCH_CHECK(!sums_.defined(), "ElementSums.reserve: maps were already added");
  for (auto id : ids) {
    if (!slot_of_.count(id)) {
      slot_of_[id] = static_cast<int64_t>(counts_.size());
      counts_.push_back(0);
    }
  }
}

void ElementSums::add(const at::Tensor& maps, const std::vector<int64_t>& ids) {
  TORCH_CHECK(maps.dim() >= 1 && maps.size(0) == static_cast<int64_t>(ids.size()),
              "ElementSums.add: got ", ids.size(), " element ids for a batch of shape ", maps.sizes());
  if (ids.empty()) return;
  const auto element_shape = maps.sizes().slice(1);
  const auto rows_before = static_cast<int64_t>(counts_.size());
  for (auto id : ids) {
    if (!slot_of_.count(id)) {  // not reserved: a row of its own
      slot_of_[id] = static_cast<int64_t>(counts_.size());
      counts_.push_back(0);
    }
  }
  const auto rows = static_cast<int64_t>(counts_.size());
  std::vector<int64_t> shape{rows};
  shape.insert(shape.end(), element_shape.begin(), element_shape.end());
  if (!sums_.defined()) {
    sums_ = at::zeros(shape, maps.options().dtype(at::kFloat));  // every reserved row at once
    if (statistics_) {
      abs_sums_ = at::zeros_like(sums_);
      mean64_ = at::zeros(shape, maps.options().dtype(at::kDouble));
      m2_ = at::zeros_like(mean64_);
    }
  } else {
    TORCH_CHECK(sums_.sizes().slice(1) == element_shape && sums_.device() == maps.device(),
                "ElementSums.add: maps of shape ", element_shape, " on ", maps.device(),
                " cannot be added to sums of shape ", sums_.sizes().slice(1), " on ", sums_.device());
    if (rows > rows_before) {  // ids nobody reserved: rare, so a concatenation is fine
      shape[0] = rows - rows_before;
      sums_ = at::cat({sums_, at::zeros(shape, sums_.options())});
      if (statistics_) {
        abs_sums_ = at::cat({abs_sums_, at::zeros(shape, abs_sums_.options())});
        mean64_ = at::cat({mean64_, at::zeros(shape, mean64_.options())});
        m2_ = at::cat({m2_, at::zeros(shape, m2_.options())});
      }
    }
  }

  const at::Tensor values = maps.to(at::kFloat);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t slot = slot_of_.at(ids[i]);
    const at::Tensor value = values[static_cast<int64_t>(i)];
    sums_[slot].add_(value);
    const int64_t n = ++counts_[slot];
    if (statistics_) {
      abs_sums_[slot].add_(value.abs());
      // Welford: delta against the old mean, then against the new one.
      at::Tensor x = value.to(at::kDouble);
      at::Tensor mean = mean64_[slot];
      at::Tensor delta = x - mean;
      mean.add_(delta, 1.0 / static_cast<double>(n));
      m2_[slot].add_(delta.mul_(x.sub_(mean)));
    }
  }
}

void ElementSums::restore(const std::vector<int64_t>& ids, const std::vector<int64_t>& counts, const at::Tensor& sums,
                          const std::optional<at::Tensor>& abs_sums, const std::optional<at::Tensor>& mean64,
                          const std::optional<at::Tensor>& m2) {
  TORCH_CHECK(!sums_.defined(), "ElementSums.restore: maps were already added");
  TORCH_CHECK(ids.size() == counts.size() && sums.dim() >= 1 && sums.size(0) == static_cast<int64_t>(ids.size()),
              "ElementSums.restore: ", ids.size(), " ids, ", counts.size(), " counts and sums of shape ", sums.sizes());
  TORCH_CHECK(!statistics_ || (abs_sums && mean64 && m2), "ElementSums.restore: statistics need |map| sums, means and M2");
  if (ids.empty()) return;
  for (auto id : ids) {
    if (!slot_of_.count(id)) {
      slot_of_[id] = static_cast<int64_t>(counts_.size());
      counts_.push_back(0);
    }
  }
  std::vector<int64_t> shape{static_cast<int64_t>(counts_.size())};
  const auto element_shape = sums.sizes().slice(1);
  shape.insert(shape.end(), element_shape.begin(), element_shape.end());
  sums_ = at::zeros(shape, sums.options().dtype(at::kFloat));
  if (statistics_) {
    abs_sums_ = at::zeros_like(sums_);
    mean64_ = at::zeros(shape, sums.options().dtype(at::kDouble));
    m2_ = at::zeros_like(mean64_);
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t slot = slot_of_.at(ids[i]);
    const int64_t row = static_cast<int64_t>(i);
    counts_[slot] = counts[i];
    sums_[slot].copy_(sums[row]);
    if (statistics_) {
      abs_sums_[slot].copy_((*abs_sums)[row]);
      mean64_[slot].copy_((*mean64)[row]);
      m2_[slot].copy_((*m2)[row]);
    }
  }
}

at::Tensor ElementSums::rows(const at::Tensor& all, const char* missing) const {
  TORCH_CHECK(all.defined(), missing);
  const auto slots = sorted_slots();
  auto index = at::tensor(slots, at::TensorOptions().dtype(at::kLong)).to(all.device());
  return all.index_select(0, index);
}

at::Tensor ElementSums::abs_sums() const { return rows(abs_sums_, kNoStatistics); }
at::Tensor ElementSums::welford_means() const { return rows(mean64_, kNoStatistics); }
at::Tensor ElementSums::m2() const { return rows(m2_, kNoStatistics); }

std::vector<int64_t> ElementSums::sorted_slots() const {
  std::vector<int64_t> slots;
  slots.reserve(slot_of_.size());
  for (const auto& [id, slot] : slot_of_) {
    if (counts_[slot] > 0) slots.push_back(slot);  // reserved ids no map was added to are left out
  }
  return slots;
}

std::vector<int64_t> ElementSums::ids() const {
  std::vector<int64_t> out;
  out.reserve(slot_of_.size());
  for (const auto& [id, slot] : slot_of_) {
    if (counts_[slot] > 0) out.push_back(id);
  }
  return out;
}

std::vector<int64_t> ElementSums::counts() const {
  std::vector<int64_t> out;
  for (auto slot : sorted_slots()) out.push_back(counts_[slot]);
  return out;
}

at::Tensor ElementSums::sums() const { return rows(sums_, "no map has been accumulated yet"); }

at::Tensor ElementSums::means() const {
  at::Tensor sums = this->sums();
  auto n = at::tensor(counts(), at::TensorOptions().dtype(at::kFloat)).to(sums.device());
  std::vector<int64_t> shape(sums.dim(), 1);
  shape[0] = n.size(0);
  return sums.div(n.view(shape));
}

}  // namespace mi
