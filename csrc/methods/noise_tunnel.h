// The noise tunnel: any method averaged over noisy copies of each sample, as Captum's NoiseTunnel wraps any
// attribution (SmoothGrad, Smilkov et al. 2017, is the tunnel over gradients). Not a registered method:
// the engine wraps its method in it when asked (EngineOptions::noise_tunnel).
#pragma once

#include <memory>

#include "methods/method.h"

namespace mi {

// Mean over `n_samples` noisy copies x + N(0, (noise_level * (max x - min x))^2) of `base`'s attribution of
// the copy, `chunk_size` copies per call of `base` (0: the batch size). The noise of sample i comes from a
// generator seeded by (seed, the sample's own seed) only, so a sample's map does not depend on its batch,
// rank or part, or on a resumed run. Parameters: n_samples, noise_level, seed, chunk_size.
// `network`: the engine's (its deterministic flag decides how copies are summed, methods/copies.h).
std::unique_ptr<Method> noise_tunnel(std::unique_ptr<Method> base, const Network& network,
                                     const Parameters& parameters);

}  // namespace mi
