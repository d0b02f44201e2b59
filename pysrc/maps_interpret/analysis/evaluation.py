"""--evaluate: each map measured as the run computes it (runner/passes.py), while its image is still on the
device. Faithfulness (faithfulness.py): the deletion and insertion curves of every order asked for, their
perturbed copies through the engine's forward pass (`Engine.outputs`, forward only, in chunks). Localisation
(localisation.py): with --evaluation_mask, the map against the mask cut like the images.

Each map gives one row (a dict: who, the target node, every curve's probabilities and outputs, the measures),
kept in the model's partial results (engine/partials.py): checkpointed with the sums, merged over ranks and parts
in their order, so --continue, torchrun and --num_parts give the rows a single run gives. The random order and
ROAD's noise draw from a generator seeded by the session and element only (`sample_seed`): the same curves
whatever the batch, rank or part.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..errors import MapsInterpretError
from ..interpreter import sample_seed
from ..settings import EvaluationSettings, curve_name
from .faithfulness import Perturbation, curves, ranking
from .localisation import localisation

# Perturbed copies per forward pass: a GPU fills up with 8; a CPU runs a full-size volume as fast one or two at a
# time as eight (measured: benchmarks/evaluation.py --chunk) with a quarter of the memory.
CHUNK = {"cpu": 2}
DEFAULT_CHUNK = 8


def chunk_for(device) -> int:
    return CHUNK.get(torch.device(device).type, DEFAULT_CHUNK)


def element_masks(plan, data_pass) -> Optional[dict[int, torch.Tensor]]:
    """--evaluation_mask on each element's voxel grid (bool, spatial; the image's own in image mode, size
    reduction applied), or None without one. The mask must lie on the images' grid (the shape of their tensors)."""
    settings: EvaluationSettings = plan.evaluation
    if settings.mask is None:
        return None
    import nibabel as nib
    import numpy as np

    from ..data.transforms import Preprocess, size_reduction

    try:
        volume = np.asarray(nib.load(str(settings.mask)).dataobj)
    except Exception as error:  # nibabel reports unreadable files in many exception types
        raise MapsInterpretError(f"--evaluation_mask {settings.mask}: cannot read it as NIfTI ({error})") from None
    grid = tuple(data_pass.image_shape[1:])
    volume = np.squeeze(volume)
    if volume.shape != grid:
        raise MapsInterpretError(f"--evaluation_mask {settings.mask} has shape {volume.shape}, the images {grid}: "
                                 "resample it onto the images' grid (e.g. nilearn.image.resample_to_img with "
                                 "interpolation='nearest')")
    image = torch.from_numpy((volume > 0).astype(np.float32)).unsqueeze(0)
    layout, masks = data_pass.layout, {}
    factor = Preprocess.from_params(plan.maps.params).size_reduction_factor if data_pass.pipeline is None else None
    for element in data_pass.element_ids:
        cut = layout.extract(image, element) if plan.maps.mode != "image" else image
        if factor is not None:
            cut = size_reduction(cut, factor)
        masks[element] = cut.amax(0) > 0  # channels of one voxel (rgb slices) are one voxel
    if not any(bool(m.any()) for m in masks.values()):
        raise MapsInterpretError(f"--evaluation_mask {settings.mask} is empty where the network looks: no voxel of "
                                 "it lies in any element")
    return masks


def perturbation(settings: EvaluationSettings, device) -> Perturbation:
    return Perturbation(steps=settings.steps, replacement=settings.replacement, value=settings.value,
                        chunk=chunk_for(device))


def evaluate_batch(engine, settings: EvaluationSettings, images: torch.Tensor, maps: torch.Tensor,
                   owners: Sequence, element_ids: Sequence[int], targets: Optional[Sequence[int]],
                   masks: Optional[dict[int, torch.Tensor]], classification: bool = True) -> list[dict]:
    """One row per map of the batch (see the module's docstring); `targets`: each sample's node (target mode
    given), else the engine's fixed node or the predicted class. A regression network has no probability: its
    curves are its outputs only (the probabilities NaN)."""
    mode = engine.settings.target_mode
    device = engine.device
    perturbing = perturbation(settings, device)
    images = images.to(device)
    intact = engine.outputs(images).detach()  # every curve's first deletion step, the whole batch at once
    rows = []
    for i, (session, element) in enumerate(zip(owners, element_ids)):
        target = (targets[i] if mode == "given" else int(intact[i].argmax()) if mode == "predicted"
                  else engine.settings.target)
        image, map_ = images[i], maps[i].to(device)
        row = {"participant_id": session.participant_id, "session_id": session.session_id, "element": int(element),
               "target": int(target), "probabilities": {}, "outputs": {}}
        generator = torch.Generator().manual_seed(sample_seed(session, element))
        positions = {order: ranking(map_, order, "morf", generator) for order in settings.orders}
        results = curves(engine.outputs, image, positions, int(target), settings.curves, perturbing, generator,
                         intact=intact[i])
        for (kind, order, direction), result in results.items():
            name = curve_name(kind, order, direction)
            row["probabilities"][name] = (result.probabilities.tolist() if classification
                                          else [math.nan] * len(result.outputs))
            row["outputs"][name] = result.outputs.tolist()
        if masks is not None:
            mask = masks[element].to(device)
            row.update(localisation(map_, mask))
            row["mask_fraction"] = float(mask.float().mean())
        rows.append(row)
    return rows
