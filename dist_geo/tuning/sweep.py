"""A sweep file (how to write one: tuning/README.md) -> Sweep: the base training config, the
search space and how to search it.

A domain whose values are mappings sweeps coupled keys together; Ray sees it as a choice of
readable labels ("loss.name=arcface loss.s=64 loss.m=0.5") that `trial_overrides` expands
back, so every search algorithm (Optuna included, which only takes scalars) and every results
table can handle it. Everything is checked when the file is read: unknown keys in the sweep or
in the config tree, values outside a field's choices or range, domains Optuna or PBT cannot
take; Ray itself is only imported to turn the domains into its search space (`to_ray`), so
reading and checking a sweep works without the [tune] extra.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_geo.config import (
    Config, ConfigError, build_config, bundled_config, flatten, load_yaml, parse_override, to_dict,
)
from dist_geo.shards.manifest import SHARD_KEYS

DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint")
SCHEDULERS = ("fifo", "asha", "pbt")
SEARCHES = ("random", "optuna")
TOP_KEYS = {
    "name", "config", "base", "space", "metric", "mode", "num_samples", "scheduler", "search",
    "resources", "max_concurrent_trials", "workers_per_trial", "out",
}
CONFIG_KEYS = frozenset(flatten(to_dict(Config())))
# Keys the shards are written from: one shard folder serves every trial, so they stay fixed.
FIXED_KEYS = frozenset(f"data.{key}" for key in SHARD_KEYS)
# Keys that change the network's parameters' shapes: PBT cannot clone across their values.
SHAPE_KEYS = frozenset({"model.backbone", "model.fc_output_dim", "model.weights"})


@dataclass(frozen=True)
class Domain:
    kind: str  # one of DOMAINS
    values: tuple[Any, ...]  # choice/grid: the options (labels for coupled keys); else bounds
    coupled: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> dotted keys

    def to_ray(self) -> Any:
        from ray import tune  # the optional [tune] extra: only running a sweep needs it

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.kind)(*self.values)

    def to_mutation(self) -> Any:
        """PBT resamples from the same domain when it explores."""
        return list(self.values) if self.kind in ("grid", "choice") else self.to_ray()


@dataclass
class Sweep:
    path: Path
    name: str
    base: dict[str, Any]  # flat, dotted keys: the complete base config after overrides
    space: dict[str, Domain]
    metric: str = "val_recall_at_1"
    mode: str = "max"
    num_samples: int = 1
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "fifo"})
    search: dict[str, Any] = field(default_factory=lambda: {"name": "random"})
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_concurrent_trials: int = 0
    workers_per_trial: int = 1
    out: Path = Path("runs/tune")

    def param_space(self) -> dict[str, Any]:
        return {key: domain.to_ray() for key, domain in self.space.items()}

    def num_trials(self) -> int:
        """num_samples for every point of the grid (random and Optuna: num_samples)."""
        return self.num_samples * math.prod(
            len(d.values) for d in self.space.values() if d.kind == "grid"
        )

    def swept_keys(self) -> set[str]:
        """The config keys the space changes (coupled groups count with all their keys)."""
        keys: set[str] = set()
        for key, domain in self.space.items():
            for combination in domain.coupled.values() or [{key: None}]:
                keys.update(combination)
        return keys

    def trial_overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's sampled params as flat config keys (coupled labels expanded)."""
        out: dict[str, Any] = {}
        for key, value in params.items():
            domain = self.space.get(key)
            if domain is not None and domain.coupled:
                out.update(domain.coupled[value])
            else:
                out[key] = value
        return out

    def trial_config(self, params: dict[str, Any], extra: dict[str, Any] | None = None) -> Config:
        return config_from_flat({**self.base, **self.trial_overrides(params), **(extra or {})})


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"loss.s": 30} -> {"loss": {"s": 30}}: the inverse of dist_geo.config.flatten."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def config_from_flat(flat: dict[str, Any]) -> Config:
    return build_config(base=unflatten(flat))


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read and check a sweep file; `overrides` (`key=value`) change its base config."""
    path = Path(path)
    raw = load_yaml(path)
    try:
        return _parse(path, raw, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _parse(path: Path, raw: dict[str, Any], overrides: tuple[str, ...] | list[str]) -> Sweep:
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown sweep key '{unknown[0]}' (known: {', '.join(sorted(TOP_KEYS))})")
    base = _base_config(path, raw, overrides)
    space = {key: _domain(key, spec, base) for key, spec in (raw.get("space") or {}).items()}
    name = str(raw.get("name") or path.stem)
    sweep = Sweep(
        path=path, name=name, base=base, space=space,
        metric=str(raw.get("metric", "val_recall_at_1")),
        mode=_one_of("mode", raw.get("mode", "max"), ("max", "min")),
        num_samples=_positive("num_samples", raw.get("num_samples", 1)),
        scheduler=_named("scheduler", raw.get("scheduler", "fifo"), SCHEDULERS),
        search=_named("search", raw.get("search", "random"), SEARCHES),
        resources={"cpu": 1, "gpu": 0, **(raw.get("resources") or {})},
        max_concurrent_trials=int(raw.get("max_concurrent_trials", 0)),
        workers_per_trial=_positive("workers_per_trial", raw.get("workers_per_trial", 1)),
        out=Path(raw.get("out") or f"runs/tune/{name}"),
    )
    _check_combination(sweep)
    return sweep


def _base_config(path: Path, raw: dict[str, Any], overrides) -> dict[str, Any]:
    """Defaults <- `config` file <- inline `base` <- command-line overrides, validated, flat."""
    flat = flatten(to_dict(build_config(_config_path(path, raw.get("config")))))
    flat.update(flatten(raw.get("base") or {}))
    for text in overrides:
        flat.update(flatten(parse_override(text)))
    for key in flat:
        _check_key(key)
    config_from_flat(flat)  # types, choices and ranges
    return flat


def _config_path(sweep_path: Path, name: Any) -> Path | None:
    if not name:
        return None
    name = str(name)
    if not name.endswith((".yaml", ".yml")):
        return bundled_config(name)
    beside = sweep_path.parent / name
    return beside if beside.exists() else Path(name)


def _check_key(key: str) -> None:
    if key not in CONFIG_KEYS:
        raise ConfigError(f"unknown config key '{key}'")


def _domain(key: str, spec: Any, base: dict[str, Any]) -> Domain:
    if not isinstance(spec, dict):  # a fixed value
        spec = {"choice": [spec]}
    if len(spec) != 1 or next(iter(spec)) not in DOMAINS:
        raise ConfigError(f"space '{key}': expected one of {{{', '.join(DOMAINS)}: ...}}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"space '{key}': {kind} needs a non-empty list, got {values!r}")
    if kind in ("choice", "grid") and all(isinstance(v, dict) for v in values):
        coupled = {}
        for item in values:
            typed = _typed(base, flatten(item), key)
            coupled[" ".join(f"{k}={v}" for k, v in typed.items())] = typed
        if len(coupled) != len(values):
            raise ConfigError(f"space '{key}': the same combination is listed twice")
        return Domain(kind, tuple(coupled), coupled)
    if kind not in ("choice", "grid") and len(values) != 2:
        raise ConfigError(f"space '{key}': {kind} takes [low, high], got {values!r}")
    typed = [_typed(base, {key: v}, key)[key] for v in values]
    return Domain(kind, tuple(float(v) for v in typed) if "uniform" in kind else tuple(typed))


def _typed(base: dict[str, Any], item: dict[str, Any], where: str) -> dict[str, Any]:
    """`item`'s values as the config tree types them; a ConfigError naming `where` if invalid."""
    for key in item:
        _check_key(key)
    try:
        flat = flatten(to_dict(config_from_flat({**base, **item})))
    except ConfigError as e:
        raise ConfigError(f"space '{where}': {e}") from None
    return {key: flat[key] for key in item}


def _check_combination(sweep: Sweep) -> None:
    kinds = {d.kind for d in sweep.space.values()}
    if sweep.search["name"] == "optuna" and "grid" in kinds:
        raise ConfigError("search optuna samples its own points: use choice instead of grid")
    if sweep.scheduler["name"] == "pbt" and sweep.search["name"] == "optuna":
        raise ConfigError("scheduler pbt explores by itself: use search random with it")
    fixed = sorted(FIXED_KEYS & sweep.swept_keys())
    if fixed:
        raise ConfigError(
            f"space key '{fixed[0]}' changes the shards, written once per sweep: set it in base"
        )
    shapes = sorted(SHAPE_KEYS & sweep.swept_keys())
    if sweep.scheduler["name"] == "pbt" and shapes:
        raise ConfigError(
            f"scheduler pbt clones checkpoints between trials: space key '{shapes[0]}' changes "
            "the network's shape"
        )
    if sweep.scheduler["name"] == "pbt" and not sweep.space:
        raise ConfigError("scheduler pbt needs a non-empty space to mutate")


def _named(what: str, value: Any, known: tuple[str, ...]) -> dict[str, Any]:
    spec = {"name": value} if isinstance(value, str) else dict(value or {})
    spec["name"] = _one_of(f"{what}.name", spec.get("name", known[0]), known)
    return spec


def _one_of(what: str, value: Any, known: tuple[str, ...]) -> str:
    if value not in known:
        raise ConfigError(f"{what}={value!r} is not one of {', '.join(known)}")
    return value


def _positive(what: str, value: Any) -> int:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what}={value!r} must be a positive integer")
    return value
