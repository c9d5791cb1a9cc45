"""``ladder show cluster=NAME [overrides] [--json]``: a cluster profile resolved, and where it came from.

A site profile may be a few lines over a shipped one, in a site layer before the shipped configs; before
submitting, an admin needs to see every field as the jobs will get it and which file (site layer or
shipped) each config group option was read from, including the profiles a profile's own ``defaults``
extend. The YAML (or ``--json``) has two keys: ``cluster`` (every field of the validated profile) and
``sources`` (per group, its files in the order Hydra merges them: a later one overrides an earlier).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from launcher.arguments import command_parser
from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose, config_layers, defaults_chain, option_file
from launcher.config.validate import validate
from launcher.resources import shipped, split_site_override

SOURCES_NOTE = "# each group's files in the order Hydra merges them: a later one overrides an earlier\n"


def show(overrides: list[str]) -> dict:
    """The resolved profile and the sources of every group option in use."""
    profile = validate(ClusterProfile, compose(overrides)["cluster"], "cluster")
    return {"cluster": dataclasses.asdict(profile), "sources": sources(overrides)}


def sources(overrides: list[str]) -> dict[str, list[dict[str, str]]]:
    """Per group, each option merged: its file, its layer (a site folder or "shipped") and, for an option
    another one's ``defaults`` named, that one (``extended_by: cluster/mysite``)."""
    layers = config_layers(split_site_override(overrides)[1])
    found: dict[str, list[dict[str, str]]] = {}
    for config_path, parent in defaults_chain(overrides):
        group, _, option = config_path.partition("/")
        path = option_file(group, option, layers)
        assert path is not None, config_path  # Hydra read it from one of these layers
        entry = {"option": option, "file": str(path), "layer": _layer_name(path, layers)}
        if parent.partition("/")[0] == group:
            entry["extended_by"] = parent
        found.setdefault(group, []).append(entry)
    return found


def _layer_name(path: Path, layers: list[Path]) -> str:
    layer = next(layer for layer in layers if path.is_relative_to(layer))
    return "shipped" if layer == shipped("hydra_configs") else str(layer)


def main(argv: list[str]) -> int:
    args = command_parser(
        "ladder show",
        "Print a cluster profile resolved, and the file each config group option came from.",
        [("--json", "print JSON instead of YAML")],
        overrides_help="Hydra overrides, e.g. cluster=frontier site_dir=/site",
    ).parse(argv)
    shown = show(args.overrides)
    if args.json:
        print(json.dumps(shown, indent=1))
    else:
        print(yaml.safe_dump({"cluster": shown["cluster"]}, sort_keys=False), end="")
        print(SOURCES_NOTE + yaml.safe_dump({"sources": shown["sources"]}, sort_keys=False), end="")
    return 0
