"""Data flow one way: every import in launcher/ and models/ (top-level, in functions, under TYPE_CHECKING)
goes to the importer's own layer or one below it, and models/ knows nothing of the launcher."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Bottom first. A module may import its own layer and the layers before it, never one after it.
LAYERS: list[tuple[str, ...]] = [
    # the rules every room shares, once: errors, whole-file writes, exit codes and retry, shipped and
    # site folders, number formatting, content hashes, the command-line shape
    (
        "launcher.errors",
        "launcher.files",
        "launcher.policy",
        "launcher.resources",
        "launcher.numbers",
        "launcher.identity",
        "launcher.arguments",
        "launcher.locks",
    ),
    # pure PyTorch model families and their registry: what everything above builds, counts and validates
    ("models",),
    # Hydra composition and the typed run and cluster configs (model and data sections checked by models/)
    ("launcher.config",),
    # one rank of one run: it needs only a run config. It executes after submit, yet sits below the
    # login-node rooms in imports because they read what it writes (metrics.jsonl) through its readers
    ("launcher.run",),
    # config -> plan -> job database -> pack -> schedulers: each consumes the one before it
    ("launcher.sweep.proposal",),  # the next round's file, read back by the planner
    ("launcher.sweep.plan",),
    ("launcher.sweep.jobdb",),
    ("launcher.sweep.rebuild",),  # the job database again, from plan.json and the runs' own files
    ("launcher.sweep.pack",),  # PackedJob is the schedulers' input, so pack never imports them
    ("launcher.schedulers",),
    # the login-node drivers: calibration runs and batch submission, then what reads their state
    ("launcher.sweep.calibrate", "launcher.sweep.submit", "launcher.sweep.rebuild"),
    ("launcher.sweep.status", "launcher.sweep.local"),
    ("launcher.sweep.study",),  # a scaling study: a plan of its own through submit or the local runner
    # back on the login node: collect -> fit -> the sweep fit -> W&B -> report
    ("launcher.analysis.collect", "launcher.analysis.spent"),
    ("launcher.analysis.fit",),
    ("launcher.analysis.fitting",),
    ("launcher.analysis.propose",),  # the next round, from the fit: reads fit.json and plan.json
    ("launcher.analysis.wandb_sync",),
    ("launcher.analysis.report",),
    ("launcher.analysis.project",),  # from the fit and the report to the target run and proposal.md
    ("launcher.analysis.target",),  # the projection as one run of the sweep, submitted (ladder submit --target)
    ("launcher.analysis.watch",),  # follows the runs and syncs their W&B folders, from a login node
    # the top: the commands that chain rooms (sweep, then collect, fit, report) and the dispatcher
    ("launcher.commands", "launcher.cli"),
]
EMPTY_PACKAGES = {"launcher", "launcher.config", "launcher.run", "launcher.sweep", "launcher.analysis"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(p): p
    for root in ("launcher", "models")
    for p in sorted((REPO / root).rglob("*.py"))
    if "_shipped" not in p.parts
}


def layer(name: str) -> int | None:
    """The index of the layer holding ``name`` (the longest declared prefix), None when none does."""
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def imports(name: str) -> list[tuple[int, str]]:
    """(line, module) of every launcher/models import anywhere in the module, resolved to the module imported."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from launcher.run import rendezvous` imports launcher.run.rendezvous
                found.append((node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base))
    return [(line, target) for line, target in found if target.split(".")[0] in ("launcher", "models")]


def test_every_module_has_a_layer():
    assert [n for n in MODULES if layer(n) is None and n not in EMPTY_PACKAGES] == []
    assert [n for n in EMPTY_PACKAGES if imports(n)] == []


@pytest.mark.parametrize("name", [n for n in MODULES if n not in EMPTY_PACKAGES])
def test_no_module_imports_a_layer_above_it(name):
    own = layer(name)
    upward = [
        f"{MODULES[name].relative_to(REPO)}:{line} imports {target} (layer {layer(target)} > {own})"
        for line, target in imports(name)
        if target not in EMPTY_PACKAGES and layer(target) > own
    ]
    assert upward == []


def test_models_import_nothing_of_the_launcher():
    """models/ is pure PyTorch (DESIGN.md): the launcher builds on it, never the other way round."""
    found = [
        (name, line, target)
        for name in MODULES
        if name.split(".")[0] == "models"
        for line, target in imports(name)
        if target.split(".")[0] == "launcher"
    ]
    assert found == []
