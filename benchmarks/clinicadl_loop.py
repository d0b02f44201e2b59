"""Variant (a) of the benchmark: ClinicaDL 1.6.1's `interpret gradients` loop, re-implemented here from its
documented behaviour (facts §4-§7), for side-by-side timing. Not ClinicaDL's code, and without its imports
(~5 s) or its data-group bookkeeping: only what the loop itself does, as it does it:
- the model is built with a dummy forward pass (train mode) to size its first Linear layer;
- weights keep requires_grad=True, so `.backward()` also computes every weight gradient;
- every item resolves its image path with a case-insensitive recursive glob and reads the whole tensor;
- DataLoader(batch_size, shuffle=False, num_workers=n_proc), default collate, no pinned memory;
- each batch's gradient is copied to the CPU and added sample by sample in Python;
- individual maps are saved inside the loop as views of the batch (each file holds the whole batch).
On a GPU, convolutions use torch's default TensorFloat-32 mode, as ClinicaDL does.

    python benchmarks/clinicadl_loop.py MAPS CAPS TSV OUT [--batch_size 2] [-np 2] [--save_individual] [--gpu]
Prints a JSON line with the loop time.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from maps_interpret.models.conv import conv5_blocks


def insensitive_glob(pattern: str) -> list[str]:
    return glob.glob("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in pattern), recursive=True)


class Conv5FC3(nn.Module):
    def __init__(self, input_size, output_size):
        super().__init__()
        self.convolutions = conv5_blocks(input_size)
        flat = self.convolutions(torch.zeros(input_size).unsqueeze(0)).numel()  # the dummy forward pass
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(flat, 1300), nn.ReLU(),
                                nn.Linear(1300, 50), nn.ReLU(), nn.Linear(50, output_size))

    def forward(self, x):
        return self.fc(self.convolutions(x))


class ImageDataset(Dataset):
    def __init__(self, caps: Path, rows: list[dict], pattern: str):
        self.caps, self.rows, self.pattern = caps, rows, pattern.replace(".nii.gz", ".pt")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        path = insensitive_glob(str(self.caps / "subjects" / row["participant_id"] / row["session_id"] / "**" /
                                    self.pattern))[0]
        image = torch.load(path)
        if torch.isnan(image).any():
            image = torch.nan_to_num(image)
        image = (image - image.min()) / (image.max() - image.min())
        return {"image": image, "participant_id": row["participant_id"], "session_id": row["session_id"],
                "image_id": 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("maps", type=Path)
    parser.add_argument("caps", type=Path)
    parser.add_argument("tsv", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("-np", "--n_proc", type=int, default=2)
    parser.add_argument("--save_individual", action="store_true")
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    device = "cuda" if args.gpu else "cpu"

    params = json.loads((args.maps / "maps.json").read_text())
    model = Conv5FC3(params["input_size"], params["output_size"]).to(device)
    state = torch.load(args.maps / "split-0" / "best-loss" / "model.pth.tar", map_location=device)
    model.load_state_dict(state["model"])
    model.eval()
    with args.tsv.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    dataset = ImageDataset(args.caps, rows, params["preprocessing_dict"]["file_type"]["pattern"])
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.n_proc)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    cum_maps = [0]
    for data in loader:
        images = data["image"].to(device)
        images.requires_grad = True
        output = model(images)
        one_hot = torch.zeros_like(output)
        one_hot[:, 0] = 1
        output.backward(gradient=one_hot)
        maps = images.grad.cpu()
        for i in range(len(data["participant_id"])):
            cum_maps[data["image_id"][i]] += maps[i]
            if args.save_individual:
                torch.save(maps[i], args.out / f"{data['participant_id'][i]}_{data['session_id'][i]}_image-0_map.pt")
    for i, mode_map in enumerate(cum_maps):
        mode_map /= len(dataset)
        torch.save(mode_map, args.out / f"mean_image-{i}_map.pt")
    print(json.dumps({"loop_seconds": time.perf_counter() - start, "images": len(dataset)}))


if __name__ == "__main__":
    main()
