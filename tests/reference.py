"""Pure-PyTorch twins of what the C++ core computes. Tests compare the engine against these; they are
written for clarity, as ClinicaDL's procedure reads, not for speed."""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import torch
from torch import nn


def reference_gradients(model: nn.Module, batch: torch.Tensor, target) -> torch.Tensor:
    """ClinicaDL's VanillaBackProp: x.grad after output.backward(one_hot at `target`); `target` an output node,
    or one node per sample."""
    x = batch.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        output = model(x)
        one_hot = torch.zeros_like(output)
        if isinstance(target, int):
            one_hot[:, target] = 1
        else:
            one_hot[torch.arange(len(output)), torch.as_tensor(list(target))] = 1
        output.backward(one_hot)
    return x.grad.detach().float()


def reference_grad_cam(model: nn.Module, batch: torch.Tensor, target: int, level: Optional[int] = None,
                       variant: str = "published") -> torch.Tensor:
    """Grad-CAM written out. "clinicadl" follows ClinicaDL 1.6.1's GradCam step by step (gradients averaged
    over dims [2, 3] only, mean over channels, no ReLU, align_corners=True); "published" is Selvaraju et
    al. (mean over every spatial axis, weighted sum, ReLU), upsampled with align_corners=False; "plusplus" is
    Grad-CAM++ (the channel weights from alpha-weighted positive gradients), upsampled as "published"."""
    layers = list(model.convolutions.children())
    cut = len(layers) if level is None or level >= len(layers) else level
    with torch.no_grad():
        features = nn.Sequential(*layers[:cut])(batch)
    features = features.detach().requires_grad_(True)
    with torch.enable_grad():
        output = model.fc(nn.Sequential(*layers[cut:])(features))
        one_hot = torch.zeros_like(output)
        one_hot[:, target] = 1
        output.backward(one_hot)
    grads = features.grad
    features = features.detach()
    mode = "trilinear" if batch.dim() == 5 else "bilinear"
    if variant == "clinicadl":
        weights = torch.mean(grads, dim=[2, 3]).unsqueeze(2).unsqueeze(3)
        cam = torch.mean(features * weights, dim=1).unsqueeze(1)
        return nn.Upsample(batch.shape[2:], mode=mode, align_corners=True)(cam)
    axes = tuple(range(2, grads.dim()))
    if variant == "plusplus":  # Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19): alpha-weighted positive gradients
        alpha = grads ** 2 / (2 * grads ** 2 + features.sum(dim=axes, keepdim=True) * grads ** 3 + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = (torch.relu(grads) * alpha).sum(dim=axes, keepdim=True)
    else:
        weights = grads.mean(dim=axes, keepdim=True)
    cam = torch.relu((features * weights).sum(dim=1, keepdim=True))
    return nn.functional.interpolate(cam, size=batch.shape[2:], mode=mode, align_corners=False)


def reference_input_x_gradient(model: nn.Module, batch: torch.Tensor, targets) -> torch.Tensor:
    """The input times its gradient (Shrikumar et al. 2016)."""
    return reference_gradients(model, batch, targets) * batch.float()


def reference_smoothgrad(model: nn.Module, batch: torch.Tensor, targets, noises: Sequence[torch.Tensor],
                         noise_level: float) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017), one noisy copy after another: the mean gradient at x + sigma * n for
    each standard normal `noises[k]` (B, ...), sigma = noise_level * (max - min) of each sample."""
    flat = batch.flatten(1)
    sigma = (flat.amax(1) - flat.amin(1)) * noise_level
    total = torch.zeros_like(batch, dtype=torch.float32)
    for noise in noises:
        total += reference_gradients(model, batch + noise * sigma.view(-1, *([1] * (batch.dim() - 1))), targets)
    return total / len(noises)


def reference_integrated_gradients(model: nn.Module, batch: torch.Tensor, targets, steps: int,
                                   baseline: float = 0.0) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017), one step after another, midpoint rule:
    (x - b) * mean_k grad f(b + (k + 0.5) / steps * (x - b))."""
    x = batch.float()
    total = torch.zeros_like(x)
    for k in range(steps):
        total += reference_gradients(model, baseline + (k + 0.5) / steps * (x - baseline), targets)
    return total / steps * (x - baseline)


class ReferenceEngine:
    """Same interface as `engine.Engine`, in Python: running float32 sums per element id."""

    def __init__(self, model: nn.Module, *, device: str = "cpu", method: str = "gradients", target: int = 0,
                 amp: Optional[torch.dtype] = None, level: Optional[int] = None, cam_variant: str = "published"):
        if method not in ("gradients", "grad-cam"):
            raise ValueError(f"unknown method {method}")
        self.method, self.level, self.cam_variant = method, level, cam_variant
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.target = target
        self.amp = amp
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}

    def accumulate(self, batch: torch.Tensor, element_ids: Sequence[int],
                   return_maps: bool = False) -> Optional[torch.Tensor]:
        x = batch.to(self.device, torch.float32)
        with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            if self.method == "grad-cam":
                maps = reference_grad_cam(self.model, x, self.target, self.level, self.cam_variant)
            else:
                maps = reference_gradients(self.model, x, self.target)
        for map_, element in zip(maps, element_ids):
            element = int(element)
            if element not in self._sums:
                self._sums[element] = torch.zeros_like(map_)
                self._counts[element] = 0
            self._sums[element] += map_
            self._counts[element] += 1
        return maps if return_maps else None

    def sums(self) -> dict[int, torch.Tensor]:
        return dict(sorted(self._sums.items()))

    def counts(self) -> dict[int, int]:
        return dict(sorted(self._counts.items()))

    def means(self) -> dict[int, torch.Tensor]:
        return {k: s / self._counts[k] for k, s in sorted(self._sums.items())}


def reference_occlusion(model: nn.Module, batch: torch.Tensor, targets, size: int, stride: int,
                        baseline: float = 0.0) -> torch.Tensor:
    """Occlusion as Captum defines it, one patch and one forward pass at a time: a patch of `size` voxels along
    each spatial axis (every channel) at 0, stride, 2 stride, ... until it reaches the last voxel (cut at the
    border) takes `baseline`; each voxel gets the mean of f(x) - f(occluded x) over the patches covering it."""
    targets = [targets] * len(batch) if isinstance(targets, int) else list(targets)
    spatial = batch.shape[2:]
    starts = []
    for n in spatial:  # patches along the axis until one covers its last voxel
        axis = [0]
        while axis[-1] + size < n:
            axis.append(axis[-1] + stride)
        starts.append(axis)
    maps = torch.zeros(batch.shape, dtype=torch.float64)
    covered = torch.zeros(spatial, dtype=torch.float64)
    with torch.no_grad():
        reference = model(batch).double()
        for corner in itertools.product(*starts):
            window = tuple(slice(c, min(c + size, n)) for c, n in zip(corner, spatial))
            occluded = batch.clone()
            occluded[(slice(None), slice(None), *window)] = baseline
            drop = reference - model(occluded).double()
            for i, target in enumerate(targets):
                maps[(i, slice(None), *window)] += drop[i, target]
            covered[window] += 1
    return (maps / covered).float()


def reference_lrp(model: nn.Module, batch: torch.Tensor, target: int,
                  composite: str = "epsilon-plus-flat") -> torch.Tensor:
    """LRP as the rewritten network's input gradient, in eager PyTorch (models/lrp.py; its rules against Zennit's
    and tests/reference_lrp.py's: tests/test_lrp.py)."""
    from maps_interpret.models.lrp import lrp_network

    x = batch.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        output = lrp_network(model, composite)(x)
        output.backward(torch.eye(output.shape[1])[[target] * len(batch)])
    return x.grad.detach()
