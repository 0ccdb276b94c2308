from dist_geo.config import build_config
from dist_geo.eval.raw_pixels import raw_pixel_baseline


def test_raw_pixels_find_the_noisy_copies(known_dataset):
    cfg = build_config(overrides=["eval.recall_values=[1,5]"])
    results = raw_pixel_baseline(known_dataset, cfg, splits=["val", "test-night"])
    val = results["val"]
    # 12 queries find their place; the 13th has no positive and counts as a failure
    assert val["queries"] == 13 and val["queries_without_positives"] == 1
    assert val["recall_at_1"] == 12 / 13 * 100
    # darkened copies: mean-centring + normalisation makes the thumbnails brightness-invariant
    assert results["test-night"]["recall_at_1"] == 100.0
    assert results.details["val"].predictions.shape == (13, 5)


def test_raw_pixels_on_the_tiny_world(tiny_world):
    """The synthetic world is a retrieval problem: thumbnails alone do not solve it."""
    results = raw_pixel_baseline(tiny_world, build_config(), splits=["val"])
    val = results["val"]
    assert val["queries"] == len(results.details["val"].queries) > 0
    assert val["recall_at_1"] < 100.0
    assert val["recall_at_1"] <= val["recall_at_5"] <= val["recall_at_10"] <= val["recall_at_20"]
