"""Model soups (Wortsman et al. 2022): weight averages of checkpoints of one architecture.

- uniform soup: the plain average of every checkpoint's weights;
- greedy soup: checkpoints sorted by their own val recall@1, best first; each is added to the
  soup only if the soup's val recall@1 strictly improves with it (the paper keeps ties; we
  drop them so that a soup never grows without a measured gain).
Floating-point tensors are averaged; integer buffers (BatchNorm's `num_batches_tracked`) are
taken from the first ingredient.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dist_geo.errors import CheckpointError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


def check_same_architecture(states: Sequence[StateDict], names: Sequence[str]) -> None:
    """CheckpointError naming the first checkpoint whose keys or shapes differ from the first."""
    ref = states[0]
    for state, name in zip(states[1:], names[1:]):
        if state.keys() != ref.keys():
            raise CheckpointError(
                f"{name}: parameters differ from {names[0]} (not one architecture)")
        for key, value in state.items():
            if value.shape != ref[key].shape:
                raise CheckpointError(
                    f"{name}: {key} has shape {tuple(value.shape)}, {names[0]} has "
                    f"{tuple(ref[key].shape)} (not one architecture)"
                )


def average_state_dicts(states: Sequence[StateDict]) -> StateDict:
    if not states:
        raise ValueError("a soup needs at least one checkpoint")
    soup: StateDict = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            soup[key] = torch.stack([s[key].float() for s in states]).mean(0).to(first.dtype)
        else:
            soup[key] = first.clone()
    return soup


@dataclass
class GreedySoup:
    state_dict: StateDict
    ingredients: list[int]  # indices into the input checkpoints, in the order added
    individual_scores: list[float]  # each checkpoint's own val recall@1
    score: float  # the soup's val recall@1


def greedy_soup(states: Sequence[StateDict], score: Callable[[StateDict], float]) -> GreedySoup:
    """`score(state_dict)` is the val recall@1 of a model holding those weights."""
    individual = [score(s) for s in states]
    order = sorted(range(len(states)), key=lambda i: individual[i], reverse=True)
    ingredients = [order[0]]
    best = individual[order[0]]
    for i in order[1:]:
        candidate = score(average_state_dicts([states[j] for j in ingredients + [i]]))
        log.info("greedy soup: checkpoint %d (alone %.2f) -> soup %.2f (best %.2f)",
                 i, individual[i], candidate, best)
        if candidate > best:
            ingredients.append(i)
            best = candidate
    return GreedySoup(
        average_state_dicts([states[j] for j in ingredients]), ingredients, individual, best
    )
