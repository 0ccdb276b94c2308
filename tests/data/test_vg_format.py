"""Parsing and listing of VG-format image names."""
import math
from pathlib import Path

import pytest

from dist_geo.data.vg_format import (
    _file_name, _joined, format_name, images_paths_file, list_images, parse_name,
)
from dist_geo.errors import DataError

SFXL = "@0543256.96@4178906.70@10@S@037.75643@-122.43472@0001000000@@0@@@@201311@@.jpg"
PITTS = "@0584164.29@4477147.77@17@T@040.44537@-079.99862@000000@00@@@@@@pitch1_yaw1@.jpg"


def test_parse_real_dataset_names():
    r = parse_name(f"/data/sf_xl/train/{SFXL}")
    assert (r.utm_east, r.utm_north, r.heading) == (543256.96, 4178906.70, 0.0)
    assert (r.zone_number, r.zone_letter, r.lat, r.lon) == (10, "S", 37.75643, -122.43472)
    assert r.pano_id == "0001000000" and r.timestamp == "201311"
    p = parse_name(PITTS)  # Pitts30k leaves the heading empty
    assert math.isnan(p.heading) and p.note == "pitch1_yaw1"


def test_format_parse_round_trip():
    name = format_name(550012.345, 4180007.5, 10, "S", 37.77, -122.43, 359.9, pano_id="p1",
                       timestamp="2026", note="day")
    r = parse_name(name)
    assert r.utm_east == pytest.approx(550012.35) and r.utm_north == 4180007.5
    assert r.heading == pytest.approx(359.9) and r.pano_id == "p1" and r.note == "day"
    assert parse_name(format_name(1, 2, 10, "S", 0, 0, 360.0)).heading == 0.0


@pytest.mark.parametrize("bad", [
    "photo.jpg", "@1@2@10@S@.jpg", SFXL.replace("0543256.96", "east"),
    SFXL.replace("@10@", "@x1@"), SFXL.replace("0543256.96", ""),
])
def test_bad_name_error_names_the_file(bad):
    with pytest.raises(DataError, match="/x/" + bad[:5].replace(".", r"\.")):
        parse_name("/x/" + bad)


def _touch(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def test_list_images_glob_sorted_recursive_and_skip_bad(tmp_path):
    good = [format_name(550000 + i, 4180000, 10, "S", 37.7, -122.4, 10 * i) for i in range(3)]
    _touch(tmp_path / "train" / "a", good[2:])
    _touch(tmp_path / "train" / "b", good[:2] + ["bad_name.jpg", "notes.txt"])
    with pytest.raises(DataError, match="bad_name.jpg"):
        list_images(tmp_path / "train")
    records, bad = list_images(tmp_path / "train", skip_bad=True)
    assert [r.path for r in records] == sorted(r.path for r in records) and len(records) == 3
    assert bad == [str(tmp_path / "train" / "b" / "bad_name.jpg")]


def test_list_images_uses_paths_file(tmp_path):
    folder = tmp_path / "val" / "database"
    names = [format_name(550000, 4180000 + i, 10, "S", 37.7, -122.4, 0) for i in range(4)]
    _touch(folder, names)
    # Listing only two of them proves the file is used instead of globbing.
    images_paths_file(folder).write_text(f"{names[3]}\n{names[1]}\n")
    records, _ = list_images(folder)
    assert [r.utm_north for r in records] == [4180001, 4180003]
    # Paths relative to the dataset root are accepted too.
    images_paths_file(folder).write_text(f"val/database/{names[0]}\n")
    assert [r.path for r in list_images(folder)[0]] == [str(tmp_path / "val/database" / names[0])]
    images_paths_file(folder).write_text("missing.jpg\n")
    with pytest.raises(DataError, match="database_images_paths.txt"):
        list_images(folder)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path / "empty")


@pytest.mark.parametrize("line", [
    "a/b.jpg", "/abs/b.jpg", "a//b.jpg", "./a/b.jpg", "a/./b.jpg", "a/b/", "a/b/.", ".", "//x/y",
    "a/../b.jpg", ".hidden/b.jpg",
])
@pytest.mark.parametrize("base", ["/", "/data/sf_xl/train"])
def test_paths_are_joined_and_named_as_pathlib_does(base, line):
    assert _joined(Path(base), base.rstrip("/") + "/", line) == str(Path(base) / line)
    assert _file_name(line) == Path(line).name


def test_records_have_slots_and_share_repeated_fields():
    a, b = (parse_name(SFXL.replace("@@0@@", f"@@{h}@@")) for h in (0, 30))
    assert not hasattr(a, "__dict__")
    assert a.pano_id is b.pano_id and a.timestamp is b.timestamp
