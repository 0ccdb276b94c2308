"""CosPlace classes and groups on hand-made coordinates."""
import pytest

from dist_geo.data import groups as groups_mod
from dist_geo.data.groups import build_groups, class_id, group_id
from dist_geo.data.vg_format import ImageRecord


@pytest.mark.parametrize("e, n, h, expected", [
    (550000.0, 4180000.0, 0.0, (550000, 4180000, 0)),       # exact cell borders
    (550009.99, 4180019.999, 29.99, (550000, 4180010, 0)),   # just below the next border
    (550010.0, 4180020.0, 30.0, (550010, 4180020, 30)),      # exactly on the next border
    (550123.4, 4180056.7, 359.9, (550120, 4180050, 330)),    # last heading sector
    (550123.4, 4180056.7, 360.0, (550120, 4180050, 0)),      # 360 degrees is 0
])
def test_class_id(e, n, h, expected):
    assert class_id(e, n, h, M=10, alpha=30) == expected


@pytest.mark.parametrize("e, n, h, expected", [
    (550000.0, 4180000.0, 0.0, (0, 0, 0)),          # 550000 % 50 = 0
    (550049.9, 4180040.0, 59.9, (4, 4, 1)),
    (550050.0, 4180050.0, 60.0, (0, 0, 0)),          # one group period further: same group
    (550123.4, 4180056.7, 359.9, (2, 0, 1)),         # (550120 % 50) // 10, 330 % 60 // 30
])
def test_group_id(e, n, h, expected):
    assert group_id(e, n, h, M=10, alpha=30, N=5, L=2) == expected


def _rec(i, e, n, h):
    return ImageRecord(path=f"img{i:03d}.jpg", utm_east=e, utm_north=n, heading=h)


def _records():
    # Three classes of group (0,0,0) / (1,0,0) / (0,0,1), met in this order; a singleton class.
    spec = [
        (550052, 4180001, 5), (550011, 4180001, 5), (550013, 4180002, 10),
        (550051, 4180003, 20), (550003, 4180004, 40), (550004, 4180004, 50),
        (550008, 4180007, 45), (550200, 4180200, 0),
    ]
    return [_rec(i, *s) for i, s in enumerate(spec)]


def test_build_groups_order_and_min_images(tmp_path):
    groups = build_groups(_records(), M=10, alpha=30, N=5, L=2, min_images_per_class=2)
    assert [g.group_id for g in groups] == [(0, 0, 0), (1, 0, 0), (0, 0, 1)]
    assert groups[0].class_ids == [(550050, 4180000, 0)]
    assert [r.path for r in groups[0].images[0]] == ["img000.jpg", "img003.jpg"]
    assert [r.path for r in groups[2].images[0]] == ["img004.jpg", "img005.jpg", "img006.jpg"]
    assert sum(g.num_images for g in groups) == 7  # the singleton class is dropped
    three = build_groups(_records(), M=10, alpha=30, N=5, L=2, min_images_per_class=3)
    assert [g.group_id for g in three] == [(0, 0, 1)]


def test_classes_in_one_group_are_far_apart():
    recs = [_rec(i, 550000 + 7 * i, 4180000 + 3 * i, (37 * i) % 360) for i in range(400)]
    for g in build_groups(recs, M=10, alpha=30, N=5, L=2, min_images_per_class=1):
        for a in g.class_ids:
            for b in g.class_ids:
                if a != b:
                    assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= 50 or abs(a[2] - b[2]) >= 60


def test_cache_reused_and_keyed_by_images(tmp_path, monkeypatch):
    first = build_groups(_records(), 10, 30, 5, 2, 2, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    monkeypatch.setattr(groups_mod, "_compute", lambda *a: pytest.fail("cache not used"))
    again = build_groups(_records(), 10, 30, 5, 2, 2, cache_dir=tmp_path)
    assert [(g.group_id, g.class_ids, g.images) for g in again] == \
        [(g.group_id, g.class_ids, g.images) for g in first]
    monkeypatch.undo()
    build_groups(_records()[:-1], 10, 30, 5, 2, 2, cache_dir=tmp_path)  # a changed dataset
    build_groups(_records(), 10, 30, 5, 2, 3, cache_dir=tmp_path)  # other parameters
    assert len(list(tmp_path.glob("*.npz"))) == 3
