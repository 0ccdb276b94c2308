"""Check a shard folder against its manifest: checksum, sample count, readable members, images.

Every image is decoded by the decoder of the loader that will read it (data.loader: DALI's for
dali, headers over data.max_image_pixels not decoded, see dali_check.py; torchvision's for
torch), so this reads and decodes the whole folder once; each fault is reported by shard and
sample key.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from dist_geo.checksums import matches
from dist_geo.config import ConfigError, DataConfig
from dist_geo.shards.manifest import (
    SAMPLE_EXTENSIONS, decode_label, entry_key_end, index_entries, index_path, read_manifest,
)
from dist_geo.shards.reading import (
    Fault, ImageCheck, ShardReadError, iter_samples, judge_images, torch_image_check,
)


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    faults: list[Fault] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults


def image_check(data_cfg: DataConfig) -> ImageCheck:
    """The image verdicts of the loader data_cfg.loader names."""
    if data_cfg.loader == "torch":
        return functools.partial(torch_image_check, max_pixels=data_cfg.max_image_pixels)
    try:  # imported here: a machine without DALI verifies with data.loader=torch
        from dist_geo.shards.dali_check import DaliImageCheck
    except ImportError as e:
        raise ConfigError(f"data.loader=dali but DALI cannot be imported ({e}); "
                          f"verify with data.loader=torch") from None
    return DaliImageCheck(data_cfg.max_image_pixels)


def _check_sample(sample: dict, image_verdict: str, num_classes: int) -> str:
    """What is wrong with one sample, or "" when nothing is."""
    missing = [ext for ext in SAMPLE_EXTENSIONS if ext not in sample]
    if missing:
        return f"missing member(s) {', '.join('.' + m for m in missing)}"
    if image_verdict:
        return f"corrupt: {image_verdict}"
    try:
        label = decode_label(sample["cls"])
    except ValueError as e:
        return f"corrupt: {e}"
    if not 0 <= label < num_classes:
        return f"class index {label} outside 0..{num_classes - 1}"
    return ""


def _index_faults(tar: Path, samples: int) -> list[Fault]:
    """What is wrong with the DALI index of `tar`: missing, other count, beyond the tar's end."""
    try:
        entries = index_entries(index_path(tar))
    except OSError:
        return [Fault(str(tar), "", "missing DALI index")]
    if len(entries) != samples:
        return [Fault(str(tar), "", f"DALI index lists {len(entries)} samples instead of {samples}")]
    size = tar.stat().st_size
    beyond = [key for key, end in map(entry_key_end, entries) if end > size]
    return [Fault(str(tar), key, f"beyond the end of the tar ({size} bytes)") for key in beyond[:1]]


def _verify_shard(tar: Path, entry: dict, num_classes: int, check: ImageCheck,
                  report: VerifyReport) -> None:
    name = str(tar)
    if not tar.exists():
        report.faults.append(Fault(name, "", "missing"))
        return
    report.faults += _index_faults(tar, entry["samples"])
    if not matches(tar, entry["sha256"]):
        report.faults.append(Fault(name, "", "checksum differs from the manifest"))
    count = 0
    try:
        for sample, verdict in judge_images(iter_samples(tar), check):
            count += 1
            fault = _check_sample(sample, verdict, num_classes)
            if fault:
                report.faults.append(Fault(name, sample["__key__"], fault))
    except ShardReadError as e:
        report.faults.append(e.fault)
    if count != entry["samples"]:
        report.faults.append(Fault(name, "", f"{count} samples instead of {entry['samples']}"))
    report.samples += count


def verify_shards(out_dir: str | Path, data_cfg: DataConfig | None = None) -> VerifyReport:
    """Check every tar the manifest of `out_dir` lists, images with the decoder of
    data_cfg.loader (default: DataConfig's); DataError if there is no manifest."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    check = image_check(data_cfg or DataConfig())
    report = VerifyReport()
    for group in manifest["groups"]:
        for entry in group["shards"]:
            report.shards += 1
            _verify_shard(out_dir / entry["file"], entry, int(group["num_classes"]), check, report)
    return report


__all__ = ["VerifyReport", "image_check", "verify_shards"]
