"""Everything a command will do, decided and checked before anything is written: the settings of every room
(resolve.py), the device, the data group, the (split, selection metric) models, the sessions and their
tensors, the elements of each image, the output folders.

Jobs that read the same sessions from the same CAPS share one pass over the data (the `test` group of
every split and metric, for instance), so each image is loaded and preprocessed once per command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import InterpretConfig, validate
from ..data.caps import Session, find_sessions, load_tensor
from ..data.dataset import SessionDataset
from ..data.elements import layout_for
from ..data.transforms import Preprocess
from ..errors import MapsInterpretError
from ..maps import Maps, open_maps
from ..models import model_file, output_count
from ..models.layers import check_randomisable
from ..settings import DataSettings, EngineSettings, OutputSettings, RunSettings, SanitySettings
from .checks import check_group_by, check_labels, check_model, check_target, empty_group_message, subset_names
from .groups import GroupPlan, definition_for_split, plan_group, resolve_caps
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
    def jobs(self) -> list[Job]:
        return [job for data_pass in self.passes for job in data_pass.jobs]

    def dataset(self, data_pass: DataPass, sessions: list[Session]) -> SessionDataset:
        """`sessions` of a pass as the run reads them: raw tensors when they are preprocessed on the device
        (--preprocess_on; auto: on a GPU), else preprocessed by the readers."""
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
        caps = resolve_caps(maps, definition)
        key = (tuple(sorted((c, str(p.resolve())) for c, p in caps.items())),
               tuple((r["participant_id"], r["session_id"]) for r in definition.rows))
        if key not in passes:
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
    return Plan(maps=maps, device=device, group=group, passes=list(passes.values()),
                settings=resolve(config, engine, device))
