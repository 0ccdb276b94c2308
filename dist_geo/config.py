"""The one typed configuration tree of dist-geo.

A run's configuration is built once: dataclass defaults (CosPlace's), then a YAML file, then
`section.key=value` overrides from the command line, then `validate`. Every stage of the
library receives the part of the tree it needs; nothing deeper reads argv or the environment.
Each key's meaning, choices and range live in its field's metadata, so that the check, the
declaration and `dist-geo config show` (dist_geo/config_cli.py) read one place.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dist_geo.atomic import write_text
from dist_geo.errors import DistGeoError


class ConfigError(DistGeoError, ValueError):
    """A configuration value, key or file that cannot be used; the message names it."""


def _key(default: Any, doc: str, **constraints: Any) -> Any:
    """A config key: its default, what it means (`dist-geo config show` prints it beside the
    key) and the choices or min/max that `validate` enforces."""
    metadata = {"doc": doc, **constraints}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _choice(default: Any, *choices: Any, doc: str) -> Any:
    return _key(default, doc, choices=choices)


def _range(default: Any, lo: float | None = None, hi: float | None = None, *, doc: str) -> Any:
    return _key(default, doc, min=lo, max=hi)


def _items(default: list[Any], lo: float, *, doc: str) -> Any:
    """A list key that must not be empty and whose every item is at least `lo`."""
    return _key(default, doc, min=lo, min_len=1)


@dataclass
class AugmentConfig:
    """Training augmentations (CosPlace: random resized crop + colour jitter)."""

    brightness: float = _range(0.7, 0.0, doc="colour jitter: brightness factor in [1-x, 1+x]")
    contrast: float = _range(0.7, 0.0, doc="colour jitter: contrast factor in [1-x, 1+x]")
    saturation: float = _range(0.7, 0.0, doc="colour jitter: saturation factor in [1-x, 1+x]")
    hue: float = _range(0.5, 0.0, 0.5, doc="colour jitter: hue shift in [-x, x] turns")
    crop_scale_min: float = _range(0.5, 0.01, 1.0,
                                   doc="random resized crop: area scale drawn in [x, 1]")
    hflip: bool = _key(False, "random horizontal flip (CosPlace: none)")
    night_light: bool = _key(False, "per-channel scaling toward dark blue, then rescaled")
    night_light_p: float = _range(0.5, 0.0, 1.0, doc="share of images given the night light")


@dataclass
class DataConfig:
    """Where the images are, how places become classes and groups, and how batches are made."""

    dataset: str = _key("runs/synth", "root holding train/ val/ test/ in the VG layout")
    shards: str = _key("", "shard folder; empty = shards/<dataset folder name> in the working dir")
    loader: str = _choice("dali", "dali", "torch",
                          doc="training loader: NVIDIA DALI, or webdataset + torchvision")
    image_size: int = _range(512, 16, doc="training crop side, pixels")
    M: int = _range(10, 1, doc="CosPlace class cell side, metres")
    alpha: int = _range(30, 1, 360, doc="CosPlace class heading sector, degrees")
    N: int = _range(5, 1, doc="cells per group side (classes of a group are N*M m apart)")
    L: int = _range(2, 1, doc="heading sectors per group")
    groups_num: int = _range(8, 1, doc="groups trained, in the order they are first met")
    min_images_per_class: int = _range(10, 1, doc="classes with fewer images are dropped")
    shard_size: int = _range(1000, 1, doc="samples per WebDataset tar")
    sampling: str = _choice("class_uniform", "class_uniform", "image_uniform",
                            doc="shard layout: passes of one image per class, or every image once")
    num_workers: int = _range(2, 0, doc="loader worker processes (DALI threads) per rank")
    skip_bad: bool = _key(False, "skip and count unparsable names / corrupt samples instead of "
                          "failing")
    shard_seed: int = _key(0, "order of the samples in the shards (written once, fixed)")
    shuffle_buffer: int = _range(1000, 1, doc="samples in the loaders' shuffle buffer, per rank "
                                 "(image_uniform shards; class_uniform ones stream in order)")
    strict: bool = _key(False, "loaders: a corrupt sample raises instead of being skipped and "
                        "counted")
    # Every decoder (shard, loaders, eval) refuses an image whose header promises more pixels:
    # a 1 KB JPEG can claim 30000 x 30000 (a decompression bomb). PIL's own warning threshold.
    max_image_pixels: int = _range(89_478_485, 1,
                                   doc="larger images are refused (decompression bombs)")
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    """The network: backbone, GeM pooling, FC to the descriptor, L2 norm."""

    backbone: str = _key("resnet18", "torchvision backbone (resnet18, resnet50, vgg16, ...)")
    fc_output_dim: int = _range(512, 1, doc="descriptor dimension")
    weights: str = _key("", "local backbone (or whole-model) weights; empty = random init")
    train_all_layers: bool = _key(False, "train the layers before ResNet layer3 too (CosPlace "
                                  "freezes them)")
    gem_p: float = _range(3.0, 1.0, doc="GeM pooling exponent (initial value)")


@dataclass
class LossConfig:
    """The margin loss of each group's classifier head."""

    name: str = _choice("cosface", "cosface", "arcface", "sphereface", "circle",
                        doc="large-margin loss")
    s: float = _range(30.0, 0.0, doc="logit scale (cosface, arcface, sphereface)")
    m: float = _range(0.4, 0.0, doc="margin (cosine, angle or multiplier, by loss)")
    gamma: float = _range(64.0, 0.0, doc="circle loss scale")
    easy_margin: bool = _key(False, "arcface: margin only where the angle is below 90 degrees")
    sample_rate: float = _range(1.0, 0.0, 1.0,
                                doc="partial-FC: share of negative classes sampled per step")


@dataclass
class OptimConfig:
    """Optimizers: one for the network, one per group head (CosPlace: Adam 1e-5 and 1e-2)."""

    name: str = _choice("adam", "adam", "adamw", "sgd", doc="optimizer of network and heads")
    lr: float = _range(1e-5, 0.0, doc="learning rate of backbone + aggregation")
    classifiers_lr: float = _range(1e-2, 0.0, doc="learning rate of the margin heads")
    weight_decay: float = _range(0.0, 0.0, doc="weight decay")
    momentum: float = _range(0.9, 0.0, 1.0, doc="sgd only: momentum")
    clip_grad_norm: float = _range(0.0, 0.0, doc="gradient norm clipping; 0 = off")


@dataclass
class SchedConfig:
    """The learning-rate schedule (per step; the heads follow the network's ratio)."""

    name: str = _choice("none", "none", "cosine", "step", doc="schedule after the warm-up")
    T_max: int = _range(10, 1, doc="cosine: period, in epochs")
    eta_min: float = _range(1e-6, 0.0, doc="cosine: lowest learning rate")
    step_size: int = _range(10, 1, doc="step: epochs between decays")
    gamma: float = _range(0.1, 0.0, doc="step: decay factor")
    warmup_steps: int = _range(0, 0, doc="linear warm-up, in iterations, before any schedule")


@dataclass
class TrainConfig:
    """The run: where it writes, how long, on what, in which precision, how it checkpoints."""

    out: str = _key("runs/train", "run folder: checkpoints, config, results, MLflow store")
    epochs_num: int = _range(50, 1, doc="epochs; epoch k trains group k mod groups_num")
    iterations_per_epoch: int = _range(10000, 1, doc="steps per epoch")
    # The GLOBAL batch (CosPlace's 32), split evenly over the ranks: the same config trains the
    # same model on 1 GPU, 8 GPUs or 2 CPU processes (see per_rank_batch).
    batch_size: int = _range(32, 1, doc="global batch, split evenly over the ranks")
    seed: int = _key(0, "seed of weights, sampling and augmentation")
    deterministic: bool = _key(False, "deterministic algorithms (slower)")
    device: str = _choice("auto", "auto", "cpu", "cuda", doc="auto = a GPU when there is one")
    # Mixed precision is autocast over fp32 master weights (GeM, L2 norms, heads and loss in fp32).
    precision: str = _choice("fp32", "fp32", "bf16", "fp16",
                             doc="autocast precision over fp32 weights")
    sync_bn: bool = _key(True, "batch-norm statistics over the global batch when ranks > 1")
    channels_last: bool = _key(True, "NHWC activations (faster convolutions on GPUs and oneDNN)")
    compile: bool = _key(False, "torch.compile the network")
    zero_stage: int = _range(0, 0, 2, doc="DeepSpeed ZeRO stage")
    checkpoint_every: int = _range(0, 0, doc="steps between checkpoints; 0 = at epoch ends only")
    resume: bool = _key(False, "continue from <out>/checkpoints/last")
    validate: bool = _key(True, "val recall every epoch, best model by val recall@1")
    test: bool = _key(True, "test the best model on eval.splits at the end")
    log_every: int = _range(10, 1, doc="steps between loss reports (the only host syncs of a step)")
    deepspeed_config: str = _key("", "JSON merged over the DeepSpeed config derived from these "
                                 "keys")
    keep_epoch_checkpoints: bool = _key(False, "also keep checkpoints/epoch_NNN at each epoch end")
    overwrite: bool = _key(False, "a train.out holding checkpoints is refused unless resumed or "
                           "this is true (it deletes them and starts over)")
    max_nonfinite_steps: int = _range(3, 1, doc="a loss NaN or inf for this many steps in a row "
                                      "stops the run, unsaved (checked when the loss is read)")

    def per_rank_batch(self, world_size: int) -> int:
        """Each rank's share of the global `batch_size`; it must divide evenly."""
        if self.batch_size % world_size:
            raise ConfigError(
                f"train.batch_size={self.batch_size} (the global batch) does not split evenly "
                f"over {world_size} ranks; use a multiple of {world_size}")
        return self.batch_size // world_size


@dataclass
class EvalConfig:
    """Evaluation: database + queries per split, positives within a radius, recall@N."""

    positive_dist_threshold: float = _range(25.0, 0.0,
                                            doc="metres within which a database image is right")
    recall_values: list[int] = _items([1, 5, 10, 20], 1, doc="the N of recall@N")
    batch_size: int = _range(32, 1, doc="images per descriptor batch")
    image_size: int = _range(0, 0, doc="resize the shorter side to this; 0 = native size")
    index: str = _choice("flat", "flat", "ivfpq", "hnsw",
                         doc="FAISS index: exact, or approximate (loss vs exact is reported)")
    index_shards: int = _range(0, 0, doc="database shards; 0 = one per GPU, or per CPU rank/thread")
    fp16_index: bool = _key(False, "store the GPU index in fp16")
    tta: str = _choice(
        "none", "none", "hflip", "central_crop", "five_crops", "nearest_crop",
        "majority_voting", "multiscale", doc="test-time augmentation of the queries",
    )
    pca_dim: int = _range(0, 0, doc="PCA to this dimension; 0 = off")
    pca_whiten: bool = _key(False, "whiten the PCA")
    pca_fit: str = _choice("train", "train", "database", doc="descriptors the PCA is learnt on")
    pca_samples: int = _range(10000, 1, doc="at most this many random training images for the PCA")
    night_preprocess: str = _choice("none", "none", "brightness", "contrast", "equalize",
                                    doc="pre-processing of night queries")
    splits: list[str] = _key(["test", "test-night"],
                             "splits: val, test, test-night, or <split>/<queries folder>")


@dataclass
class TrackingConfig:
    """MLflow: where runs are recorded and what they are called."""

    enabled: bool = _key(True, "record runs in MLflow (rank 0)")
    uri: str = _key("", "tracking URI; empty = <train.out>/mlflow.db, artifacts beside it")
    experiment: str = _key("dist-geo", "MLflow experiment name")
    run_name: str = _key("", "run name; empty = backbone, loss, schedule, ranks and date")


@dataclass
class Config:
    """Every key of a run: `dist-geo config show` prints them with their meanings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return `value` as type `tp`, accepting the loose spellings YAML produces (1e-5 is a str)."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            value = [value]
        return [_coerce(v, item, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        return "" if value is None else str(value)
    raise ConfigError(f"{where}: unsupported type {tp}")


def _merge(node: Any, values: dict[str, Any], prefix: str, source: str,
           sources: dict[str, str]) -> None:
    """Set `values` on the dataclass tree `node`, remembering in `sources` who set each key."""
    hints = typing.get_type_hints(type(node))
    names = {f.name for f in dataclasses.fields(node)}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{where}' (known: {', '.join(sorted(names))})")
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping of keys, got {value!r}")
            _merge(current, value, where + ".", source, sources)
        else:
            setattr(node, key, _coerce(value, hints[key], where))
            sources[where] = source


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`loss.s=64` -> {"loss": {"s": 64}}; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except (ConfigError, yaml.YAMLError) as e:
        raise ConfigError(f"override '{text}': {str(e).splitlines()[0]}") from None
    return _nest(key.strip(), value)


def _check_value(value: Any, meta: Any, where: str, origin: str) -> None:
    """One scalar against its field's declared choices and range; numbers must be finite."""
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{origin}{where}={value!r} is not one of {', '.join(map(str, choices))}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{origin}{where}={value!r} is not a finite number")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ConfigError(f"{origin}{where}={value!r} is below its minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{origin}{where}={value!r} is above its maximum {hi}")


def validate(cfg: Any, prefix: str = "", sources: dict[str, str] | None = None) -> None:
    """Check every field's declared choices and range, recursively (list fields item by item).

    `sources` (key -> the file or "command line" that set it) lets the message name its origin.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        where = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, where + ".", sources)
            continue
        origin = f"{sources[where]}: " if sources and sources.get(where) else ""
        if not isinstance(value, list):
            _check_value(value, f.metadata, where, origin)
            continue
        if len(value) < f.metadata.get("min_len", 0):
            raise ConfigError(f"{origin}{where}={value!r} must not be empty")
        for i, item in enumerate(value):
            _check_value(item, f.metadata, f"{where}[{i}]", origin)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in one mapping: PyYAML keeps the last one
    silently, so `lr: 1e-3` ... `lr: 1e-5` would train with a value the reader did not see."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"duplicate key '{key}' (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """`yaml.safe_load` that refuses duplicate keys (ConfigError naming the key)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def build_config(
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults <- `base` mapping <- YAML file <- `key=value` overrides, then validated."""
    cfg = Config()
    sources: dict[str, str] = {}
    if base:
        _merge(cfg, base, "", "", sources)  # the caller names where a base mapping came from
    if path:
        values = load_yaml(path)  # its errors name the file already
        try:
            _merge(cfg, values, "", str(path), sources)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for text in overrides:
        _merge(cfg, parse_override(text), "", "command line", sources)
    validate(cfg, sources=sources)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a validated Config from `to_dict` output (a saved run's config)."""
    return build_config(base=values)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"loss": {"s": 30}} -> {"loss.s": 30}: the form MLflow params and Ray search spaces use."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def save_config(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def bundled_config(name: str) -> Path:
    """Path of a config shipped inside the package (dist_geo/configs/<name>.yaml)."""
    path = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no bundled config '{name}' (known: {', '.join(known)})")
    return path


__all__ = [
    "AugmentConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "LossConfig",
    "ModelConfig", "OptimConfig", "SchedConfig", "TrackingConfig", "TrainConfig",
    "build_config", "bundled_config", "flatten", "from_dict", "load_yaml", "parse_override",
    "safe_load", "save_config", "to_dict", "validate",
]
