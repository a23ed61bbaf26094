"""Task 2's strength curve in REPORT.md: a figure and a sentence for a folder whose configs
differ only in weight decay (or dropout), three strengths or more; none for fewer."""
import contextlib
import io
import json
import re

import numpy as np
import pytest

import make_report
from conftest import run_script

BASE = {"num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 16}
L2_SWEEP = [dict(BASE, weight_decay=strength) for strength in (0.0, 1e-3, 1e-1)]
DROPOUT_PAIR = [dict(BASE, dropout=strength) for strength in (0.0, 0.5)]


@pytest.fixture(scope="module")
def modelset(tmp_path_factory, pickled_data):
    """An L2 sweep of three strengths, two seeds each; a dropout folder of two strengths."""
    root = tmp_path_factory.mktemp("strength") / "modelset"
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        for name, configs, folder in (("L2_regularization", L2_SWEEP, "L2_regularization_model"),
                                      ("Dropout_regularization", DROPOUT_PAIR,
                                       "Dropout_regularization_model")):
            assert run_script(name, root / folder, pickled_data, configs, patch,
                              "--seeds", "2") == 0
        assert make_report.main(["--modelset", str(root)]) == 0
    return root


def spread(values):
    return np.mean(values), np.std(values, ddof=1)


def test_a_sweep_of_three_strengths_gets_its_figure_and_a_sentence_from_its_numbers(modelset):
    figure = modelset / "figures" / "task2_strength_L2_regularization_model.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (modelset / "REPORT.md").read_text()
    assert "(figures/task2_strength_L2_regularization_model.png)" in text

    results = json.loads((modelset / "L2_regularization_model" / "training_result.json")
                         .read_text())
    by_strength = {}
    for entry in results["configs"]:
        gap = entry["history"][-1]["train_accuracy_eval"] - entry["final_test_accuracy"]
        by_strength.setdefault(entry["config"]["weight_decay"], []).append(
            (gap, entry["final_test_accuracy"]))
    control_gap, control_std = spread([gap for gap, _ in by_strength[0.0]])
    (sentence,) = [line for line in text.splitlines() if "L2_regularization.py (" in line
                   and "seeds' spread" in line]
    assert f"{control_gap:.2f} ± {control_std:.2f}" in sentence
    found = re.search(r"spread is ([0-9.e-]+) \(", sentence)
    if found:  # the strength named is the first whose gap is below the control's by more
        strength = float(found.group(1))
        gap, std = spread([gap for gap, _ in by_strength[strength]])
        test = np.mean([test for _, test in by_strength[strength]])
        assert control_gap - gap > max(control_std, std)
        assert f"({gap:.2f} ± {std:.2f} against" in sentence and f"{test:.2f}%" in sentence
    else:
        assert "no weight decay up to 0.1 makes the gap smaller" in sentence


def test_two_strengths_get_no_strength_figure(modelset):
    assert not (modelset / "figures" / "task2_strength_Dropout_regularization_model.png").exists()
    assert "dropout probability against" not in (modelset / "REPORT.md").read_text()
