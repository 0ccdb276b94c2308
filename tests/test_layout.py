"""The package's shape: stage folders in the order the data flows, imports only going down.

Every module of dist_geo is parsed; its module-level imports of dist_geo (`import x`,
`from x import y`, also inside module-level `if`/`try`) are its arrows. Imports inside
functions are not arrows: the dispatcher's lazy sub-commands and the few documented optional
dependencies are the only ones left.
"""
from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dist_geo"
# common (dist_geo/*.py) < the stage folders, in the order the data flows < the top commands.
STAGES = ("common", "data", "shards", "loaders", "model", "eval", "train", "tuning", "top")
TOP_MODULES = {"cli", "demo", "bench_cli", "config_cli"}
USER_FOLDERS = ("launch", "tuning", "shards")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or len(parts) == 2 and parts[1] in STAGES:
        return parts[1]
    return "top" if len(parts) == 2 and parts[1] in TOP_MODULES else "common"


def module_level(body: list[ast.stmt]):
    """The import statements of `body` outside functions and classes."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for block in ("body", "orelse", "finalbody", "handlers"):
                yield from module_level(getattr(node, block, []))


def arrows(module: str) -> set[str]:
    """The dist_geo modules `module` imports at module level."""
    targets = set()
    for node in module_level(ast.parse(MODULES[module].read_text()).body):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names if a.name.split(".")[0] == "dist_geo"}
            continue
        assert node.level == 0, f"{module}: relative import"
        if (node.module or "").split(".")[0] != "dist_geo":
            continue
        for alias in node.names:  # `from dist_geo.tuning import report` names a module
            sub = f"{node.module}.{alias.name}"
            targets.add(sub if sub in MODULES else node.module)
    return targets - {module}


GRAPH = {module: arrows(module) for module in MODULES}


def test_every_import_goes_to_the_same_or_an_earlier_stage():
    upward = sorted(f"{src} ({stage(src)}) -> {dst} ({stage(dst)})"
                    for src, targets in GRAPH.items() for dst in targets
                    if STAGES.index(stage(dst)) > STAGES.index(stage(src)))
    assert not upward, "imports into a later stage:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` as a path of nodes, or [] when there is none."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_cycle_between_stages_or_modules():
    stages: dict[str, set[str]] = {}
    for src, targets in GRAPH.items():
        stages.setdefault(stage(src), set()).update(stage(t) for t in targets if stage(t) != stage(src))
    assert find_cycle(stages) == []
    assert find_cycle(GRAPH) == []


def test_tests_mirror_the_stage_folders_with_unique_module_names():
    folders = {p.parent.name for p in (ROOT / "tests").glob("*/test_*.py")}
    assert folders <= set(STAGES) and folders >= {"data", "shards", "loaders", "model", "eval",
                                                  "train", "tuning"}
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names))


def test_only_dist_geo_is_installed_and_user_folders_hold_no_library_code():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    include = setup["options.packages.find"]["include"].split()
    packages = find_packages(where=str(ROOT), include=include)
    assert "dist_geo.shards" in packages and "dist_geo.tuning" in packages
    assert all(p.split(".")[0] == "dist_geo" for p in packages)
    for folder in USER_FOLDERS:
        assert not list((ROOT / folder).rglob("*.py")), f"{folder}/ holds Python code"
    # The bundled sweeps users edit in tuning/sweeps/ are the package's (package data).
    assert (PACKAGE / "tuning" / "sweeps").resolve() == (ROOT / "tuning" / "sweeps").resolve()
    assert "tuning/sweeps/*.yaml" in setup["options.package_data"]["dist_geo"].split()


def test_no_top_level_shards_or_tuning_importable_outside_the_checkout(tmp_path):
    check = ("import importlib.util as u, dist_geo.shards, dist_geo.tuning; "
             "print([n for n in ('shards', 'tuning') if u.find_spec(n) is not None])")
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["dist_geo.eval.loading", "dist_geo.eval.cli"])
def test_evaluation_reads_checkpoints_without_the_trainer(module):
    reached, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in reached:
            reached.add(current)
            todo += GRAPH[current]
    assert not {m for m in reached if stage(m) in ("train", "tuning")}
