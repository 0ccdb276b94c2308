import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_geo.config import build_config
from dist_geo.data.vg_format import list_images
from dist_geo.distributed import DistContext, single_process
from dist_geo.errors import DataError
from dist_geo.eval.evaluate import evaluate, split_folders
from dist_geo.eval.features import extract_descriptors, load_image, rank_slice
from dist_geo.eval.tta import query_views
from dist_geo.model.network import build_model

OVERRIDES = ["model.fc_output_dim=16", "data.num_workers=0", "eval.batch_size=4"]


def tiny_model():
    torch.manual_seed(0)
    return build_model(build_config(overrides=OVERRIDES).model)


def test_split_folders():
    assert split_folders("/d", "val") == (Path("/d/val/database"), Path("/d/val/queries"))
    assert split_folders("/d", "test-night") == (
        Path("/d/test/database"), Path("/d/test/queries_night"))
    assert split_folders("/d", "test/queries_v1") == (
        Path("/d/test/database"), Path("/d/test/queries_v1"))


def test_rank_slices_cover_everything_once():
    for n in (0, 1, 5, 13):
        parts = [list(rank_slice(n, r, 3)) for r in range(3)]
        assert sum(parts, []) == list(range(n))


def test_evaluate_returns_metrics_and_predictions(known_dataset):
    cfg = build_config(overrides=OVERRIDES + ["eval.recall_values=[1,5]"])
    model = tiny_model()
    model.train()
    results = evaluate(model, known_dataset, cfg, single_process(), splits=["val", "test-night"])
    assert model.training  # the trainer's mode is restored
    assert set(results) == {"val", "test-night"}
    val = results["val"]
    assert set(val) == {"recall_at_1", "recall_at_5", "queries", "queries_without_positives"}
    assert val["queries"] == 13 and val["queries_without_positives"] == 1
    assert 0.0 <= val["recall_at_1"] <= val["recall_at_5"] <= 100.0
    assert results.details["val"].predictions.shape == (13, 5)
    assert results.metrics == {k: dict(v) for k, v in results.items()}


def test_ensemble_pca_and_crops_run(known_dataset):
    cfg = build_config(overrides=OVERRIDES + [
        "eval.tta=majority_voting", "eval.pca_dim=4", "eval.pca_fit=database", "eval.index=hnsw"])
    results = evaluate([tiny_model(), tiny_model()], known_dataset, cfg, single_process(),
                       splits=["val"])
    assert results["val"]["queries"] == 13
    assert "recall_loss_at_1" in results["val"]  # approximate index: its loss is reported


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _extract_on_rank(rank: int, world: int, port: int, root: str, paths: list[str], out: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    ctx = DistContext(rank, world, rank, torch.device("cpu"))
    try:
        plain = extract_descriptors(tiny_model(), paths, ctx, batch_size=4)
        crops = extract_descriptors(tiny_model(), paths, ctx, batch_size=4,
                                    views=query_views("five_crops"))
        cfg = build_config(overrides=OVERRIDES)
        recalls = evaluate(tiny_model(), root, cfg, ctx, splits=["val"])["val"]
        if rank == 1:  # the non-main rank also receives everything
            np.savez(out, plain=plain, crops=crops,
                     recalls=[recalls[f"recall_at_{n}"] for n in cfg.eval.recall_values])
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_single_process(known_dataset, tmp_path):
    records, _ = list_images(known_dataset / "val" / "queries")  # 13 images: an uneven split
    paths = [r.path for r in records]
    out = tmp_path / "rank1.npz"
    args = (2, _free_port(), str(known_dataset), paths, str(out))
    mp.start_processes(_extract_on_rank, args=args, nprocs=2, start_method="spawn", join=True)
    got = np.load(out)
    single = extract_descriptors(tiny_model(), paths, single_process(), batch_size=4)
    assert got["plain"].shape == (13, 16) and got["crops"].shape == (13, 5, 16)
    np.testing.assert_allclose(got["plain"], single, atol=1e-5)
    cfg = build_config(overrides=OVERRIDES)
    alone = evaluate(tiny_model(), known_dataset, cfg, single_process(), splits=["val"])["val"]
    assert got["recalls"].tolist() == [alone[f"recall_at_{n}"] for n in cfg.eval.recall_values]


def test_pca_fitted_on_train_images_of_the_tiny_world(tiny_world):
    cfg = build_config(overrides=OVERRIDES + [
        "eval.pca_dim=8", "eval.pca_fit=train", "eval.pca_samples=40", "eval.tta=hflip"])
    results = evaluate(tiny_model(), tiny_world, cfg, single_process(), splits=["val"])
    assert results["val"]["queries"] > 0
    assert results.details["val"].predictions.shape[1] == 20


def test_load_image_resizes_and_reports_unreadable_files(known_dataset, tmp_path):
    records, _ = list_images(known_dataset / "val" / "database")
    image = load_image(records[0].path, image_size=20)
    assert image.shape == (3, 20, 20) and image.dtype == torch.float32
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image(str(broken))
