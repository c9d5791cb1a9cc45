"""``ladder describe <overrides> [--json]``: a model's exact size and training cost, without building it.

The numbers come from the family's analytic accounting (the same the planner and the fits use), so
describing a 12B model takes a second and no memory. JSON keys: ``params_total``,
``params_non_embedding``, ``flops_per_token`` (training FLOPs, forward and backward; per sample for
families whose "token" is a sample, such as CLIP).
"""

from __future__ import annotations

import json

from launcher.config.run import load_run_config
from launcher.errors import UserError

USAGE = "usage: ladder describe [model=<group option>] [model.<field>=<value> ...] [--json]"


def describe(overrides: list[str]) -> dict[str, int]:
    """The family registry's counts for the composed model; no data is opened and no module built."""
    from models.family import family, model_config

    model = load_run_config(overrides).model  # checked there
    entry, cfg = family(model["family"]), model_config(model)
    total, non_embedding = entry.param_counts(cfg)
    return {
        "params_total": int(total),
        "params_non_embedding": int(non_embedding),
        "flops_per_token": int(entry.flops_per_token(cfg)),
    }


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE)
        return 0
    flags = [arg for arg in argv if arg.startswith("-")]
    if any(flag != "--json" for flag in flags):
        raise UserError(f"{next(f for f in flags if f != '--json')}: unknown option; allowed: --json")
    numbers = describe([arg for arg in argv if arg != "--json"])
    if "--json" in flags:
        print(json.dumps(numbers))
    else:
        width = max(map(len, numbers))
        for key, value in numbers.items():
            print(f"{key.ljust(width)}  {value:>18,}")
    return 0
