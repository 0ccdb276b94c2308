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
