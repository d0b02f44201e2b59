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
from .faithfulness import Perturbation, baseline, curve, ranking
from .localisation import localisation

CHUNK = 8  # perturbed copies per forward pass


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


def perturbation(settings: EvaluationSettings) -> Perturbation:
    return Perturbation(steps=settings.steps, replacement=settings.replacement, value=settings.value, chunk=CHUNK)


def evaluate_batch(engine, settings: EvaluationSettings, images: torch.Tensor, maps: torch.Tensor,
                   owners: Sequence, element_ids: Sequence[int], targets: Optional[Sequence[int]],
                   masks: Optional[dict[int, torch.Tensor]], classification: bool = True) -> list[dict]:
    """One row per map of the batch (see the module's docstring); `targets`: each sample's node (target mode
    given), else the engine's fixed node or the predicted class. A regression network has no probability: its
    curves are its outputs only (the probabilities NaN)."""
    mode = engine.settings.target_mode
    device = engine.device
    perturbing = perturbation(settings)
    images = images.to(device)
    if mode == "predicted":
        predicted = engine.outputs(images).argmax(1).tolist()
    rows = []
    for i, (session, element) in enumerate(zip(owners, element_ids)):
        target = (targets[i] if mode == "given" else predicted[i] if mode == "predicted"
                  else engine.settings.target)
        image, map_ = images[i], maps[i].to(device)
        row = {"participant_id": session.participant_id, "session_id": session.session_id, "element": int(element),
               "target": int(target), "probabilities": {}, "outputs": {}}
        generator = torch.Generator().manual_seed(sample_seed(session, element))
        replaced = baseline(image, perturbing)  # once for every curve of the image
        rankings = {}  # a map's ranking serves its deletion and insertion curves (a random one is drawn for each)
        for kind, order, direction in settings.curves:
            name = curve_name(kind, order, direction)
            if order == "random" or (order, direction) not in rankings:
                rankings[order, direction] = ranking(map_, order, direction, generator)
            result = curve(engine.outputs, image, rankings[order, direction], int(target), kind, perturbing,
                           generator, replaced)
            row["probabilities"][name] = (result.probabilities.tolist() if classification
                                          else [math.nan] * len(result.outputs))
            row["outputs"][name] = result.outputs.tolist()
        if masks is not None:
            mask = masks[element].to(device)
            row.update(localisation(map_, mask))
            row["mask_fraction"] = float(mask.float().mean())
        rows.append(row)
    return rows
