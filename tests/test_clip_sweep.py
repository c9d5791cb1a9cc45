"""The shipped CLIP sweep for real: `ladder sweep sweep=clip_tiny` trains six CLIP runs on digits, and its
report shows zero-shot accuracy fitted in two steps, (N, D) -> loss -> accuracy through a sigmoid."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest

from launcher.analysis.fit.twostage import Sigmoid
from test_sweep_local import FAST, env, ladder

pytestmark = pytest.mark.slow  # about 1.5 min on 2 cores: six real trainings


def last_logged(path, key: str) -> float:
    """The last finite value of ``key`` in a metrics.jsonl, read line by line here (not by collect)."""
    values = [r[key] for r in map(json.loads, path.read_text().splitlines()) if r.get(key) is not None]
    return float([v for v in values if math.isfinite(v)][-1])


def test_clip_tiny_sweep_reports_the_two_step_fit_of_zero_shot_accuracy(tmp_path):
    done = subprocess.run(
        ladder("sweep", "sweep=clip_tiny", f"sweeps_root={tmp_path}", *FAST),
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sweep_dir = tmp_path / "clip_tiny"
    fit = json.loads((sweep_dir / "fit.json").read_text())
    part = fit["metrics"]["zero_shot_acc"]
    assert part["approach"] == "two_stage" and part["loss_approach"] == "3" and part["not_logged"] == []
    law = part["metric_law"]
    assert law["link"] == "sigmoid" and law["bounds"] == [0.0, 1.0]
    assert all(math.isfinite(law[k]) for k in ("a", "b", "k", "L0", "rmse"))
    assert law["k"] < 0  # accuracy rises as the loss falls

    fitted = [p for p in part["predictions"] if p["kind"] == "fitted"]
    runs = sorted(p.name for p in (sweep_dir / "runs").iterdir())
    assert sorted(p["name"] for p in fitted) == runs and len(runs) == 6
    observed_loss, observed_acc = [], []
    for p in fitted:
        metrics = sweep_dir / "runs" / p["name"] / "metrics.jsonl"
        observed_acc.append(last_logged(metrics, "zero_shot_acc"))
        observed_loss.append(last_logged(metrics, "val_loss"))
        assert p["observed"] == pytest.approx(observed_acc[-1], abs=1e-12)
        # step 2 applied to step 1's loss
        assert p["metric"] == pytest.approx(float(Sigmoid.value(law, np.array(p["loss"]))), rel=1e-9)
    # the link is the least-squares fit of each run's accuracy on its own final val_loss: its rmse is that residual
    residual = Sigmoid.value(law, np.array(observed_loss)) - np.array(observed_acc)
    assert law["rmse"] == pytest.approx(float(np.sqrt(np.mean(residual**2))), rel=1e-6)
    assert law["rmse"] < np.std(observed_acc)

    page = (sweep_dir / "report.html").read_text()
    assert "<h2>Downstream metrics</h2>" in page
    numbers = ", ".join(f"{k} = {law[k]:.3g}" for k in ("a", "b", "k", "L0", "rmse"))
    assert (
        "<b>zero_shot_acc</b> in two steps: (N, D) → loss by approach 3, then loss → zero_shot_acc by the sigmoid "
        f"link ({numbers})"
    ) in page
    for p in fitted:
        assert f'<td class="l">{p["name"]}</td><td class="l">fitted</td><td>{p["loss"]:.4f}</td>' in page
    assert (sweep_dir / "plots" / "metric_zero_shot_acc.png").stat().st_size > 0
