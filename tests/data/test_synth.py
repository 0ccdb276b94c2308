"""The synthetic world: layout, valid names, determinism, and appearance tied to place."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import utm
from PIL import Image

from dist_geo.cli import main as cli_main
from dist_geo.data.groups import build_groups
from dist_geo.data.synth import write_world
from dist_geo.data.synth.render import Lighting, render, sample_lighting, to_uint8
from dist_geo.data.synth.writer import PRESETS, _panorama_crops
from dist_geo.data.synth.world import generate_city, street_segments
from dist_geo.data.vg_format import list_images
from dist_geo.errors import DataError

FOLDERS = ["train", "val/database", "val/queries", "test/database", "test/queries",
           "test/queries_night"]


def test_layout_names_and_lists(tiny_world):
    info = json.loads((tiny_world / "world.json").read_text())
    east = {}
    for folder in FOLDERS:
        records, bad = list_images(tiny_world / folder)  # through <folder>_images_paths.txt
        globbed = sorted(p for p in (tiny_world / folder).rglob("*.jpg"))
        assert [r.path for r in records] == [str(p) for p in globbed] and not bad
        assert len(records) == info["counts"][folder] > 0
        for r in records[:: max(1, len(records) // 50)]:
            assert (r.zone_number, r.zone_letter) == (10, "S")
            e, n, zone, letter = utm.from_latlon(r.lat, r.lon)
            assert (zone, letter) == (10, "S")
            assert abs(e - r.utm_east) < 0.5 and abs(n - r.utm_north) < 0.5
            assert 0 <= r.heading < 360
        east[folder] = (min(r.utm_east for r in records), max(r.utm_east for r in records))
        assert Image.open(records[0].path).size == (48, 48)
    # val and test areas lie east of the train area, apart from each other.
    assert east["train"][1] < east["val/database"][0] - 30
    assert east["val/database"][1] < east["test/database"][0] - 30


def test_tiny_world_has_cosplace_classes(tiny_world):
    records, _ = list_images(tiny_world / "train")
    groups = build_groups(records, M=10, alpha=30, N=5, L=2, min_images_per_class=3)
    assert len(groups) >= 8 and sum(g.num_classes for g in groups) >= 200


def test_queries_have_nearby_database_images(tiny_world):
    db = np.array([(r.utm_east, r.utm_north) for r in list_images(tiny_world / "test/database")[0]])
    for folder in ("test/queries", "test/queries_night"):
        q = np.array([(r.utm_east, r.utm_north) for r in list_images(tiny_world / folder)[0]])
        within = (np.linalg.norm(q[:, None] - db[None], axis=2) < 25).sum(axis=1)
        assert np.median(within) >= 8


def test_deterministic_and_cached(tmp_path):
    sizes = dict(preset="tiny", train_images=30, queries=3, eval_area=60.0, area=60.0)
    a = write_world(tmp_path / "a", seed=3, **sizes)
    b = write_world(tmp_path / "b", seed=3, **sizes)
    c = write_world(tmp_path / "c", seed=4, **sizes)

    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(a) == files(b)
    assert files(a) != files(c)
    stamp = (a / "world.json").stat().st_mtime_ns
    write_world(a, seed=3, **sizes)  # same parameters: nothing to do
    assert (a / "world.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other parameters"):
        write_world(a, seed=5, **sizes)


def test_appearance_depends_on_place_and_heading():
    city = generate_city(np.random.default_rng(1), 6, 6)
    segments = street_segments(city, 1, 5, 1, 5)
    rng = np.random.default_rng(0)
    light = Lighting()

    def view(x, y, h):
        return render(city, x, y, h, 90.0, 48, 48, light)[:24]  # above the horizon

    near, moved, far, turned = [], [], [], []
    for _ in range(20):
        x0, y0, x1, y1 = segments[rng.integers(len(segments))]
        s = rng.uniform(0.1, 0.9)
        x, y, h = x0 + s * (x1 - x0), y0 + s * (y1 - y0), rng.uniform(0, 360)
        base = view(x, y, h)
        step = 2.0 / np.hypot(x1 - x0, y1 - y0)
        near.append(np.abs(base - view(x0 + (s + step) * (x1 - x0), y0 + (s + step) * (y1 - y0), h + 5)).mean())
        fx0, fy0, fx1, fy1 = segments[rng.integers(len(segments))]
        t = rng.uniform(0.1, 0.9)
        far.append(np.abs(base - view(fx0 + t * (fx1 - fx0), fy0 + t * (fy1 - fy0), h)).mean())
        turned.append(np.abs(base - view(x, y, h + 120)).mean())
    assert np.mean(near) < 0.6 * np.mean(far)
    assert np.mean(near) < 0.6 * np.mean(turned)


def test_a_panorama_crop_shows_the_heading_its_name_says():
    """The crop labelled heading h is what a camera at the same place looking at h sees."""
    spec = PRESETS["tiny"]
    city = generate_city(np.random.default_rng(0), 3, 3)
    light = sample_lighting(np.random.default_rng(1), "train")
    x, y = 7.0, 30.0  # on a street
    for heading, crop in _panorama_crops(city, spec, x, y, 100.0, 4, light):
        direct = to_uint8(render(city, x, y, heading, spec.fov, spec.image_size,
                                 spec.image_size, light), light)
        assert np.abs(crop.astype(int) - direct.astype(int)).max() <= 1, heading


@pytest.mark.parametrize("flag, value, message", [
    ("--image-size", "0", "image_size=0"), ("--area", "-5", "area=-5.0")])
def test_sizes_that_are_not_positive_are_refused(tmp_path, capsys, flag, value, message):
    out = tmp_path / "world"
    assert cli_main(["synth", str(out), "--preset", "tiny", flag, value]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dist-geo synth: error: synthetic world: {message} must be a positive number")
    assert not out.exists()


def test_a_killed_writer_leaves_nothing_behind(tmp_path):
    out = tmp_path / "world"
    sizes = dict(preset="tiny", train_images=600, queries=3, area=60.0, eval_area=60.0)
    argv = [f"--{key.replace('_', '-')}={value}" for key, value in sizes.items()]
    writer = subprocess.Popen([sys.executable, "-m", "dist_geo.cli", "synth", str(out), *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = out / f".train.{writer.pid}.tmp"
    deadline = time.monotonic() + 120
    while not any(staging.glob("*/*.jpg")) and time.monotonic() < deadline:
        time.sleep(0.1)
    writer.kill()
    writer.wait()
    assert staging.is_dir()
    write_world(out, **sizes)
    assert not staging.exists() and (out / "world.json").is_file()
    assert not list(out.glob(".*.tmp"))
