// Attributions averaged over many copies of each sample (the noise tunnel's noisy copies, integrated
// gradients' path points). The copies of a batch go through the model `chunk` rows at a time (the memory of
// one forward of `chunk` samples), never one Python call per copy; each chunk's attributions are added into
// their sample's row at once.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>

namespace mi {

// Makes the input rows first..first+count-1 of the copies (row r belongs to sample r / copies).
using CopyRows = std::function<at::Tensor(int64_t first, int64_t count)>;
// The attribution of a chunk of rows, given each row's target (the target of the sample it belongs to).
using ChunkAttribution = std::function<at::Tensor(const at::Tensor& rows, const at::Tensor& targets)>;

// Per sample of `batch` (B, ...), the float32 sum of the attributions of its `copies` rows, `chunk` rows per
// call of `attribute` (0: the batch size), shape (B, *the attribution's per-row shape). `deterministic`: each
// sample's rows of a chunk summed by a reduction of their own, not by index_add_ (atomic additions on CUDA,
// in no fixed order); the same maps run after run, rounded otherwise than the default.
at::Tensor copy_sums(const at::Tensor& batch, const at::Tensor& targets, int64_t copies, int64_t chunk,
                     const CopyRows& rows, const ChunkAttribution& attribute, bool deterministic = false);

}  // namespace mi
