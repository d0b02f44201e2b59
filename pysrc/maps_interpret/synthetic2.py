"""A ClinicaDL 2.0 training output for the demo, laid out as ClinicaDL 2.0.0 writes one (model.json, training/,
test/group-test/; see ../shared/fixtures/clinicadl-2.0.0/README.md): a small 2.0 `CNN` with one logit
(BCEWithLogits, label 1 for AD), trained for a few seconds on the demo's NIfTI images with 2.0's default
intensity transform. Written by our own code, not by ClinicaDL: the real 2.0 outputs are the tests' oracle."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

RESCALE = {"name_": "RescaleIntensity", "masking_method": None, "include": None, "exclude": None, "copy": False,
           "out_min_max": [0.0, 1.0], "percentiles": [0.0, 100.0], "in_min_max": None}
FILE_TYPE = {"suffix": "T1w", "data_type": "t1_linear", "extension": ".nii.*",
             "with_entities": {"space": "MNI152NLin2009cSym", "desc": "Crop", "res": "1x1x1"}, "without_entities": {}}

DATALOADER = {"name_": "DataLoader", "batch_size": 4, "sampling_weights": None, "shuffle": False, "num_workers": 0,
              "pin_memory": False, "drop_last": True, "prefetch_factor": None, "persistent_workers": False,
              "collate_fn": None}


def network_config(shape: Sequence[int]) -> dict:
    return {"name_": "CNN", "in_shape": [1, *shape], "num_outputs": 1,
            "conv_args": {"channels": [4, 8, 8], "kernel_size": 3, "norm": "instance", "act": "prelu",
                          "pooling": [["max", {"kernel_size": 2}]] * 3, "pooling_indices": [0, 1, 2]},
            "mlp_args": {"hidden_dims": [16], "act": "prelu", "norm": "batch"}}


def _dataset(rows: list, caps: str) -> dict:
    data = {column: {str(i): row[column] for i, row in enumerate(rows)} for column in rows[0]} if rows else {}
    data["n_samples"] = {str(i): 1 for i in range(len(rows))}
    return {"name_": "BidsDataset", "data": data,
            "transforms": {"name_": "TransformsHandler", "extraction": {"name_": "Image"}, "image_transforms": [RESCALE],
                           "sample_transforms": [], "augmentations": []},
            "columns": ["label"], "bids": {"name_": "Bids", "path": caps}, "file_type": FILE_TYPE, "masks": None}


def _write_group(folder: Path, rows: list, caps: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(_dataset(rows, caps), indent=4))
    (folder / "dataloader.json").write_text(json.dumps(DATALOADER, indent=4))
    (folder / "data.tsv").write_text("participant_id\tsession_id\n"
                                     + "".join(f"{r['participant_id']}\t{r['session_id']}\n" for r in rows))


def training_continues(epoch: int, epochs: Optional[int], deadline: float) -> bool:
    """The demo models' budget: exactly `epochs` epochs when given (the same models on a busy machine), else at
    least 2 and until the `deadline` (time.monotonic())."""
    if epochs is not None:
        return epoch < epochs
    return epoch < 2 or time.monotonic() < deadline


def build_output2(out: Path, caps: Path, train: list, validation: list, test: list, shape: Sequence[int],
                  seconds: float, seed: int = 0, epochs: Optional[int] = None) -> Path:
    """`train`/`validation`/`test`: SessionSpec lists; `caps` holds their NIfTI images (relative paths are
    written relative to the folder that holds `out`, as the 2.0 fixture's are). Trained for `seconds`, or exactly
    `epochs` epochs."""
    from .data.clinicadl2 import Pipeline2
    from .data.caps2 import image_file
    from .models.clinicadl2 import build_network

    def rows(specs) -> list:
        return [{"participant_id": s.participant_id, "session_id": s.session_id, "diagnosis": s.diagnosis,
                 "label": 1.0 if s.diagnosis == "AD" else 0.0} for s in specs]

    caps_text = str(caps.relative_to(out.parent)) if caps.is_relative_to(out.parent) else str(caps)
    config = network_config(shape)
    (out / "training" / "data").mkdir(parents=True, exist_ok=True)
    (out / "model.json").write_text(json.dumps({"name_": "SupervisedModel", "network": config,
                                                "loss": {"name_": "BCEWithLogitsLoss", "reduction": "mean"},
                                                "label_key": "label"}, indent=4))
    (out / "training" / "data" / "data.tsv").write_text(
        "participant_id\tsession_id\n" + "".join(f"{s.participant_id}\t{s.session_id}\n" for s in train + validation))
    for name, specs in (("train", train), ("validation", validation)):
        _write_group(out / "training" / "data" / name / "split-0", rows(specs), caps_text)
    _write_group(out / "test" / "group-test", rows(test), caps_text)
    # The records 2.0's own reader (clinicadl.io.maps.Maps.read) requires: what this training did.
    records = {"metrics.json": {"name_": "MetricsHandler", "metrics": {"loss": {
                   "name_": "LossMetric", "pred_key": "output", "label_key": "label", "loss_name": "loss",
                   "postprocessing": {"name_": "PostprocessingHandler", "transforms": []}}}},
               "callbacks.json": {"name_": "CallbacksHandler", "callbacks": [
                   {"name_": "ModelCheckpointCallback", "metric": "loss", "epochs": [], "save_last": True,
                    "mode": None}]},
               "training/optimization.json": {"num_epochs": None, "accumulation_steps": 1, "evaluation_interval": 1,
                                              "clip_grad_norm": None, "grad_norm_type": 2.0, "clip_grad_value": None,
                                              "reset_model": True}}
    for name, record in records.items():
        (out / name).write_text(json.dumps(record, indent=4))

    pipeline = Pipeline2.from_transforms(_dataset([], caps_text)["transforms"], "demo")
    def inputs(specs) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([pipeline.image(image_file(caps, s.participant_id, s.session_id, FILE_TYPE)) for s in specs])
        return x, torch.tensor([[1.0 if s.diagnosis == "AD" else 0.0] for s in specs])

    (train_x, train_y), (val_x, val_y) = inputs(train), inputs(validation)
    torch.manual_seed(seed)
    model = build_network(config, "demo")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best, deadline, epoch = None, time.monotonic() + seconds, 0
    models = out / "training" / "split-0" / "models"
    while training_continues(epoch, epochs, deadline):
        model.train()
        for start in range(0, len(train_x) - 1, 4):  # BatchNorm1d needs 2 samples a batch (2.0 drops the last)
            optimizer.zero_grad()
            loss_fn(model(train_x[start:start + 4]), train_y[start:start + 4]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            loss = float(loss_fn(model(val_x), val_y))
        if best is None or loss < best:
            best = loss
            _save(model, models / "best_models" / "best-loss")
        epoch += 1
    _save(model, models / "final")
    return out


def _save(model: torch.nn.Module, folder: Path) -> None:
    """A 2.0 model.pt: the SupervisedModel's bare state_dict, the network's keys prefixed `network.`."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({f"network.{k}": v.detach().clone() for k, v in model.state_dict().items()}, folder / "model.pt")
