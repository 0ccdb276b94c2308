"""Reading a checkpoint someone tampered with: every file is checked, nothing outside the
folder is read, nothing is unpickled, and each refusal is one line naming the file."""
from __future__ import annotations

import json

import pytest
import torch

from dist_geo.errors import CheckpointError
from dist_geo.model.checkpoint import MANIFEST, load_model
from dist_geo.train.checkpoint import reslice_checkpoint


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_an_edited_config_is_refused_like_any_other_file(make_checkpoint):
    checkpoint = make_checkpoint()
    load_model(checkpoint)
    config = checkpoint / "config.yaml"
    config.write_text(config.read_text().replace("fc_output_dim: 16", "fc_output_dim: 32"))
    with pytest.raises(CheckpointError) as error:
        load_model(checkpoint)
    assert one_line(error) == f"{config}: sha256 does not match the checkpoint manifest (corrupt)"


def test_a_pickled_object_is_never_run_and_the_refusal_is_one_line(make_checkpoint, seal):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    checkpoint = make_checkpoint()
    torch.save({"weight": Payload()}, checkpoint / "model.pt")
    seal(checkpoint)  # the forger re-hashed it
    with pytest.raises(CheckpointError) as error:
        load_model(checkpoint)
    text = one_line(error)
    assert text == (f"{checkpoint / 'model.pt'}: unreadable checkpoint file (not plain tensors: "
                    "Unsupported global: GLOBAL print; only tensors and containers are loaded)")
    assert "weights_only=False" not in text


def test_files_named_outside_the_folder_are_never_read_or_copied(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint()
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    manifest["files"]["../../../secret.txt"] = "0" * 64
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as error:
        reslice_checkpoint(checkpoint, tmp_path / "copy", 2)
    assert one_line(error) == (f"{checkpoint / MANIFEST}: names '../../../secret.txt', outside "
                               "the checkpoint")
    assert not (tmp_path / "copy").exists() and not (tmp_path / "secret.txt.copy").exists()
