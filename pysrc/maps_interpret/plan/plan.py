"""Everything a command will do, decided and checked before anything is written: the settings of every room
(resolve.py), the device, the data group, the (split, selection metric) models, the sessions and their
tensors, the elements of each image, the output folders.

Jobs that read the same sessions from the same CAPS share one pass over the data (the `test` group of
every split and metric, for instance), so each image is loaded and preprocessed once per command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import InterpretConfig, validate
from ..data.caps import Session, find_sessions, load_tensor
from ..data.dataset import SessionDataset
from ..data.elements import find_mask, layout_for
from ..data.transforms import Preprocess
from ..errors import MapsInterpretError
from ..maps import Maps, open_maps
from ..models import model_file, output_count
from ..models.layers import check_randomisable
from ..settings import (DataSettings, EngineSettings, EvaluationSettings, OutputSettings, RunSettings,
                        SanitySettings)
from .checks import check_group_by, check_labels, check_model, check_target, empty_group_message, subset_names
from .groups import GroupPlan, definition_for_split, group_dir, plan_group, resolve_caps
from .resolve import Settings, engine_of, resolve


@dataclass(frozen=True)
class Job:
    split: int
    metric: str
    model_path: Path
    output_dir: Path


@dataclass
class DataPass:
    caps: dict[str, Path]
    sessions: list[Session]
    layout: object  # data.elements.*Layout
    element_ids: list[int]
    jobs: list[Job] = field(default_factory=list)
    subsets: list[str] = field(default_factory=list)  # --group_by: each subset's name (file names), by index
    image_shape: tuple = ()  # (C, D, H, W) of the sessions' image tensors, before elements are cut
    pipeline: object = None  # ClinicaDL 2.0: the group's preprocessing from NIfTI (data/clinicadl2.Pipeline2)
    input_size: tuple = ()  # ClinicaDL 2.0: (C, *spatial) of an element, for networks that do not record it

    @property
    def n_elements(self) -> int:
        return len(self.sessions) * len(self.element_ids)


@dataclass
class Plan:
    maps: Maps
    device: str
    group: GroupPlan
    passes: list[DataPass]
    settings: Settings

    @property
    def engine(self) -> EngineSettings:
        return self.settings.engine

    @property
    def data(self) -> DataSettings:
        return self.settings.data

    @property
    def output(self) -> OutputSettings:
        return self.settings.output

    @property
    def run(self) -> RunSettings:
        return self.settings.run

    @property
    def sanity(self) -> SanitySettings:
        return self.settings.sanity

    @property
    def evaluation(self) -> EvaluationSettings:
        return self.settings.evaluation

    @property
    def jobs(self) -> list[Job]:
        return [job for data_pass in self.passes for job in data_pass.jobs]

    def dataset(self, data_pass: DataPass, sessions: list[Session]) -> SessionDataset:
        """`sessions` of a pass as the run reads them: raw tensors when they are preprocessed on the device
        (--preprocess_on; auto: on a GPU), else preprocessed by the readers."""
        if data_pass.pipeline is not None:  # ClinicaDL 2.0: NIfTI read and transformed as 2.0 does
            from ..data.clinicadl2_extraction import SamplePreprocess

            return SessionDataset(sessions, data_pass.layout, SamplePreprocess(data_pass.pipeline),
                                  data_pass.input_size, data_pass.element_ids, raw=self.data.on_device,
                                  source=data_pass.pipeline)
        return SessionDataset(sessions, data_pass.layout, Preprocess.from_params(self.maps.params),
                              self.maps.input_size, data_pass.element_ids, raw=self.data.on_device)


def select_device(config: InterpretConfig) -> str:
    if not config.gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise MapsInterpretError("no GPU is available: add --no-gpu to run on the CPU")
    return "cuda"


def make_plan(config: InterpretConfig) -> Plan:
    validate(config)
    engine = engine_of(config)
    device = select_device(config)
    maps = open_maps(config.input_maps_directory)
    splits = maps.splits()
    if not splits:
        raise MapsInterpretError(f"{maps.path} has no {maps.split_name}-<k> folder: no model was trained in this MAPS")

    models = [(split, metric) for split in splits for metric in config.selection_metrics]
    for split, metric in models:
        check_model(maps, split, metric, cam=engine.row.export == "cam")
    if config.sanity_check:
        check_randomisable(maps)
    check_target(maps, config, output_count(maps))
    check_group_by(maps, config)
    labelled = config.target_node == "label" or config.group_by == "correct"
    column = config.group_by if config.group_by not in (None, "predicted", "correct") else None
    group = plan_group(maps, config)

    prep = maps.params["preprocessing_dict"]
    passes: dict[tuple, DataPass] = {}
    for split, metric in models:
        output_dir = maps.results_dir(split, metric, config.data_group, config.name)  # checked by the runner
        definition = definition_for_split(maps, group, split)
        if not definition.rows:
            raise MapsInterpretError(empty_group_message(maps, config, split))
        caps = resolve_caps(maps, definition, group.caps_override)
        key = (tuple(sorted((c, str(p.resolve())) for c, p in caps.items())),
               tuple((r["participant_id"], r["session_id"]) for r in definition.rows))
        if maps.generation == 2:
            where = (group_dir(maps, config.data_group, split) if group.new_definition is None
                     else group_dir(maps, "train", split)) / "dataset.json"
            key += (json.dumps(definition.dataset.get("transforms"), sort_keys=True),)
            if key not in passes:
                passes[key] = data_pass2(maps, config, definition, caps["single"], where, labelled, column)
        elif key not in passes:
            sessions = find_sessions(caps, definition.rows, prep, maps.params.get("label") if labelled else None,
                                     column)
            if labelled:
                check_labels(sessions, maps.params["label_code"], maps.params.get("label"))
            layout = layout_for(prep, next(iter(caps.values())))  # roi masks: the group's (first) CAPS
            first = load_tensor(sessions[0].tensor_path, mmap=True)  # ClinicaDL counts elements on it
            passes[key] = DataPass(caps, sessions, layout, layout.element_ids(tuple(first.shape)),
                                   subsets=subset_names(maps, config, sessions, definition),
                                   image_shape=tuple(first.shape))
        passes[key].jobs.append(Job(split, metric, model_file(maps, split, metric), output_dir))
    settings = resolve(config, engine, device)
    if config.evaluation_roi is not None:  # the region's mask in the group's (first) CAPS
        caps = next(iter(passes.values())).caps
        mask = find_mask(next(iter(caps.values())), prep if maps.generation == 1 else {"preprocessing": "t1-linear"},
                         config.evaluation_roi, "--evaluation_roi")
        settings = replace(settings, evaluation=replace(settings.evaluation, mask=mask.resolve()))
    return Plan(maps=maps, device=device, group=group, passes=list(passes.values()), settings=settings)


def data_pass2(maps, config: InterpretConfig, definition, caps: Path, where: Path, labelled: bool,
               column) -> DataPass:
    """A pass over a ClinicaDL 2.0 group: its NIfTI images, read with the transforms of `where` (its dataset.json,
    or the training data's for a group maps-interpret defines), cut by its extraction."""
    from ..data.caps2 import find_sessions2
    from ..data.clinicadl2 import Pipeline2, layout_for_extraction

    transforms = definition.dataset.get("transforms")
    if not isinstance(transforms, dict):
        raise MapsInterpretError(f"{where}: 'transforms' is missing: it does not describe a ClinicaDL 2.0 dataset")
    pipeline = Pipeline2.from_transforms(transforms, str(where))
    layout = layout_for_extraction(transforms.get("extraction") or {"name_": "Image"}, str(where))
    file_type = definition.dataset.get("file_type")
    if not isinstance(file_type, dict):
        raise MapsInterpretError(f"{where}: 'file_type' is missing: it does not say which CAPS files were read")
    sessions = find_sessions2(caps, definition.rows, file_type, maps.params.get("label") if labelled else None,
                              column, grid=pipeline)
    if labelled and maps.params.get("label_code"):
        check_labels(sessions, maps.params["label_code"], maps.params.get("label"))
    import nibabel as nib
    import torch

    # The shapes from the first image's header (as the 1.6.1 path reads a tensor's header): no voxel read twice.
    image_shape = (1, *pipeline.input_grid(nib.load(str(sessions[0].tensor_path)))[1])  # 3D files: one channel
    element_ids = layout.element_ids(image_shape)
    if not element_ids:
        raise MapsInterpretError(f"{sessions[0].tensor_path}: an image of shape {image_shape} gives no "
                                 f"{layout.mode} with the extraction of {where}")
    size = tuple(layout.cut(torch.empty((1, *image_shape), device="meta"))[0].shape)
    if maps.input_size and size != maps.input_size:
        raise MapsInterpretError(f"{sessions[0].tensor_path}: after the transforms of {where} an element has shape "
                                 f"{size}, but the network was built for {maps.input_size} (model.json in_shape)")
    return DataPass({"single": caps}, sessions, layout, element_ids,
                    subsets=subset_names(maps, config, sessions, definition), image_shape=image_shape,
                    pipeline=pipeline, input_size=size)
