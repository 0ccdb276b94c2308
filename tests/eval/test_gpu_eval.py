"""Evaluation on a GPU (marked `gpu`: skipped without CUDA): descriptors on the device and the
search on the GPUs (FAISS GPU, or torch when faiss has no GPU support) give the CPU's recalls."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_geo.config import build_config
from dist_geo.distributed import single_process
from dist_geo.eval.evaluate import evaluate
from dist_geo.model.network import build_model

pytestmark = pytest.mark.gpu


def test_gpu_evaluation_gives_the_cpu_recalls(known_dataset):
    cfg = build_config(overrides=["model.fc_output_dim=16", "data.num_workers=0",
                                  "eval.batch_size=4"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    cpu = evaluate(model, known_dataset, cfg, single_process("cpu"), splits=["test"])
    gpu = evaluate(model.cuda(), known_dataset, cfg, single_process("cuda"), splits=["test"])
    for key in ("recall_at_1", "recall_at_5", "recall_at_10"):
        assert gpu["test"][key] == pytest.approx(cpu["test"][key])
    np.testing.assert_array_equal(gpu.details["test"].predictions[:, 0],
                                  cpu.details["test"].predictions[:, 0])
