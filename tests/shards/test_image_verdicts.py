"""`shard --verify` judges images with the decoder of the loader that will read them (issue 10,
items 4 and 5): DALI's, by default, refuses a JPEG torchvision decodes, and a decompression
bomb is named without being decoded."""
from __future__ import annotations

from dist_geo.cli import main as cli_main
from dist_geo.shards.dali_check import DaliImageCheck
from dist_geo.shards.reading import torch_image_check
from dist_geo.shards.verify import verify_shards
from dist_geo.shards.writer import write_shards


def test_verify_judges_images_with_the_loaders_decoder(train_root, data_cfg, tmp_path,
                                                        make_hostile, capsys):
    out = tmp_path / "shards"
    manifest = write_shards(train_root, out, data_cfg)
    tar = out / manifest["groups"][0]["shards"][0]["file"]
    garbled, garbled_image = make_hostile(tar, 0, "garbled")
    bomb, _ = make_hostile(tar, 1, "bomb")
    assert torch_image_check([garbled_image]) == [""]  # the torch loader would read it

    report = verify_shards(out)  # data.loader=dali, the default: DALI's decoder
    faults = {f.key: f.fault for f in report.faults if f.shard == str(tar) and f.key}
    assert set(faults) == {garbled, bomb}
    assert faults[garbled].startswith("corrupt: undecodable image (DALI)")
    assert "30000x30000 image: more than data.max_image_pixels=" in faults[bomb]

    assert cli_main(["shard", "--verify", str(out), "data.max_image_pixels=1000000"]) == 1
    printed = capsys.readouterr().out
    assert f"{tar}: sample '{garbled}': corrupt: undecodable image (DALI)" in printed
    assert f"{tar}: sample '{bomb}': corrupt: 30000x30000 image: more than " \
           f"data.max_image_pixels=1000000 pixels" in printed


def test_dali_check_names_each_image_of_a_failing_batch(train_root, corrupt_jpeg):
    images = [p.read_bytes() for p in sorted((train_root / "train").glob("*.jpg"))[:5]]
    images[2] = corrupt_jpeg(images[2], "garbled")
    images[4] = corrupt_jpeg(images[4], "bomb")
    verdicts = DaliImageCheck(max_pixels=10**8, batch_size=4)(images + [b"not an image"])
    assert [bool(v) for v in verdicts] == [False, False, True, False, True, True]
    assert verdicts[4] == ("30000x30000 image: more than data.max_image_pixels=100000000 "
                           "pixels, not decoded")
