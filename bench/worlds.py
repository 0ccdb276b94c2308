"""The synthetic worlds the benchmarks train on, and the recipe both sizes share.

- `cpu`: the demo's world (96 px renders), 64 px training crops and 4 x 100 steps: what 2
  cores train for every trainer and seed of `bench fidelity` within 45 minutes (4 x 125 steps
  took 45.6 minutes, the oracle's test R@1 then 22.0 against the untrained network's 12.6).
- `gpu`: the world of the fidelity issue: rendered at 128 px and upscaled to 512 px (CosPlace's
  SF-XL image size), 512 px crops, tested at native size.
Each is written once under the benchmark's --out folder and reused by later runs.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from dist_geo.data.synth import write_world

# CosPlace's recipe as the fidelity issue ran it (from random initialisation: no weights can
# be downloaded): bench/oracle.py Recipe keys.
RECIPE = {
    "backbone": "resnet18", "fc_output_dim": 512, "train_all_layers": True,
    "M": 20, "alpha": 60, "N": 2, "L": 1, "groups_num": 4, "min_images_per_class": 8,
    "brightness": 0.4, "contrast": 0.4, "saturation": 0.3, "hue": 0.0, "crop_scale_min": 0.5,
    "loss": "cosface", "s": 30.0, "m": 0.4, "lr": 1e-3, "classifiers_lr": 1e-2,
    "batch_size": 32, "epochs_num": 4, "iterations_per_epoch": 175, "eval_image_size": 0,
}
SIZES = {
    "cpu": {"world": {"preset": "demo", "queries": 1000}, "upscale": 0,
            "recipe": {**RECIPE, "image_size": 64, "eval_batch_size": 128,
                       "iterations_per_epoch": 100}},
    "gpu": {"world": {"preset": "demo", "image_size": 128, "queries": 1000}, "upscale": 512,
            "recipe": {**RECIPE, "image_size": 512, "eval_batch_size": 64}},
}


def _upscale(job: tuple[Path, Path, int]) -> None:
    src, dst, size = job
    with Image.open(src) as image:
        image.resize((size, size), Image.BICUBIC).save(dst, quality=95)


def upscale_world(src: Path, dst: Path, size: int) -> Path:
    """A copy of world `src` with every JPEG resized to size x size (bicubic, quality 95), in
    parallel over the machine's cores."""
    if (dst / "world.json").exists():
        return dst
    jobs = []
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".jpg":
            jobs.append((path, target, size))
        elif path.name != "world.json":
            target.write_bytes(path.read_bytes())
    with ProcessPoolExecutor() as pool:
        list(pool.map(_upscale, jobs, chunksize=64))
    (dst / "world.json").write_bytes((src / "world.json").read_bytes())  # last: marks it done
    return dst


def bench_world(out: Path, size: str) -> Path:
    """The world of `size` under `out` (written on first use)."""
    spec = SIZES[size]
    world = write_world(out / "world", seed=0, **spec["world"])
    if spec["upscale"]:
        world = upscale_world(world, out / f"world_{spec['upscale']}px", spec["upscale"])
    return world


def train_overrides(recipe: dict, world: Path, shards: Path) -> list[str]:
    """The recipe as `dist-geo train` config overrides."""
    r = recipe
    return [
        f"data.dataset={world}", f"data.shards={shards}", "data.sampling=class_uniform",
        f"data.M={r['M']}", f"data.alpha={r['alpha']}", f"data.N={r['N']}", f"data.L={r['L']}",
        f"data.groups_num={r['groups_num']}", f"data.min_images_per_class={r['min_images_per_class']}",
        f"data.image_size={r['image_size']}",
        f"data.augment.brightness={r['brightness']}", f"data.augment.contrast={r['contrast']}",
        f"data.augment.saturation={r['saturation']}", f"data.augment.hue={r['hue']}",
        f"data.augment.crop_scale_min={r['crop_scale_min']}", "data.augment.hflip=false",
        "data.augment.night_light=false",
        f"model.backbone={r['backbone']}", f"model.fc_output_dim={r['fc_output_dim']}",
        f"model.train_all_layers={str(r['train_all_layers']).lower()}",
        f"loss.name={r['loss']}", f"loss.s={r['s']}", f"loss.m={r['m']}",
        "optim.name=adam", f"optim.lr={r['lr']}", f"optim.classifiers_lr={r['classifiers_lr']}",
        "sched.name=none", f"train.batch_size={r['batch_size']}",
        f"train.epochs_num={r['epochs_num']}",
        f"train.iterations_per_epoch={r['iterations_per_epoch']}",
        f"eval.batch_size={r['eval_batch_size']}", f"eval.image_size={r['eval_image_size']}",
        "eval.splits=[test]", "tracking.enabled=false",
    ]
