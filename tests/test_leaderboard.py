"""The seeds experiment's leaderboard (camgap.experiments): what it reads from a demo's written
tables, its means and ranges against hand computation, and the quick run end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from camgap import cli
from camgap.experiments import default_out, leaderboard, leaderboard_display, seed_board

LONG = ["arch", "measure", "column", "pearson", "spearman", "kendall", "ci_low", "ci_high", "n"]


def _write_tables(study, rows3, rows6, rows7, ranking):
    tables = study / "tables"
    tables.mkdir(parents=True)
    for k, rows in ((3, rows3), (6, rows6), (7, rows7)):
        pd.DataFrame(rows, columns=LONG).to_csv(tables / f"table{k}_long.csv", index=False)
    pd.DataFrame(ranking, columns=["measure", "n", "psi", "cmi"]).to_csv(tables / "ranking.csv", index=False)


def test_seed_board_reads_total_cells_at_the_threshold_and_the_ranking(tmp_path):
    _write_tables(
        tmp_path,
        rows3=[
            ("Total", "IoU", ">=80", -0.8, -0.7, -0.6, -0.9, -0.7, 40),
            ("Total", "IoU", ">=0", -0.1, 0, 0, -0.3, 0.1, 60),  # another threshold: not read
            ("small_resnet10", "IoU", ">=80", -0.5, 0, 0, -0.8, -0.2, 20),  # one architecture: not read
            ("Total", "EI", ">=80", -0.9, -0.8, -0.7, -0.95, -0.85, 40),
        ],
        rows6=[
            ("Total", "IoU (Using GradCAM)", ">=80", -0.8, -0.7, -0.6, -0.9, -0.7, 40),  # the primary again
            ("Total", "IoU (Using GradCAM++)", ">=80", -0.6, -0.5, -0.4, -0.7, -0.5, 40),
        ],
        rows7=[("Total", "IoU (using bounding box)", ">=80", -0.8, -0.7, -0.6, -0.9, -0.7, 40)],
        ranking=[("IoU", 60, -0.2, 0.05), ("EI", 60, -0.3, 0.01)],
    )
    b = seed_board(tmp_path)
    assert sorted(b.index) == ["EI", "IoU", "IoU (Using GradCAM++)"]
    assert b.loc["IoU"].to_dict() == {
        "r": -0.8, "ci_low": -0.9, "ci_high": -0.7, "n": 40, "tau": -0.6, "psi": -0.2, "cmi": 0.05
    }  # fmt: skip
    assert math.isnan(b.loc["IoU (Using GradCAM++)", "psi"])  # not in the ranking: no Psi, not a made-up one


def _board(rows):
    return pd.DataFrame(rows, columns=["measure", "r", "ci_low", "ci_high", "n", "tau", "psi", "cmi"]).set_index(
        "measure"
    )


def test_leaderboard_means_ranges_and_order_by_hand():
    b0 = _board([("IoU", -0.8, -0.9, -0.7, 40, -0.6, -0.2, 0.05), ("EI", -0.9, -1, -0.8, 40, -0.7, -0.3, 0.01)])
    b1 = _board([("IoU", -0.6, -0.8, -0.4, 38, -0.4, 0.0, 0.03), ("Norm", 0.3, 0.0, 0.5, 30, 0.2, 0.1, 0.0)])
    board = leaderboard({0: b0, 1: b1})
    assert list(board.index) == ["EI", "IoU", "Norm"]  # |mean r| 0.9, 0.7, 0.3
    iou = board.loc["IoU"]
    np.testing.assert_allclose(
        [iou.r, iou.r_min, iou.r_max, iou.tau, iou.psi, iou.cmi], [-0.7, -0.8, -0.6, -0.5, -0.1, 0.04], atol=1e-15
    )
    assert iou.seeds == 2 and iou.n_seed0 == 40 and iou.n_seed1 == 38
    assert board.loc["EI", "seeds"] == 1 and math.isnan(board.loc["EI", "n_seed1"])  # missing in seed 1: said
    shown = leaderboard_display(board)
    assert shown.loc["IoU", "r at >= 80 %: mean [min, max]"] == "\u22120.70 [\u22120.80, \u22120.60]"
    assert shown.loc["IoU", "CMI x100"] == "4.00" and shown.loc["EI", "n per seed"] == "40 / -"


def test_default_folder():
    assert str(default_out(None, "seeds")) == "camgap-demo-seeds"


@pytest.mark.slow
def test_quick_seeds_experiment_end_to_end(tmp_path, capsys):
    out = tmp_path / "exp"
    assert cli.main(["demo", "--quick", "--experiment", "seeds", "--seed", "3", "--device", "cpu",
                     "--workers", "0", "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "Leaderboard over seeds 3, 4, 5" in text
    board = pd.read_csv(out / "leaderboard.csv", index_col=0)
    for s in (3, 4, 5):
        assert (out / f"seed{s}" / "study" / "report.html").is_file()
        one = seed_board(out / f"seed{s}" / "study", 0.0)
        np.testing.assert_allclose(board.loc[one.index, f"r_seed{s}"], one["r"], atol=1e-12)
    assert "IoU" in board.index and board.loc["IoU", "seeds"] == 3
    assert (out / "leaderboard.md").read_text().startswith("**Leaderboard over 3 seeds**")
