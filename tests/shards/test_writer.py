from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from dist_geo.cli import main as cli_main
from dist_geo.data.groups import build_groups
from dist_geo.data.vg_format import list_images
from dist_geo.errors import DataError
from dist_geo.shards import writer
from dist_geo.shards.manifest import decode_label, read_manifest
from dist_geo.shards.reading import iter_samples
from dist_geo.shards.writer import write_shards


def _samples(out: Path, group: dict) -> list[dict]:
    return [s for shard in group["shards"] for s in iter_samples(out / shard["file"])]


def test_manifest_counts_and_class_uniform_passes(train_root, data_cfg, tmp_path):
    out = tmp_path / "shards"
    manifest = write_shards(train_root, out, data_cfg)
    records, _ = list_images(train_root / "train")
    groups = build_groups(records, 10, 30, 2, 1, 2)
    assert [g["num_classes"] for g in manifest["groups"]] == [g.num_classes for g in groups[:2]]
    assert [g["num_images"] for g in manifest["groups"]] == [g.num_images for g in groups[:2]]
    for entry, group in zip(manifest["groups"], groups):
        samples = _samples(out, entry)
        passes = math.ceil(group.num_images / group.num_classes)
        assert len(samples) == entry["num_samples"] == passes * group.num_classes
        assert all(s["samples"] <= data_cfg.shard_size for s in entry["shards"])
        assert all((out / s["file"]).with_suffix(".idx").exists() for s in entry["shards"])
        # Every class the same number of times, and each pass holds every class once.
        labels = [decode_label(s["cls"]) for s in samples]
        assert set(Counter(labels).values()) == {passes}
        for p in range(passes):
            assert sorted(labels[p * group.num_classes:(p + 1) * group.num_classes]) == list(range(group.num_classes))
        meta = json.loads(samples[0]["json"])
        assert meta["class_index"] == labels[0] and meta["group_index"] == entry["index"]
        assert set(meta) >= {"utm_east", "utm_north", "heading", "path"}
    assert read_manifest(out) == json.loads((out / "manifest.json").read_text())


def test_image_uniform_has_every_image_once(train_root, data_cfg, tmp_path):
    data_cfg.sampling = "image_uniform"
    out = tmp_path / "shards"
    manifest = write_shards(train_root, out, data_cfg)
    for entry in manifest["groups"]:
        paths = [json.loads(s["json"])["path"] for s in _samples(out, entry)]
        assert len(paths) == len(set(paths)) == entry["num_images"]


def test_rerun_skips_finished_shards_and_interrupted_write_leaves_no_shard(
        train_root, data_cfg, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    first = write_shards(train_root, out, data_cfg)
    tars = sorted(out.glob("group_*/*.tar"))
    mtimes = {t: t.stat().st_mtime_ns for t in tars}
    tars[1].unlink()
    (out / "manifest.json").unlink()

    def crash(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(writer.IndexCreator, "create_index", crash)
    with pytest.raises(KeyboardInterrupt):
        write_shards(train_root, out, data_cfg)
    assert not tars[1].exists() and not (out / "manifest.json").exists()
    monkeypatch.undo()

    second = write_shards(train_root, out, data_cfg)
    assert second == first  # same layout and checksums: rewritten shard is byte-identical
    assert all(t.stat().st_mtime_ns == mtimes[t] for t in tars if t != tars[1])
    assert not list(out.rglob("*.tmp*"))  # the interrupted attempt's partial files are gone


def test_other_parameters_are_refused(train_root, data_cfg, tmp_path):
    out = tmp_path / "shards"
    write_shards(train_root, out, data_cfg)
    data_cfg.shard_size = 3
    with pytest.raises(DataError, match="shard_size"):
        write_shards(train_root, out, data_cfg)


def test_too_few_groups_and_bad_images(train_root, data_cfg, tmp_path):
    data_cfg.groups_num = 5
    with pytest.raises(DataError, match="only 2 groups"):
        write_shards(train_root, tmp_path / "a", data_cfg)
    data_cfg.groups_num = 2
    victim = sorted((train_root / "train").iterdir())[0]
    victim.write_bytes(b"not an image")
    with pytest.raises(DataError, match="unreadable image"):
        write_shards(train_root, tmp_path / "b", data_cfg)
    data_cfg.skip_bad = True
    manifest = write_shards(train_root, tmp_path / "c", data_cfg)
    assert [str(victim)] in [g["skipped_images"][:1] for g in manifest["groups"]]


def test_cli_short_overrides(train_root, tmp_path, capsys):
    out = tmp_path / "shards"
    argv = ["shard", str(train_root), str(out), "M=10", "N=2", "L=1", "groups_num=2",
            "min_images_per_class=2", "data.shard_size=4"]
    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["groups"] == 2 and read_manifest(out)["shard_size"] == 4


def test_decompression_bomb_is_refused_then_skipped_on_the_rerun(
        train_root, shard_overrides, tmp_path, bomb_jpeg, capsys):
    victim = sorted((train_root / "train").iterdir())[0]
    victim.write_bytes(bomb_jpeg)
    argv = ["shard", str(train_root), str(tmp_path / "shards"), *shard_overrides]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"dist-geo shard: error: {victim}: refused: its header promises 900000000 "
                   "pixels, more than data.max_image_pixels=89478485")
    assert cli_main(argv + ["--skip-bad"]) == 0  # into the same folder
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    skipped = [p for g in read_manifest(tmp_path / "shards")["groups"] for p in g["skipped_images"]]
    assert set(skipped) == {str(victim)} and summary["skipped"] == len(skipped)  # each time met


def test_a_failed_run_leaves_nothing_that_refuses_the_corrected_one(train_root, data_cfg, tmp_path):
    out = tmp_path / "shards"
    data_cfg.groups_num = 5
    with pytest.raises(DataError, match="only 2 groups"):
        write_shards(train_root, out, data_cfg)
    data_cfg.groups_num = 2  # corrected, into the same folder
    assert len(write_shards(train_root, out, data_cfg)["groups"]) == 2
    data_cfg.shard_size = 3  # finished shards of other parameters are still protected
    with pytest.raises(DataError, match="shard_size"):
        write_shards(train_root, out, data_cfg)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["groups"][0].update(num_classes=2),
     "group 0: num_classes=2 but 4 class ids are listed (edited?); rewrite the shards"),
    (lambda m: m["groups"][1]["shards"][0].pop("sha256"),
     "group 1: shard entry 0 has no sha256 (rewrite the shards)"),
    (lambda m: m["groups"][1]["shards"][0].update(file="../../etc/passwd"),
     "group 1: shard file '../../etc/passwd' lies outside the folder"),
])
def test_an_edited_manifest_is_refused_in_one_line(train_root, data_cfg, tmp_path, capsys, edit,
                                                   message):
    out = tmp_path / "shards"
    manifest = write_shards(train_root, out, data_cfg)
    assert manifest["groups"][0]["num_classes"] == 4
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert cli_main(["shard", "--verify", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dist-geo shard: error: {out / 'manifest.json'}: {message}")
