"""Write a synthetic world as a dataset in the VG layout, deterministically from a seed.

The city is laid out west to east as [margin | train | gap | val | gap | test | margin]
blocks, so val and test are other streets and other buildings than train (a model has to
generalise, as on SF-XL's test areas); the margins give the edge streets buildings on both sides.

- train/: panoramas at random points along the train streets (stratified by length so that
  every 10 m cell gets about as many, +-2 m off the centre line),
  each cut into 12 crops 30 degrees apart (as SF-XL's), under random day-to-dusk lighting;
  one sub-folder per 1000 images.
- val|test/database/: panoramas every `db_spacing` metres along the streets, `db_headings`
  crops each, under mild day lighting.
- val|test/queries/: single views from random points (up to 3 m across the street), random
  heading, other lighting, camera roll, horizon tilt and field of view, a car or person in
  front half the time, sensor noise and stronger JPEG.
- test/queries_night/: the same kind of views at night (dark, blue, lit windows and signs).

Each split is written to a temporary folder and renamed when complete; `world.json` (the
parameters and counts) is written last, and a rerun with the same parameters does nothing.
Every image draws from its own `np.random.default_rng([seed, split, kind, index])`, so
files are byte-identical for a seed whatever happens around them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import utm
from PIL import Image

from dist_geo.atomic import atomic_dir, remove_orphans, write_text
from dist_geo.data.synth.effects import add_noise, occlude, roll_crop
from dist_geo.data.synth.render import Lighting, render, sample_lighting, to_uint8
from dist_geo.data.synth.world import City, generate_city, points_along, street_segments
from dist_geo.data.vg_format import format_name, images_paths_file
from dist_geo.errors import DataError
from dist_geo.logs import progress

log = logging.getLogger(__name__)

VERSION = 2  # 2: panorama crops show the heading their names say (1 showed heading + 180)
ZONE_NUMBER, ZONE_LETTER = 10, "S"  # San Francisco
ORIGIN_EAST, ORIGIN_NORTH = 549500.0, 4179500.0  # UTM of the city's south-west corner
TRAIN_HEADINGS = 12


@dataclass(frozen=True)
class WorldSpec:
    """Sizes of a synthetic world; the presets below, each field overridable."""

    image_size: int = 96  # pixels, square
    area: float = 240.0  # side of the (square) training area, metres
    eval_area: float = 180.0  # width of the val area and of the test area, metres (height = area)
    train_images: int = 12000
    db_spacing: float = 8.0  # metres between database panoramas along a street
    db_headings: int = 6  # crops per database panorama
    queries: int = 300  # per query folder (val/queries, test/queries, test/queries_night)
    fov: float = 90.0  # degrees
    block: float = 60.0  # street grid pitch, metres
    street: float = 14.0  # street width, metres

    def __post_init__(self) -> None:
        """Refuse a size that is not positive (a zero image size divided by zero, a negative
        area drew an empty world), before anything is written."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise DataError(f"synthetic world: {f.name}={value!r} must be a positive number")


PRESETS: dict[str, WorldSpec] = {
    "tiny": WorldSpec(image_size=48, area=120.0, eval_area=60.0, train_images=2400,
                      db_spacing=10.0, db_headings=4, queries=24),
    "demo": WorldSpec(),
    "bench": WorldSpec(image_size=128, area=480.0, eval_area=300.0, train_images=60000,
                       db_spacing=8.0, db_headings=8, queries=1000),
}


@dataclass(frozen=True)
class Layout:
    """Block ranges [x0, x1) x [y0, y1) of each region of the city."""

    city_blocks: tuple[int, int]
    regions: dict[str, tuple[int, int, int, int]]


def layout(spec: WorldSpec) -> Layout:
    tx = max(1, round(spec.area / spec.block))
    ex = max(1, round(spec.eval_area / spec.block))
    ty = tx
    regions = {
        "train": (1, 1 + tx, 1, 1 + ty),
        "val": (2 + tx, 2 + tx + ex, 1, 1 + ty),
        "test": (3 + tx + ex, 3 + tx + 2 * ex, 1, 1 + ty),
    }
    return Layout(city_blocks=(4 + tx + 2 * ex, ty + 2), regions=regions)


def _point_on_streets(segments: np.ndarray, rng: np.random.Generator, lateral: float) -> tuple[float, float]:
    """A uniform point along the street centre lines, moved up to `lateral` m across the street."""
    (point,) = _points_on_streets(segments, 1, rng, lateral)
    return tuple(point)


def _points_on_streets(segments: np.ndarray, n: int, rng: np.random.Generator,
                       lateral: float) -> np.ndarray:
    """n points [n, 2] stratified along the street centre lines (one per n-th of their length,
    so every 10 m cell gets about as many), each moved up to `lateral` m across the street."""
    total = np.cumsum(np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1]))[-1]
    arc = (np.arange(n) + rng.random(n)) * total / n
    return points_along(segments, arc, rng.uniform(-lateral, lateral, n))


def _grid_points(segments: np.ndarray, spacing: float) -> np.ndarray:
    """Points every `spacing` metres along the street centre lines, each once."""
    points = []
    for x0, y0, x1, y1 in segments:
        n = int(np.hypot(x1 - x0, y1 - y0) // spacing) + 1
        s = np.arange(n) * spacing / max(np.hypot(x1 - x0, y1 - y0), 1e-9)
        points.append(np.stack([x0 + s * (x1 - x0), y0 + s * (y1 - y0)], axis=1))
    return np.unique(np.round(np.concatenate(points), 2), axis=0)


class _Namer:
    def __init__(self, city_origin: tuple[float, float]):
        self.e0, self.n0 = city_origin

    def __call__(self, x: float, y: float, heading: float, pano_id: str, tile: int,
                 roll: float | None = None, note: str = "") -> str:
        east, north = self.e0 + x, self.n0 + y
        lat, lon = utm.to_latlon(east, north, ZONE_NUMBER, ZONE_LETTER)
        return format_name(east, north, ZONE_NUMBER, ZONE_LETTER, lat, lon, heading,
                           pano_id=pano_id, tile_num=f"{tile:02d}", pitch=0.0, roll=roll,
                           altitude=2.5, note=note)


def _save(img: np.ndarray, path: Path, quality: int) -> None:
    Image.fromarray(img).save(path, format="JPEG", quality=quality)


def _panorama_crops(city: City, spec: WorldSpec, x: float, y: float, first_heading: float,
                    crops: int, light: Lighting) -> list[tuple[float, np.ndarray]]:
    """`crops` views around (x, y), cut from one rendered panorama: (heading, uint8 image)."""
    S = spec.image_size
    width = round(S * 360 / spec.fov)
    # render's 360-degree panorama is centred on its heading: column 0 looks at heading - 180.
    # Centring it on first_heading + 180 - fov/2 puts first_heading - fov/2 in column 0, so the
    # crop starting at column c looks at first_heading + c * 360 / width, the heading it is named.
    pano = to_uint8(render(city, x, y, first_heading + 180.0 - spec.fov / 2, 360.0, width, S,
                           light), light)
    pano = np.concatenate([pano, pano[:, :S]], axis=1)  # wrap around
    out = []
    for j in range(crops):
        start = round(j * width / crops)
        heading = (first_heading + start * 360.0 / width) % 360.0
        out.append((heading, pano[:, start:start + S]))
    return out


def _write_panoramas(city: City, spec: WorldSpec, folder: Path, points: np.ndarray,
                     crops: int, kind: str, seed: tuple[int, ...], namer: _Namer,
                     tag: str, per_folder: int = 0, limit: int | None = None) -> list[str]:
    names: list[str] = []
    for p, (x, y) in enumerate(progress(points, desc=f"{kind} panoramas", unit="pano")):
        rng = np.random.default_rng((*seed, p))
        light = sample_lighting(rng, kind)
        for tile, (heading, img) in enumerate(
                _panorama_crops(city, spec, x, y, rng.uniform(0, 360), crops, light)):
            if limit is not None and len(names) == limit:
                return names
            name = namer(x, y, heading, f"{tag}{p:06d}", tile, note="day")
            if per_folder:
                name = f"{len(names) // per_folder:03d}/{name}"
                (folder / name).parent.mkdir(exist_ok=True)
            _save(img, folder / name, quality=90)
            names.append(name)
    return names


def _write_queries(city: City, spec: WorldSpec, folder: Path, segments: np.ndarray,
                   night: bool, seed: tuple[int, ...], namer: _Namer, tag: str) -> list[str]:
    S = spec.image_size
    big = int(np.ceil(S * 1.3))  # margin so that a rolled image still fills the crop
    names = []
    for q in progress(range(spec.queries), desc="night queries" if night else "queries"):
        rng = np.random.default_rng((*seed, q))
        x, y = _point_on_streets(segments, rng, lateral=3.0)
        heading, roll = rng.uniform(0, 360), rng.uniform(-6, 6)
        light = sample_lighting(rng, "night" if night else "query")
        fov = spec.fov * rng.uniform(0.85, 1.15)
        img = render(city, x, y, heading, fov * big / S, big, big, light,
                     horizon_shift=rng.uniform(-0.08, 0.08) * S)
        if rng.random() < 0.5:
            img = occlude(img, rng, night)
        img = roll_crop(to_uint8(img, light), roll, S)
        img = add_noise(img, rng, rng.uniform(5, 14) if night else rng.uniform(2, 10))
        name = namer(x, y, heading, f"{tag}{q:06d}", 0, roll=roll, note="night" if night else "query")
        _save(img, folder / name, quality=80)
        names.append(name)
    return names


def _write_list(folder: Path, names: list[str]) -> None:
    """`<folder>_images_paths.txt`, paths relative to the folder (CosPlace's convention)."""
    write_text(images_paths_file(folder), "".join(f"{n}\n" for n in sorted(names)))


def _write_split(city: City, spec: WorldSpec, lay: Layout, split: str, tmp: Path, seed: int,
                 namer: _Namer) -> dict[str, int]:
    code = ("train", "val", "test").index(split)
    segments = street_segments(city, *lay.regions[split])
    counts = {}
    if split == "train":
        panos = -(-spec.train_images // TRAIN_HEADINGS)
        points = _points_on_streets(segments, panos, np.random.default_rng((seed, code, 0)), lateral=2.0)
        names = _write_panoramas(city, spec, tmp, points, TRAIN_HEADINGS, "train",
                                 (seed, code, 1), namer, "tr", per_folder=1000,
                                 limit=spec.train_images)
        (tmp / "images_paths.txt").write_text("".join(f"{n}\n" for n in sorted(names)))
        return {"train": len(names)}
    folders = {"database": None, "queries": False} | ({"queries_night": True} if split == "test" else {})
    for kind, (folder, night) in enumerate(folders.items()):
        (tmp / folder).mkdir()
        tag = f"{split[:2]}{folder[0]}{'n' if night else ''}"
        if night is None:
            names = _write_panoramas(city, spec, tmp / folder, _grid_points(segments, spec.db_spacing),
                                     spec.db_headings, "database", (seed, code, 2), namer, tag)
        else:
            names = _write_queries(city, spec, tmp / folder, segments, night,
                                   (seed, code, 3 + kind), namer, tag)
        _write_list(tmp / folder, names)
        counts[f"{split}/{folder}"] = len(names)
    return counts


def _params(seed: int, preset: str, spec: WorldSpec) -> dict:
    return {"version": VERSION, "seed": seed, "preset": preset, **dataclasses.asdict(spec)}


def write_world(out: str | Path, seed: int = 0, preset: str = "demo", **sizes) -> Path:
    """Write (or find already written) the synthetic world `preset` with `sizes` overrides."""
    out = Path(out)
    if preset not in PRESETS:
        raise DataError(f"unknown synthetic world preset '{preset}' (known: {', '.join(PRESETS)})")
    unknown = set(sizes) - {f.name for f in dataclasses.fields(WorldSpec)}
    if unknown:
        raise DataError(f"unknown synthetic world size(s) {', '.join(sorted(unknown))}")
    spec = dataclasses.replace(PRESETS[preset], **{k: v for k, v in sizes.items() if v is not None})
    params = _params(seed, preset, spec)
    world_json, partial = out / "world.json", out / ".world.partial.json"
    if world_json.exists():
        if json.loads(world_json.read_text())["params"] == params:
            log.info("%s: synthetic world already written", out)
            return out
        raise DataError(f"{world_json}: {out} holds a synthetic world with other parameters; "
                        f"write to another folder or delete it")
    if partial.exists() and json.loads(partial.read_text()) != params or \
            not partial.exists() and any((out / s).exists() for s in ("train", "val", "test")):
        raise DataError(f"{out}: holds a dataset that is not this synthetic world; "
                        f"write to another folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps(params))

    lay = layout(spec)
    city = generate_city(np.random.default_rng((seed, 99)), *lay.city_blocks,
                         block=spec.block, street=spec.street)
    namer = _Namer((ORIGIN_EAST, ORIGIN_NORTH))
    counts: dict[str, int] = {}
    for split in ("train", "val", "test"):
        final = out / split
        for orphan in remove_orphans(final):
            log.info("%s: removed %s, left by a writer that was killed", out, orphan.name)
        if final.exists():  # finished by an interrupted earlier run with these parameters
            counts.update(json.loads((final / ".counts.json").read_text()))
            continue
        start = time.perf_counter()
        # A concurrent writer of the same world that finished the split first is kept.
        with atomic_dir(final, replace=False, private=True) as tmp:
            split_counts = _write_split(city, spec, lay, split, tmp, seed, namer)
            (tmp / ".counts.json").write_text(json.dumps(split_counts))
        counts.update(split_counts)
        log.info("%s: %s written in %.1f s (%s)", out, split, time.perf_counter() - start, split_counts)
    train_list = out / "train" / "images_paths.txt"
    if train_list.exists():
        train_list.replace(images_paths_file(out / "train"))

    regions = {
        name: {"utm_east": [ORIGIN_EAST + r[0] * spec.block, ORIGIN_EAST + r[1] * spec.block],
               "utm_north": [ORIGIN_NORTH + r[2] * spec.block, ORIGIN_NORTH + r[3] * spec.block]}
        for name, r in lay.regions.items()
    }
    info = {"params": params, "counts": counts, "utm_zone": f"{ZONE_NUMBER}{ZONE_LETTER}", "regions": regions}
    write_text(world_json, json.dumps(info, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    return out
