"""What a finished pass writes into each interpret-<NAME> folder besides the individual maps: the mean map
of every element (ClinicaDL's files), the statistics and subsets asked for, and the maps of patch, slice and
ROI elements put back into the image grid (space.py), each in the space of its source image."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch

from ..data.transforms import Preprocess
from ..engine.partials import SUBSET_STRIDE, Partial, split_key
from ..errors import MapsInterpretError
from . import space, writers

log = logging.getLogger("maps_interpret")


def reduction(plan) -> Optional[int]:
    return Preprocess.from_params(plan.maps.params).size_reduction_factor


def image_space(plan) -> bool:
    """Whether element maps are also put back into the image grid: patch, slice and roi modes."""
    return plan.maps.mode != "image" and space.supported(plan.passes[0].layout, reduction(plan))


def check_sources(plan) -> None:
    """--save_nifti: say once which sessions have no source NIfTI (their maps get an identity affine), and
    whether the group's images share one space (its mean maps are written in the first one's)."""
    if not plan.output.save_nifti:
        return
    for data_pass in plan.passes:
        if not space.supported(data_pass.layout, reduction(plan)):
            log.warning("size reduction of %s elements: their NIfTI maps keep ClinicaDL's layout and an identity "
                        "affine (no image grid to place them in)", plan.maps.mode)
            return
        missing = [s for s in data_pass.sessions if s.source_image is None]
        if missing:
            log.warning("%d of %d session(s) have no NIfTI image beside their tensor (e.g. %s %s): their NIfTI maps "
                        "are in image voxel coordinates (identity affine), not in the image's space",
                        len(missing), len(data_pass.sessions), missing[0].participant_id, missing[0].session_id)
        reference = group_reference(data_pass)
        others = [s for s in data_pass.sessions if s.source_image is not None
                  and not space.same_space(space.reference(s.source_image, s.grid), reference)]
        if others:
            log.warning("%d session(s) (e.g. %s %s) have another affine than %s: the group's mean maps are written in "
                        "the space of the latter", len(others), others[0].participant_id, others[0].session_id,
                        reference.path)


def group_reference(data_pass) -> space.Reference:
    """The space of a group's mean maps: its first session's source image (identity without one)."""
    first = next((s for s in data_pass.sessions if s.source_image is not None), None)
    return space.reference(first.source_image, first.grid) if first is not None else space.reference(None)


def session_source(plan, session) -> Optional[space.Reference]:
    """--save_nifti: the session's source image (read on the background writer or a worker thread)."""
    return space.reference(session.source_image, session.grid) if plan.output.save_nifti else None


def placement(plan, data_pass, element: Optional[int],
              source: Optional[space.Reference]) -> Optional[space.Placement]:
    """Where a map's NIfTI lies: None without --save_nifti (no source) or without an image grid (ClinicaDL's
    layout, identity affine)."""
    factor = reduction(plan)
    if source is None or not space.supported(data_pass.layout, factor):
        return None
    return space.Placement(data_pass.layout, element, data_pass.image_shape, factor, source)


def write_means(plan, data_pass, job, partial: Partial, folder: Path) -> None:
    """Each element's mean map (ClinicaDL's file name); with --statistics its mean |map| and standard
    deviation; with --group_by the same per subset, named after it; in patch/slice/roi mode each of these
    also as one image-space map. ClinicaDL divides every element's sum by sessions x elements per image
    instead of its count (`--compat clinicadl` reproduces it for the mean)."""
    output, mode = plan.output, plan.maps.mode
    if partial.sums is None:
        raise MapsInterpretError(f"no map was computed for {folder}")
    means = partial.means()
    statistics = {"mean": means}
    if output.clinicadl_means:
        statistics["mean"] = partial.clinicadl_means(len(data_pass.sessions), len(data_pass.element_ids))
        if output.group_by:
            statistics["mean"].update({k: v for k, v in means.items() if k >= SUBSET_STRIDE})
    if output.statistics:
        statistics.update(absmean=partial.absmeans(), std=partial.stds())
        single = [key for key, count in zip(partial.ids, partial.counts) if count == 1]
        if single:
            log.warning("%s: %d element(s) or subset(s) hold a single map: their standard deviation is written as "
                        "0", where(plan, job), len(single))
    flat = [key for key, value in means.items() if not bool(value.abs().amax() > 0)]
    if flat:  # nothing wrong in the run, but a map of zeros shows nothing: say why it may be so
        log.warning("%s: the mean map of %d %s(s) (%s) is 0 everywhere (grad-cam: every channel weight negative, "
                    "the ReLU zeroed it); try another --target_node or --level_grad_cam", where(plan, job), len(flat),
                    mode, ", ".join(_key_name(output, data_pass, key, mode) for key in flat[:4]))
    counts = dict(zip(partial.ids, partial.counts))
    source = group_reference(data_pass) if output.save_nifti else None
    listing = []
    for name, maps in statistics.items():
        for key, value in maps.items():
            subset, element = split_key(key)
            label = _label(output, data_pass, subset)
            stem = f"{name}_{label}{mode}-{element}_map"
            writers.save_map(value.cpu(), folder / stem, output.save_nifti,
                             placement(plan, data_pass, element, source))
            listing.append({"file": f"{stem}.pt", "statistic": name, "subset": label[:-1] or "all",
                            f"{mode}_id": element, "n_maps": counts[key]})
        if image_space(plan):  # no ClinicaDL file: from the true means, whatever --compat divides
            by_label: dict[str, dict[int, torch.Tensor]] = {}
            for key, value in (means if name == "mean" else maps).items():
                subset, element = split_key(key)
                by_label.setdefault(_label(output, data_pass, subset), {})[element] = value.cpu()
            for label, elements in by_label.items():
                writers.save_map(space.to_image(data_pass.layout, elements, data_pass.image_shape),
                                 folder / f"{name}_{label}{space.IMAGE_SPACE}_map", output.save_nifti,
                                 placement(plan, data_pass, None, source))
    if output.statistics or output.group_by:  # how many maps each file summarises (a subset may be small)
        writers.write_tsv(folder / "statistics.tsv", ["file", "statistic", "subset", f"{mode}_id", "n_maps"],
                          listing)
    if output.group_by:  # which map went into which subset (predicted and correct are known only now)
        writers.write_tsv(folder / "subsets.tsv", ["participant_id", "session_id", f"{mode}_id", output.group_by],
                          [{"participant_id": p, "session_id": s, f"{mode}_id": e,
                            output.group_by: subset_name(data_pass, g)} for p, s, e, g in partial.members])


def where(plan, job) -> str:
    """A job's folder as the logs name it."""
    return plan.maps.where(job.split, job.metric, plan.output.data_group, plan.output.name)


def _key_name(output, data_pass, key: int, mode: str) -> str:
    subset, element = split_key(key)
    return f"{_label(output, data_pass, subset)}{mode}-{element}"


def _label(output, data_pass, subset: Optional[int]) -> str:
    """A subset's part of a file name: `<COLUMN>-<value>_`, or nothing for the whole group."""
    return "" if subset is None else f"{output.group_by}-{subset_name(data_pass, subset)}_"


def subset_name(data_pass, index: int) -> str:
    return data_pass.subsets[index] if index < len(data_pass.subsets) else str(index)


def individual_stem(session, mode: str, element) -> str:
    return f"{session.participant_id}_{session.session_id}_{mode}-{element}_map"


def save_individual(plan, data_pass, session, element: int, map_: torch.Tensor, folder: Path) -> None:
    """One session's element map (on the background writer: its source image header is read there)."""
    writers.save_map(map_, folder / individual_stem(session, plan.maps.mode, element), plan.output.save_nifti,
                     placement(plan, data_pass, element, session_source(plan, session)))


def write_individual_image_space(plan, data_pass, folder: Path) -> None:
    """--save_individual in patch/slice/roi mode: each session's element maps, read back from `folder` (where
    this run, an interrupted one, other ranks or the parts wrote them), as one map of its image grid. Sessions
    in parallel threads (reading, summing and saving release the GIL): a full-size session of 129 rgb slices
    costs about 0.25 s of one core."""
    if not (plan.output.save_individual and image_space(plan)):
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(os.sched_getaffinity(0)))) as pool:  # the cores allotted
        # list(): the first error of any session is raised here, after the others have finished.
        list(pool.map(lambda session: _individual_image_space(plan, data_pass, session, folder),
                      data_pass.sessions))


def _individual_image_space(plan, data_pass, session, folder: Path) -> None:
    mode = plan.maps.mode
    elements = {}
    for element in data_pass.element_ids:
        path = folder / f"{individual_stem(session, mode, element)}.pt"
        if not path.is_file():
            raise MapsInterpretError(f"{path} is missing: the individual maps of this run are incomplete (removed "
                                     "during the run?); run again with --overwrite_name")
        elements[element] = torch.load(path, weights_only=True)
    writers.save_map(space.to_image(data_pass.layout, elements, data_pass.image_shape),
                     folder / f"{session.participant_id}_{session.session_id}_{space.IMAGE_SPACE}_map",
                     plan.output.save_nifti, placement(plan, data_pass, None, session_source(plan, session)))
