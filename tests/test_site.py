"""Site layers: a site's own profiles, sweeps, models and templates before the shipped ones.

A site folder (``site_dir=`` or ``SCALELADDER_SITE_DIR``) holds ``cluster/``, ``sweep/``, ``model/``,
``slurm/`` and ``lsf/``; its profiles may extend a shipped one and state only what differs, its
templates may extend a shipped template, and the job scripts pass the layers on to their steps.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from launcher import cli
from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose
from launcher.config.validate import validate
from launcher.errors import UserError
from launcher.run.describe import describe
from test_render import SETUP, render_all, shellcheck, steps

REPO = Path(__file__).resolve().parent.parent
COMMON = ("cluster.ladder_command=ladder", f"cluster.setup=[{SETUP!r}]")
# the three lines a site states over the shipped frontier profile
MYSITE = """\
# @package cluster
defaults: [frontier, _self_]
account: XYZ789
partition: extended
modules: [PrgEnv-gnu, rocm/6.2.4]
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def site(tmp_path) -> Path:
    return write(tmp_path / "site", {"cluster/mysite.yaml": MYSITE})


def profile(*overrides: str) -> ClusterProfile:
    return validate(ClusterProfile, compose(list(overrides))["cluster"], "cluster")


def scenarios(*overrides: str) -> dict[str, str]:
    """The golden Frontier scenarios of tests/test_render.py, rendered with ``overrides``."""
    p = profile(*COMMON, *overrides)
    jobs = {
        "packed": (p, steps(24, [0.4 + 0.07 * i for i in range(24)])),
        "multinode": (p, steps(3, 1.0, nodes=2, ranks=16, prefix="m")),
        "array": (dataclasses.replace(p, submission="array"), steps(5, [0.5, 1.0, 1.5, 0.2, 0.1])),
    }
    return {
        f"{scenario}-{name}": text
        for scenario, (chosen, runs) in jobs.items()
        for name, text in render_all(chosen, runs).items()
    }


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines removed from ``before`` and added in ``after``, line by line."""
    removed, added = [], []
    a, b = before.splitlines(), after.splitlines()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += a[i1:i2]
            added += b[j1:j2]
    return removed, added


def test_a_three_line_profile_changes_only_the_lines_of_what_it_set(site, tmp_path):
    shipped = scenarios("cluster=frontier")
    mine = scenarios("cluster=mysite", f"site_dir={site}")
    assert shipped.keys() == mine.keys() and len(shipped) >= 3
    for name in shipped:
        removed, added = changed_lines(shipped[name], mine[name])
        assert removed == [
            "#SBATCH --partition=batch",
            "module load rocm/6.4.1",
            "module load craype-accel-amd-gfx90a",
            "module load rccl-net-plugin",
        ], name
        assert added == [
            "#SBATCH --account=XYZ789",
            "#SBATCH --partition=extended",
            "module load rocm/6.2.4",
            f"export SCALELADDER_SITE_DIR={site}",
        ], name  # the steps compose with the same layers
        shellcheck(mine[name], tmp_path, f"{name}.sbatch")


def test_the_site_profile_is_the_shipped_one_but_for_what_it_set(site):
    mine, shipped = profile("cluster=mysite", f"site_dir={site}"), profile("cluster=frontier")
    expected = dataclasses.replace(
        shipped, account="XYZ789", partition="extended", modules=["PrgEnv-gnu", "rocm/6.2.4"], site_dirs=[str(site)]
    )
    assert mine == expected
    assert profile("cluster=mysite", f"site_dir={site}", "cluster.max_retries=5").max_retries == 5


def test_a_site_template_extends_the_shipped_template_of_the_same_name(site, tmp_path):
    # super() is template text: `script` prints it as it is (every other {{ }} is quoted for the shell)
    write(
        site,
        {
            "slurm/frontier.sbatch.j2": '{% extends "shipped/frontier.sbatch.j2" %}\n'
            "{% block directives %}\n{{ super() | script }}#SBATCH --constraint=nvme\n"
            "{% endblock %}\n"
        },
    )
    shipped = scenarios("cluster=frontier")
    mine = scenarios("cluster=frontier", f"site_dir={site}")
    for name in shipped:
        assert changed_lines(shipped[name], mine[name]) == (
            [],
            ["#SBATCH --constraint=nvme", f"export SCALELADDER_SITE_DIR={site}"],
        ), name
        shellcheck(mine[name], tmp_path, f"{name}.sbatch")


def test_a_site_template_extends_the_base_and_overrides_a_block(site):
    write(
        site,
        {
            "cluster/hooked.yaml": "# @package cluster\ndefaults: [frontier, _self_]\ntemplate: hooked.sbatch.j2\n",
            "slurm/hooked.sbatch.j2": '{% extends "base.sbatch.j2" %}\n'
            "{% block before_steps %}\necho site hook\n{% endblock %}\n",
        },
    )
    shipped = scenarios("cluster=frontier")
    mine = scenarios("cluster=hooked", f"site_dir={site}")
    for name in shipped:  # the hook replaces frontier's own before_steps block (the MIOpen folder)
        assert changed_lines(shipped[name], mine[name]) == (
            ['srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 mkdir -p "$MIOPEN_USER_DB_PATH"'],
            [f"export SCALELADDER_SITE_DIR={site}", "echo site hook"],
        ), name


def test_a_site_lsf_template_extends_summit_and_the_export_is_one_shell_word(tmp_path):
    spaced = write(
        tmp_path / "my site",
        {
            "lsf/summit.j2": '{% extends "shipped/summit.j2" %}\n'
            "{% block before_steps %}\necho summit hook\n"
            "{% endblock %}\n"
        },
    )
    other = write(tmp_path / "other", {"cluster/README": ""})  # a second layer with nothing to say here
    (text,) = render_all(profile("cluster=summit", f"site_dir={spaced}:{other}"), steps(2, 0.2)).values()
    (plain,) = render_all(profile("cluster=summit"), steps(2, 0.2)).values()
    export = f"export SCALELADDER_SITE_DIR='{spaced}:{other}'"
    assert changed_lines(plain, text) == ([], [export, "echo summit hook"])
    seen = subprocess.run(
        ["bash", "-c", f'{export}; printf %s "$SCALELADDER_SITE_DIR"'], capture_output=True, text=True, check=True
    ).stdout
    assert seen == f"{spaced}:{other}"


def test_site_dir_comes_before_the_environment_and_earlier_layers_win(tmp_path, monkeypatch):
    first = write(
        tmp_path / "a",
        {
            "cluster/mysite.yaml": MYSITE.replace("XYZ789", "FIRST"),
            "slurm/frontier.sbatch.j2": '{% extends "shipped/frontier.sbatch.j2" %}\n'
            "{% block before_steps %}\necho a\n{% endblock %}\n",
        },
    )
    second = write(
        tmp_path / "b",
        {
            "cluster/mysite.yaml": MYSITE.replace("XYZ789", "SECOND"),
            "slurm/frontier.sbatch.j2": '{% extends "shipped/frontier.sbatch.j2" %}\n'
            "{% block before_steps %}\necho b\n{% endblock %}\n",
        },
    )
    monkeypatch.setenv("SCALELADDER_SITE_DIR", f"{second}")
    assert profile("cluster=mysite").account == "SECOND"
    chosen = profile("cluster=mysite", f"site_dir={first}")
    assert (chosen.account, chosen.site_dirs) == ("FIRST", [str(first), str(second)])
    (text,) = render_all(dataclasses.replace(chosen, ladder_command="ladder"), steps(1, 0.2)).values()
    assert "echo a\n" in text and "echo b\n" not in text
    monkeypatch.setenv("SCALELADDER_SITE_DIR", f"{second}:{first}")
    assert profile("cluster=mysite").account == "SECOND"


def test_a_site_model_and_sweep_are_found(tmp_path):
    site = write(
        tmp_path / "site",
        {
            "model/gpt_neox/site_small.yaml": "# @package model\ndefaults: [gpt_neox/tiny, _self_]\nn_layer: 3\n"
            "d_model: 96\n",
            "sweep/site_grid.yaml": "# @package sweep\nname: site_grid\nkind: grid\nmodel: gpt_neox/site_small\n"
            "shapes: [{n_layer: 2}, {n_layer: 4}]\ntokens: [1.0e+5]\n",
        },
    )
    assert describe(["model=gpt_neox/site_small", f"site_dir={site}"]) == describe(
        ["model=gpt_neox/tiny", "model.n_layer=3", "model.d_model=96"]
    )
    composed = compose(["sweep=site_grid", f"site_dir={site}"])
    assert composed["sweep"]["model"] == "gpt_neox/site_small" and composed["sweep"]["shapes"][1] == {"n_layer": 4}
    with pytest.raises(UserError, match=r"model: 'gpt_neox/nope' is not an option; allowed: .*gpt_neox/site_small"):
        compose(["model=gpt_neox/nope", f"site_dir={site}"])


@pytest.mark.parametrize(
    "given, message",
    [
        ("site_dir={missing}", "site_dir: '{missing}' is not a folder; give site folders holding cluster/, sweep/"),
        ("site_dir={empty}", "site_dir: '{empty}' holds none of the folders scaleladder reads; give site folders"),
        ("env:{missing}", "SCALELADDER_SITE_DIR: '{missing}' is not a folder"),
        ("site_dir={bad_profile}", "cluster.acount: unknown field (did you mean 'account'?)"),
    ],
)
def test_a_bad_site_folder_is_one_line_naming_the_field(given, message, tmp_path, monkeypatch, capsys):
    places = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "bad_profile": write(tmp_path / "bad", {"cluster/mysite.yaml": MYSITE + "acount: X\n"}),
    }
    places["empty"].mkdir()
    given, message = given.format(**places), message.format(**places)
    if given.startswith("env:"):
        monkeypatch.setenv("SCALELADDER_SITE_DIR", given[4:])
    assert cli.main(["show", "cluster=mysite", *([given] if not given.startswith("env:") else [])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ladder show: error: {message}"), captured.err


def test_show_prints_the_resolved_profile_and_where_each_option_came_from(site, capsys):
    write(site, {"model/gpt_neox/site_small.yaml": "# @package model\ndefaults: [gpt_neox/tiny, _self_]\nn_layer: 3\n"})
    overrides = [
        "cluster=mysite",
        f"site_dir={site}",
        "model=gpt_neox/site_small",
        "sweep=tiny",
        "cluster.max_retries=5",
    ]
    assert cli.main(["show", *overrides]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert cli.main(["show", "--json", *overrides]) == 0
    assert json.loads(capsys.readouterr().out) == shown
    expected = dataclasses.asdict(profile("cluster=frontier"))
    expected.update(
        account="XYZ789",
        partition="extended",
        modules=["PrgEnv-gnu", "rocm/6.2.4"],
        max_retries=5,
        site_dirs=[str(site)],
    )
    assert shown["cluster"] == expected
    sources = shown["sources"]
    assert list(sources) == ["model", "data", "train", "deepspeed", "cluster", "sweep"]
    shipped = REPO / "hydra_configs"

    def entry(group: str, option: str, layer: Path | None, extended_by: str | None = None) -> dict:
        path = (layer or shipped) / group / f"{option}.yaml"
        return {
            "option": option,
            "layer": str(layer) if layer else "shipped",
            "file": path,
            **({"extended_by": extended_by} if extended_by else {}),
        }

    def resolved(entries: list[dict]) -> list[dict]:
        return [{**e, "file": Path(e["file"]).resolve()} for e in entries]

    assert resolved(sources["cluster"]) == [
        entry("cluster", "frontier", None, "cluster/mysite"),
        entry("cluster", "mysite", site),
    ]
    assert resolved(sources["model"]) == [
        entry("model", "gpt_neox/tiny", None, "model/gpt_neox/site_small"),
        entry("model", "gpt_neox/site_small", site),
    ]
    assert resolved(sources["sweep"]) == [entry("sweep", "tiny", None)]
    assert resolved(sources["deepspeed"]) == [entry("deepspeed", "zero0", None)]


def test_each_shipped_profile_lists_only_what_it_sets():
    """The defaults live in one place, ClusterProfile's fields; a profile names what differs (and its name)."""
    defaults = dataclasses.asdict(ClusterProfile())
    for path in sorted((REPO / "hydra_configs" / "cluster").glob("*.yaml")):
        listed = yaml.safe_load(path.read_text())
        assert listed["name"] == path.stem
        same = [k for k, v in listed.items() if k != "name" and v == defaults[k]]
        assert not same, f"{path.name} repeats defaults of launcher/config/cluster.py: {same}"
