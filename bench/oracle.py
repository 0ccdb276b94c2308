"""The oracle: CosPlace's training method as one plain, single-process PyTorch loop.

`dist-geo bench fidelity` trains this beside `dist-geo train` on the same data, recipe and
budget; the trainer is right when it learns what this learns. To be an independent witness it
shares no code with the production path except the network definition
(`dist_geo.model.network.GeoLocalizationNet`): its own file-name parsing, groups, sampling,
augmentation, heads, loss, optimizers, schedule, evaluation and model selection, each written
the way the published reference code (gmberton/CosPlace: train.py, datasets/train_dataset.py,
augmentations.py, cosface_loss.py, test.py) does it:

- groups: every image under train/ (sorted paths), class = (east // M * M, north // M * M,
  heading // alpha * alpha), group = ((e mod M*N) // M, (n mod M*N) // M, (h mod alpha*L) //
  alpha) of the class; classes with fewer than `min_images_per_class` images dropped; groups in
  the order their first image is met;
- class-uniform sampling: an item is a class, its image a random one of that class; a
  DataLoader with shuffle=True and drop_last=True over the classes, restarted when exhausted;
- augmentation on the decoded float image: ColorJitter, then RandomResizedCrop (antialiased),
  then ImageNet normalisation (torchvision transforms.v2);
- one margin head per group (a plain dense [classes, dim] weight, xavier-uniform), softmax
  cross-entropy averaged over the batch; Adam on the whole network (lr), one Adam per head
  (classifiers_lr); epoch k trains group k mod groups_num, iterations_per_epoch batches;
- after every epoch, recall on val; the best network by val recall@1 (strictly better) is
  tested at the end; recall@N over all queries, positives within 25 m, exact nearest
  neighbours of L2-normalised descriptors.

    python bench/oracle.py --dataset runs/world --out runs/oracle.json [key=value ...]

prints (and writes) JSON: per-epoch mean losses, val recalls, the best epoch, test recalls.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from dist_geo.model.network import GeoLocalizationNet

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Recipe:
    """What one training run does; the fields are the knobs CosPlace's parser has."""

    backbone: str = "resnet18"
    fc_output_dim: int = 512
    train_all_layers: bool = False
    M: int = 10
    alpha: int = 30
    N: int = 5
    L: int = 2
    groups_num: int = 8
    min_images_per_class: int = 10
    image_size: int = 512
    brightness: float = 0.7
    contrast: float = 0.7
    saturation: float = 0.7
    hue: float = 0.5
    crop_scale_min: float = 0.5
    loss: str = "cosface"
    s: float = 30.0
    m: float = 0.4
    lr: float = 1e-5
    classifiers_lr: float = 1e-2
    batch_size: int = 32
    epochs_num: int = 50
    iterations_per_epoch: int = 10000
    eval_batch_size: int = 64
    eval_image_size: int = 0  # 0: test images at their native size
    positive_dist_threshold: float = 25.0
    recall_values: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    num_workers: int = 0
    precision: str = "fp32"  # fp16: CosPlace's --use_amp16 (CUDA autocast + GradScaler)


# ---------------------------------------------------------------- file names, groups
def utm_and_heading(path: str) -> tuple[float, float, float]:
    """(UTM east, UTM north, heading) from a VG file name: fields 1, 2 and 9 between '@'."""
    fields_ = Path(path).name.split("@")
    return float(fields_[1]), float(fields_[2]), float(fields_[9])


def build_groups(train_dir: Path, r: Recipe) -> list[list[list[str]]]:
    """groups[g][c] = the image paths of class c of group g."""
    paths = sorted(str(p) for p in train_dir.rglob("*.jpg"))
    images_per_class: dict[tuple, list[str]] = defaultdict(list)
    group_of_class: dict[tuple, tuple] = {}
    for path in paths:
        east, north, heading = utm_and_heading(path)
        cls = (int(east // r.M * r.M), int(north // r.M * r.M), int(heading // r.alpha * r.alpha))
        images_per_class[cls].append(path)
        group_of_class[cls] = (cls[0] % (r.M * r.N) // r.M, cls[1] % (r.M * r.N) // r.M,
                               cls[2] % (r.alpha * r.L) // r.alpha)
    classes_per_group: dict[tuple, list[tuple]] = {}
    for cls, images in images_per_class.items():  # dicts keep the order first met
        if len(images) >= r.min_images_per_class:
            classes_per_group.setdefault(group_of_class[cls], []).append(cls)
    groups = [[images_per_class[c] for c in classes] for classes in classes_per_group.values()]
    if len(groups) < r.groups_num:
        raise SystemExit(f"{train_dir}: {len(groups)} groups, fewer than groups_num={r.groups_num}")
    return groups[: r.groups_num]


def augmentation(r: Recipe) -> v2.Compose:
    return v2.Compose([
        v2.ToDtype(torch.float32, scale=True),
        v2.ColorJitter(brightness=r.brightness, contrast=r.contrast, saturation=r.saturation,
                       hue=r.hue),
        v2.RandomResizedCrop([r.image_size, r.image_size], scale=[r.crop_scale_min, 1],
                             antialias=True),
        v2.Normalize(MEAN, STD),
    ])


class ClassUniform(Dataset):
    """Item c is a random image of class c, augmented (CosPlace's TrainDataset)."""

    def __init__(self, classes: list[list[str]], transform: v2.Compose):
        self.classes, self.transform = classes, transform

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, c: int) -> tuple[torch.Tensor, int]:
        image = decode_image(random.choice(self.classes[c]), mode=ImageReadMode.RGB)
        return self.transform(image), c


def endless(loader: DataLoader):
    while True:
        yield from loader


# ---------------------------------------------------------------- heads
class MarginHead(nn.Module):
    """One group's classifier: logits with the large margin on the target class."""

    def __init__(self, dim: int, classes: int, r: Recipe):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.kind, self.s, self.m = r.loss, r.s, r.m

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(x.float()), F.normalize(self.weight.float()))
        target = F.one_hot(labels, cos.shape[1]).bool()
        if self.kind == "cosface":  # s (cos - m) on the target
            return self.s * (cos - self.m * target)
        theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
        if self.kind == "arcface":  # s cos(theta + m), linear beyond theta + m = pi
            margin = torch.where(theta + self.m <= math.pi, torch.cos(theta + self.m),
                                 cos - self.m * math.sin(self.m))
        elif self.kind == "sphereface":  # s psi(theta), psi = (-1)^k cos(m theta) - 2k
            k = torch.floor(self.m * theta / math.pi).detach()
            margin = (1 - 2 * (k % 2)) * torch.cos(self.m * theta) - 2 * k
        else:
            raise SystemExit(f"unknown loss {self.kind}")
        return self.s * torch.where(target, margin, cos)


# ---------------------------------------------------------------- one step
def train_step(model: nn.Module, head: MarginHead, model_optimizer: torch.optim.Optimizer,
               head_optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """CosPlace's iteration: zero grads, forward, cross-entropy, backward, both optimizers step.
    Returns the loss (a tensor, so the caller decides when to synchronise)."""
    model_optimizer.zero_grad()
    head_optimizer.zero_grad()
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=scaler is not None):
        loss = F.cross_entropy(head(model(images), labels), labels)
    if scaler is None:
        loss.backward()
        model_optimizer.step()
        head_optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(model_optimizer)
        scaler.step(head_optimizer)
        scaler.update()
    return loss.detach()


# ---------------------------------------------------------------- evaluation
class Images(Dataset):
    def __init__(self, paths: list[str], size: int):
        self.paths = paths
        self.transform = v2.Compose([
            *([v2.Resize(size, antialias=True)] if size else []),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(decode_image(self.paths[i], mode=ImageReadMode.RGB))


@torch.no_grad()
def descriptors(model: nn.Module, paths: list[str], r: Recipe, device: torch.device) -> torch.Tensor:
    loader = DataLoader(Images(paths, r.eval_image_size), batch_size=r.eval_batch_size,
                        num_workers=r.num_workers)
    return torch.cat([model(images.to(device)).float().cpu() for images in loader])


def recalls(model: nn.Module, root: Path, split: str, r: Recipe, device: torch.device
            ) -> dict[str, float]:
    """Recall@N (%) on <root>/<split>/{database,queries}; split "test-night" reads
    test/queries_night."""
    folder, queries = ("test", "queries_night") if split == "test-night" else (split, "queries")
    db_paths = sorted(str(p) for p in (root / folder / "database").glob("*.jpg"))
    q_paths = sorted(str(p) for p in (root / folder / queries).glob("*.jpg"))
    was_training = model.training
    model.eval()
    db, q = descriptors(model, db_paths, r, device), descriptors(model, q_paths, r, device)
    model.train(was_training)
    k = max(r.recall_values)
    predictions = (q @ db.T).topk(min(k, len(db_paths)), dim=1).indices.numpy()
    db_utm = np.array([utm_and_heading(p)[:2] for p in db_paths])
    q_utm = np.array([utm_and_heading(p)[:2] for p in q_paths])
    positives = NearestNeighbors().fit(db_utm).radius_neighbors(
        q_utm, radius=r.positive_dist_threshold, return_distance=False)
    found = np.zeros(len(r.recall_values))
    for preds, pos in zip(predictions, positives):
        for i, n in enumerate(r.recall_values):
            if np.isin(preds[:n], pos).any():
                found[i:] += 1
                break
    return {f"R@{n}": 100.0 * f / len(q_paths) for n, f in zip(r.recall_values, found)}


# ---------------------------------------------------------------- the run
def train(dataset: Path, r: Recipe, seed: int = 0, device: str = "cpu",
          test_splits: tuple[str, ...] = ("test",)) -> dict:
    """Train as CosPlace's train.py does and test the best model; returns the figures."""
    started = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    groups = build_groups(dataset / "train", r)
    model = GeoLocalizationNet(r.backbone, r.fc_output_dim, r.train_all_layers).to(dev).train()
    model_optimizer = torch.optim.Adam(model.parameters(), lr=r.lr)
    heads = [MarginHead(r.fc_output_dim, len(g), r) for g in groups]
    head_optimizers = [torch.optim.Adam(h.parameters(), lr=r.classifiers_lr) for h in heads]
    scaler = torch.amp.GradScaler(device) if r.precision == "fp16" else None
    transform = augmentation(r)
    best_recall, best_epoch, best_state = -1.0, -1, None
    epochs = []
    for epoch in range(r.epochs_num):
        g = epoch % r.groups_num
        head = heads[g].to(dev)
        batches = endless(DataLoader(
            ClassUniform(groups[g], transform), batch_size=r.batch_size, shuffle=True,
            drop_last=True, num_workers=r.num_workers, pin_memory=dev.type == "cuda"))
        losses = []
        for _ in range(r.iterations_per_epoch):
            images, labels = next(batches)
            losses.append(train_step(model, head, model_optimizer, head_optimizers[g],
                                     images.to(dev), labels.to(dev), scaler))
        heads[g] = head.cpu()
        val = recalls(model, dataset, "val", r, dev)
        if val["R@1"] > best_recall:
            best_recall, best_epoch = val["R@1"], epoch
            best_state = copy.deepcopy(model.state_dict())
        epochs.append({"epoch": epoch, "group": g, "loss": torch.stack(losses).mean().item(),
                       **{f"val_{k}": v for k, v in val.items()}})
        print(json.dumps(epochs[-1]), flush=True)
    if best_state is not None:  # epochs_num=0 tests the untrained network
        model.load_state_dict(best_state)
    test = {split: recalls(model, dataset, split, r, dev) for split in test_splits}
    return {"trainer": "oracle", "seed": seed, "recipe": asdict(r), "epochs": epochs,
            "best_epoch": best_epoch, "test": test, "classes_per_group": [len(g) for g in groups],
            "time_s": round(time.perf_counter() - started, 1)}


def parse_recipe(overrides: list[str]) -> Recipe:
    """`key=value` pairs (JSON values, else strings) over the defaults (CosPlace's)."""
    types = {f.name: f.type for f in fields(Recipe)}
    values = {}
    for text in overrides:
        key, _, raw = text.partition("=")
        if key not in types:
            raise SystemExit(f"unknown recipe key '{key}' (known: {', '.join(types)})")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return Recipe(**values)


def main() -> None:
    parser = argparse.ArgumentParser(prog="dist-geo bench oracle",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    result = train(args.dataset, parse_recipe(args.overrides), args.seed, args.device)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
