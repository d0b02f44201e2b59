"""Synthetic CAPS and MAPS in ClinicaDL's layouts, made with this project's own code: the demo of
`make demo`, test data, and benchmark inputs.

Images: the MNI template on t1-linear's grid, one subject per session, the AD ones with a planted atrophy of
the hippocampi and ventricles (anatomy.py; its mask in DIR/data/planted_atrophy_mask.nii.gz). The MAPS holds a
Conv5_FC3 trained for seconds on them (or random weights).

    python -m maps_interpret.synthetic demo DIR     # DIR/data (CAPS + TSVs) and DIR/maps
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import anatomy
from .synthetic2 import build_output2, training_continues
from .models.conv import conv5_fc3

PATTERN = "*space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz"
PLANTED_ROI = "tpl-MNI152NLin2009cSym_desc-Crop_res-1x1x1_roi-planted_mask.nii.gz"  # the same, as a CAPS mask
PLANTED_MASK = "planted_atrophy_mask.nii.gz"  # in DIR/data: where the AD subjects' atrophy is, on the images' grid
# `make demo`: t1-linear's field of view in 3 mm voxels (a brain a reader recognises, a network trained on it in
# seconds on a CPU), 40 training subjects (20 per split's training, 20 for its validation)
DEMO_SHAPE = (56, 69, 60)
DEMO_TRAIN, DEMO_TEST = 40, 10
DEMO_EPOCHS = 20  # per model: epochs, not seconds, so that the demo is the same on a busy machine (~15 s each)
LABEL_CODE = {"AD": 0, "CN": 1}
MARKER = ".maps-interpret-demo"


@dataclass(frozen=True)
class SessionSpec:
    participant_id: str
    session_id: str
    diagnosis: str


def prepare_data_layout(image: torch.Tensor) -> torch.Tensor:
    """The image with the strides `clinicadl prepare-data` saves (from nibabel's Fortran-ordered arrays: the
    first spatial axis varies fastest), so that the loader meets here what it meets in a real CAPS."""
    flipped = [0, *range(image.dim() - 1, 0, -1)]
    return image.permute(flipped).contiguous().permute(flipped)


def tensor_path(caps: Path, participant: str, session: str) -> Path:
    return (caps / "subjects" / participant / session / "deeplearning_prepare_data" / "image_based" / "t1_linear"
            / f"{participant}_{session}_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.pt")


def nifti_path(caps: Path, participant: str, session: str) -> Path:
    return (caps / "subjects" / participant / session / "t1_linear"
            / f"{participant}_{session}_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz")


def write_caps(caps: Path, sessions: Sequence[SessionSpec], shape: Sequence[int], seed: int,
               nifti: bool = False) -> None:
    """Each session's image tensor as prepare-data writes it; with `nifti`, also the t1-linear NIfTI image it
    would have been made from (same voxels, on t1-linear's grid in MNI mm: `anatomy.grid_affine`)."""
    generator = torch.Generator().manual_seed(seed)
    for spec in sessions:
        path = tensor_path(caps, spec.participant_id, spec.session_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        image = anatomy.subject(shape, spec.diagnosis, generator)
        torch.save(prepare_data_layout(image), path)
        if nifti:
            import nibabel as nib

            source = nifti_path(caps, spec.participant_id, spec.session_id)
            source.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(image[0].numpy(), anatomy.grid_affine(shape)), source)
    (caps / "tensor_extraction").mkdir(parents=True, exist_ok=True)
    (caps / "tensor_extraction" / "extract_image.json").write_text(json.dumps(
        {"preprocessing": "t1-linear", "mode": "image", "use_uncropped_image": False, "prepare_dl": False,
         "extract_json": "extract_image.json",
         "file_type": {"pattern": PATTERN, "description": "T1w Image registered in MNI152NLin2009cSym space "
                       "using t1-linear pipeline and cropped", "needed_pipeline": "t1-linear"}}, indent=4))


def write_tsv(path: Path, sessions: Sequence[SessionSpec], index: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("\t" if index else "") + "participant_id\tsession_id\tcohort\tdiagnosis"
    lines = [header] + [(f"{i}\t" if index else "") + f"{s.participant_id}\t{s.session_id}\tsingle\t{s.diagnosis}"
                        for i, s in enumerate(sessions)]
    path.write_text("\n".join(lines) + "\n")


def image_preprocessing() -> dict:
    return {"preprocessing": "t1-linear", "mode": "image", "use_uncropped_image": False, "prepare_dl": False,
            "extract_json": "extract_image.json",
            "file_type": {"pattern": PATTERN, "description": "T1w Image registered in MNI152NLin2009cSym space",
                          "needed_pipeline": "t1-linear"}}


def maps_parameters(input_size: Sequence[int], caps_directory: str, tsv_path: str, n_splits: int,
                    architecture: str = "Conv5_FC3", preprocessing: Optional[dict] = None) -> dict:
    """maps.json as `clinicadl train classification` writes it (the keys interpret reads, and a few more)."""
    prep = preprocessing or image_preprocessing()
    return {
        "architecture": architecture, "multi_network": False, "dropout": 0.0, "selection_metrics": ["loss", "accuracy"],
        "label": "diagnosis", "label_code": LABEL_CODE, "gpu": False, "n_proc": 1, "batch_size": 2, "seed": 0,
        "multi_cohort": False, "diagnoses": ["AD", "CN"], "normalize": True, "data_augmentation": False,
        "size_reduction": False, "size_reduction_factor": 2, "n_splits": n_splits, "network_task": "classification",
        "caps_directory": caps_directory, "tsv_path": tsv_path, "preprocessing_dict": prep, "mode": prep["mode"],
        "validation": "KFoldSplit" if n_splits > 1 else "SingleSplit", "num_networks": 1,
        "output_size": len(LABEL_CODE), "input_size": list(input_size),
    }


def write_maps(maps: Path, params: dict, splits: dict[int, tuple[list[SessionSpec], list[SessionSpec]]],
               models: dict[tuple[int, str], dict]) -> None:
    """A MAPS folder: maps.json, groups (train+validation.tsv, train/ and validation/ per split), and
    split-<k>/best-<metric>/model.pth.tar for each (split, metric) of `models`."""
    groups = maps / "groups"
    groups.mkdir(parents=True, exist_ok=True)
    (maps / "maps.json").write_text(json.dumps(params, indent=4))
    every = {(s.participant_id, s.session_id): s for train, val in splits.values() for s in train + val}
    (groups / "train+validation.tsv").write_text(
        "participant_id\tsession_id\n" + "".join(f"{p}\t{s}\n" for p, s in every))
    for split, (train, validation) in splits.items():
        for name, sessions in (("train", train), ("validation", validation)):
            folder = groups / name / f"split-{split}"
            write_tsv(folder / "data.tsv", sessions, index=True)
            (folder / "maps.json").write_text(json.dumps(
                {"caps_directory": params["caps_directory"], "multi_cohort": False}, indent=4))
    for (split, metric), checkpoint in models.items():
        folder = maps / f"split-{split}" / f"best-{metric}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, folder / "model.pth.tar")


def train(model: torch.nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
          val_y: torch.Tensor, seconds: float, seed: int, epochs: Optional[int] = None) -> dict[str, dict]:
    """A few seconds of Adam (or exactly `epochs` epochs: the same model on a busy machine); returns ClinicaDL
    checkpoints of the best validation loss and accuracy."""
    torch.manual_seed(seed)
    from .data.transforms import min_max

    train_x = torch.stack([min_max(x) for x in train_x])
    val_x = torch.stack([min_max(x) for x in val_x])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    best: dict[str, tuple[float, dict]] = {}
    deadline, epoch = time.monotonic() + seconds, 0
    while training_continues(epoch, epochs, deadline):
        model.train()
        for start in range(0, len(train_x), 4):
            optimizer.zero_grad()
            loss_fn(model(train_x[start:start + 4]), train_y[start:start + 4]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            out = model(val_x)
            scores = {"loss": float(loss_fn(out, val_y)), "accuracy": -float((out.argmax(1) == val_y).float().mean())}
        for metric, score in scores.items():  # lower is better for both (accuracy negated)
            if metric not in best or score < best[metric][0]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best[metric] = (score, {"model": state, "epoch": epoch, "name": "Conv5_FC3"})
        epoch += 1
    return {metric: checkpoint for metric, (_, checkpoint) in best.items()}


def sessions(prefix: str, n: int, extra_sessions: int = 0) -> list[SessionSpec]:
    """sub-<prefix>01.. alternating AD/CN; the first `extra_sessions` subjects also have ses-M012."""
    out = []
    for i in range(1, n + 1):
        diagnosis = "AD" if i % 2 else "CN"
        out.append(SessionSpec(f"sub-{prefix}{i:02d}", "ses-M000", diagnosis))
        if i <= extra_sessions:
            out.append(SessionSpec(f"sub-{prefix}{i:02d}", "ses-M012", diagnosis))
    return out


def write_masks(caps: Path, shape: Sequence[int], regions: dict[str, tuple[slice, ...]]) -> None:
    """Binary ROI masks where ClinicaDL looks for them (masks/tpl-<template>/, cropped-image names)."""
    import nibabel as nib

    folder = caps / "masks" / "tpl-MNI152NLin2009cSym"
    folder.mkdir(parents=True, exist_ok=True)
    for name, box in regions.items():
        mask = np.zeros(tuple(shape), dtype=np.uint8)
        mask[box] = 1
        nib.save(nib.Nifti1Image(mask, np.eye(4)),
                 folder / f"tpl-MNI152NLin2009cSym_desc-Crop_res-1x1x1_roi-{name}_mask.nii.gz")


def write_planted_mask(path: Path, shape: Sequence[int]) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(anatomy.planted_mask(shape), anatomy.grid_affine(shape)), path)


def write_element_files(caps: Path, sessions_: Sequence[SessionSpec], prep: dict) -> None:
    """What `clinicadl prepare-data <mode> --save_features` writes: one tensor per element, beside the
    image tensors (<mode>_based/ instead of image_based/)."""
    from .data.caps import load_tensor
    from .data.elements import layout_for

    layout = layout_for(prep, caps)
    for spec in sessions_:
        image_path = tensor_path(caps, spec.participant_id, spec.session_id)
        image = load_tensor(image_path)
        for element in layout.element_ids(tuple(image.shape)):
            path = layout.element_file(image_path, element)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(layout.extract(image, element), path)


def build_demo(root: Path, shape: Sequence[int] = (32, 40, 32), n_train: int = 16, n_test: int = 6,
               seconds: float = 3.0, seed: int = 0, trained: bool = True, preprocessing: Optional[dict] = None,
               input_size: Optional[Sequence[int]] = None,
               regions: Optional[dict[str, tuple[slice, ...]]] = None, nifti: bool = True,
               clinicadl2: bool = False, epochs: Optional[int] = None) -> dict[str, Path]:
    """DIR/data/caps (all subjects), DIR/data/test.tsv, DIR/maps (2-fold, both splits trained).

    Other modes: `preprocessing` (a maps.json preprocessing_dict) and the network's `input_size` (one
    element); ROI `regions` become masks; `prepare_dl` writes element files. Only image mode trains.
    `nifti`: the CAPS also holds the source NIfTI images (maps are then written in their space).
    `clinicadl2`: also DIR/clinicadl2, a ClinicaDL 2.0 training output on the same NIfTI images (synthetic2.py).
    `epochs`: train each split that many epochs instead of `seconds` (the same models on a busy machine).
    """
    root = Path(root)
    data, maps = root / "data", root / "maps"
    caps = data / "caps"
    train_sessions = sessions("TR", n_train, extra_sessions=2)
    test_sessions = sessions("TE", n_test, extra_sessions=1)
    write_caps(caps, train_sessions + test_sessions, shape, seed, nifti)
    write_tsv(data / "labels.tsv", train_sessions)
    write_tsv(data / "test.tsv", test_sessions)
    write_planted_mask(data / PLANTED_MASK, shape)
    write_planted_mask(caps / "masks" / "tpl-MNI152NLin2009cSym" / PLANTED_ROI, shape)  # --evaluation_roi planted
    if regions:
        write_masks(caps, shape, regions)
    if preprocessing is not None and preprocessing.get("prepare_dl"):
        write_element_files(caps, train_sessions + test_sessions, preprocessing)
    if preprocessing is not None and trained:
        raise ValueError("only image-mode demos are trained")
    input_size = tuple(input_size) if input_size is not None else (1, *shape)
    splits: dict[int, tuple[list[SessionSpec], list[SessionSpec]]] = {}
    participants = sorted({s.participant_id for s in train_sessions})
    for split in range(2):  # participants alternate AD, CN: pairs of them go to each fold, so both are balanced
        held_out = {p for i, p in enumerate(participants) if (i // 2) % 2 == split}
        splits[split] = ([s for s in train_sessions if s.participant_id not in held_out],
                         [s for s in train_sessions if s.participant_id in held_out])
    models = {}
    from .data.caps import load_tensor

    for split, (train_part, val_part) in splits.items():
        torch.manual_seed(seed + split)
        model = conv5_fc3(input_size, output_size=2, dropout=0.0)
        if trained:
            xs = [torch.stack([load_tensor(tensor_path(caps, s.participant_id, s.session_id)) for s in part])
                  for part in (train_part, val_part)]
            ys = [torch.tensor([LABEL_CODE[s.diagnosis] for s in part]) for part in (train_part, val_part)]
            checkpoints = train(model, xs[0], ys[0], xs[1], ys[1], seconds / 2, seed + split, epochs)
        else:
            state = {k: v.clone() for k, v in model.state_dict().items()}
            checkpoints = {m: {"model": state, "epoch": 0, "name": "Conv5_FC3"} for m in ("loss", "accuracy")}
        for metric, checkpoint in checkpoints.items():
            models[(split, metric)] = checkpoint
    params = maps_parameters(input_size, caps_directory="data/caps", tsv_path="data/split", n_splits=2,
                             preprocessing=preprocessing)
    write_maps(maps, params, splits, models)
    paths = {"root": root, "caps": caps, "maps": maps, "test_tsv": data / "test.tsv", "mask": data / PLANTED_MASK}
    if clinicadl2:
        paths["clinicadl2"] = build_output2(root / "clinicadl2", caps, *splits[0], test_sessions, shape, seconds / 2,
                                            seed, epochs)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maps_interpret.synthetic",
                                     description="Write a synthetic CAPS + MAPS (ClinicaDL layouts).")
    parser.add_argument("what", choices=["demo"])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                        help=f"training epochs of each model (default: {DEMO_EPOCHS})")
    args = parser.parse_args(argv)
    root: Path = args.directory
    if root.exists():
        if not (root / MARKER).exists():
            print(f"{root} exists and was not made by this command: refusing to replace it", file=sys.stderr)
            return 1
        shutil.rmtree(root)  # an earlier demo: start afresh so the demo is the same every time
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by python -m maps_interpret.synthetic demo\n")
    paths = build_demo(root, shape=DEMO_SHAPE, n_train=DEMO_TRAIN, n_test=DEMO_TEST, epochs=args.epochs,
                       clinicadl2=True)
    print(f"demo CAPS: {paths['caps']}\ndemo MAPS: {paths['maps']}\ntest participants: {paths['test_tsv']}\n"
          f"demo ClinicaDL 2.0 output: {paths['clinicadl2']}\nplanted atrophy: {paths['mask']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
