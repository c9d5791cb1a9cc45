"""Hydra composition over the site layers and the shipped ``hydra_configs/``.

Hydra composes the run from the groups (model, data, train, deepspeed, cluster, sweep); a site folder's
group files come first (launcher/resources.py), so ``cluster/mysite.yaml`` may name a shipped profile in
its ``defaults`` and set only what differs. The result is a plain dict for ``validate``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from launcher.errors import UserError
from launcher.resources import shipped, split_site_override


def config_layers(site: list[Path]) -> list[Path]:
    """The config folders searched in order: the site layers, then the shipped ``hydra_configs/``."""
    return [*site, shipped("hydra_configs")]


def compose(overrides: list[str], config_name: str = "config") -> dict:
    """Compose ``config_name`` with Hydra overrides into a plain, resolved dict.

    ``site_dir=`` and ``SCALELADDER_SITE_DIR`` add site layers before the shipped configs. Value overrides
    are applied with Hydra's ``++`` (set or add): a field that a YAML file does not list (say
    ``cluster.max_retries`` on a short profile) is as settable as one it does, and a typo reaches
    ``validate``, whose message names the field, the nearest real one and every allowed one.
    """
    from hydra import compose as hydra_compose
    from omegaconf import OmegaConf

    hydra_overrides, site, layers = _prepare(overrides)
    with _explained(layers), _hydra(layers):
        composed = OmegaConf.to_container(
            hydra_compose(config_name=config_name, overrides=hydra_overrides), resolve=True
        )
    assert isinstance(composed, dict)  # a config file is a mapping
    if isinstance(composed.get("cluster"), dict):  # the renderer searches the same layers for templates
        composed["cluster"]["site_dirs"] = [str(p) for p in site]
    return composed


def defaults_chain(overrides: list[str], config_name: str = "config") -> list[tuple[str, str]]:
    """Every group config the composition merges, in Hydra's order (a later one overrides an earlier),
    each with the config whose defaults named it: ``("cluster/frontier", "cluster/mysite")`` for a site
    profile extending a shipped one, ``("cluster/mysite", "config")`` for the option chosen."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    hydra_overrides, _, layers = _prepare(overrides)
    with _explained(layers), _hydra(layers):
        found = GlobalHydra.instance().config_loader().compute_defaults_list(config_name, hydra_overrides, RunMode.RUN)
    return [
        (d.config_path, d.parent)
        for d in found.defaults
        if d.config_path and "/" in d.config_path and _is_group(d.config_path.split("/")[0], layers)
    ]


def _prepare(overrides: list[str]) -> tuple[list[str], list[Path], list[Path]]:
    """Hydra's overrides (``site_dir=`` taken out, values as ``++``), the site layers and every layer."""
    rest, site = split_site_override(overrides)
    layers = config_layers(site)
    return [_set_or_add(o, layers) for o in rest], site, layers


@contextlib.contextmanager
def _explained(layers: list[Path]) -> Iterator[None]:
    """Hydra's and OmegaConf's errors, and a config file's YAML syntax error, as one UserError line."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(_explain(str(exc), layers)) from None
    except yaml.YAMLError as exc:
        raise UserError(_yaml_error(exc)) from None


def _yaml_error(exc) -> str:
    """``file:line:column: not valid YAML: what`` for a config file that does not parse."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else "a config file"
    what = getattr(exc, "problem", None) or _first_line(str(exc))
    return f"{where}: not valid YAML: {what}"


@contextlib.contextmanager
def _hydra(layers: list[Path]) -> Iterator[None]:
    """Hydra initialised with ``layers`` before its own configs (what initialize_config_dir does for one)."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    version.setbase(None)
    search_path = create_config_search_path(f"file://{layers[-1]}")
    for layer in layers[:-1]:
        search_path.prepend("site", f"file://{layer}", anchor=SearchPathQuery(provider="main"))
    backup = get_gh_backup()  # a caller that is itself a Hydra app keeps its own state
    GlobalHydra.instance().clear()
    Hydra.create_main_hydra2(task_name="ladder", config_search_path=search_path)
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


def _is_group(key: str, layers: list[Path]) -> bool:
    return any((layer / key).is_dir() for layer in layers)


def _set_or_add(override: str, layers: list[Path]) -> str:
    """``key=value`` becomes ``++key=value`` unless it picks a config group option (``model=clip/tiny``)."""
    key, sep, _ = override.partition("=")
    if not sep or key.startswith(("+", "~")) or _is_group(key, layers):
        return override
    return "++" + override


def _explain(text: str, layers: list[Path]) -> str:
    """Hydra's message as one line naming the group and what is allowed."""
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing and _is_group(missing.group(1), layers):
        group, option = missing.groups()
        return f"{group}: {option!r} is not an option; allowed: {', '.join(group_options(group, layers))}"
    return _first_line(text)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text


def group_options(group: str, layers: list[Path] | None = None) -> list[str]:
    """The options a config group offers in every layer (``model`` -> ``gpt_neox/tiny``, ...)."""
    found: set[str] = set()
    for layer in layers if layers is not None else config_layers(split_site_override([])[1]):
        root = layer / group
        if root.is_dir():
            found.update(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    return sorted(found)


def option_file(group: str, option: str, layers: list[Path]) -> Path | None:
    """The file an option of a group comes from: the first layer that has it."""
    for layer in layers:
        path = layer / group / f"{option}.yaml"
        if path.is_file():
            return path
    return None
