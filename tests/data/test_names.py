"""The names-only generator: valid, deterministic names whose CosPlace grouping matches a
plain re-implementation of the method's definitions."""
import itertools

from dist_geo.data.groups import build_groups
from dist_geo.data.synth.names import street_grid_names, write_names_list
from dist_geo.data.vg_format import list_images, parse_name

M, ALPHA, N, L, MIN_IMAGES = 10, 30, 5, 2, 10  # CosPlace's


def brute_force_groups(records):
    """[(group id, [(class id, [paths])])]: classes and groups in the order first met (records
    sorted by path), classes below MIN_IMAGES dropped, straight from the definitions."""
    classes = {}
    for r in records:
        cid = (int(r.utm_east // M * M), int(r.utm_north // M * M),
               int(r.heading % 360 // ALPHA * ALPHA))
        classes.setdefault(cid, []).append(r.path)
    groups = {}
    for cid, paths in classes.items():
        if len(paths) >= MIN_IMAGES:
            gid = (cid[0] % (M * N) // M, cid[1] % (M * N) // M, cid[2] % (ALPHA * L) // ALPHA)
            groups.setdefault(gid, []).append((cid, paths))
    return list(groups.items())


def test_names_parse_count_and_repeat():
    names = list(street_grid_names(1000, seed=3))
    assert len(names) == len(set(names)) == 1000
    records = [parse_name(n) for n in names]
    assert all(0 <= r.heading < 360 for r in records)
    assert {(r.zone_number, r.zone_letter) for r in records} == {(10, "S")}
    # 12 crops of a panorama: one place, one id, headings 30 degrees apart.
    first = records[:12]
    assert len({(r.utm_east, r.utm_north, r.pano_id, r.timestamp) for r in first}) == 1
    assert sorted(round((r.heading - first[0].heading) % 360, 1) for r in first) == \
        [30.0 * k for k in range(12)]
    assert list(street_grid_names(1000, seed=3)) == names
    assert list(itertools.islice(street_grid_names(1000, seed=4), 5)) != names[:5]


def test_list_groups_like_the_definitions(tmp_path):
    write_names_list(tmp_path / "train", 6000, panos_per_cell=12)
    records, bad = list_images(tmp_path / "train")  # absolute paths, no image on disk
    assert len(records) == 6000 and not bad
    groups = build_groups(records, M, ALPHA, N, L, MIN_IMAGES)
    expected = brute_force_groups(records)
    assert len(groups) == len(expected) > 10
    for group, (gid, classes) in zip(groups, expected):
        assert group.group_id == gid
        assert group.class_ids == [cid for cid, _ in classes]
        assert [[r.path for r in imgs] for imgs in group.images] == [paths for _, paths in classes]
    # Most images land in classes of >= 10 images at 12 panoramas per cell.
    assert sum(g.num_images for g in groups) > 0.7 * len(records)
