"""The paper's robustness claim, measured (tools/robustness.py): where pre-activations are exactly zero,
lrp0 breaks and epsilon depends on ε, while R-LRP stays finite and equals its oracle."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import robustness  # noqa: E402


def rows_by_rule(rows):
    return {row["rule"]: row for row in rows}


def test_bias_free_cnn_with_black_borders(tmp_path):
    rows = rows_by_rule(robustness.compare(*robustness.bias_free_case(tmp_path)))
    rlrp, lrp0 = rows["rlrp"], rows["lrp0"]
    assert rlrp["nonfinite"] == 0 and rlrp["oracle err"] < 1e-4
    assert rlrp["sum R/f"] == pytest.approx(1.0, abs=1e-4)  # bias-free: conservation is exact
    assert lrp0["nonfinite"] > 0.1                            # 0/0 over the border and dead units
    eps_small, eps_large = rows["epsilon 1e-06"], rows["epsilon 1"]
    assert eps_small["nonfinite"] == 0 and eps_large["nonfinite"] == 0
    assert eps_large["corr"] < 0.9                            # the heatmap changes with ε
    assert eps_small["sum R/f"] - eps_large["sum R/f"] > 0.5  # and so does the conserved share


def test_efficientnet_on_real_photos():
    rows = rows_by_rule(robustness.compare(*robustness.efficientnet_case()))
    assert rows["rlrp"]["nonfinite"] == 0 and rows["rlrp"]["oracle err"] < 1e-4
    assert rows["epsilon 0.1"]["corr"] < 0.9 and rows["epsilon 1"]["corr"] < 0.5
