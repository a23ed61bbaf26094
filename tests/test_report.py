"""make_report.py on a small modelset made by the real scripts on generated data."""
import contextlib
import errno
import importlib
import io
import json
import re
import shutil

import numpy as np
import pytest

import make_report
from cifarkit import report

L2_CONFIGS = [
    {"name": "control", "num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 32},
    {"name": "l2", "num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 32,
     "weight_decay": 1e-3},
]
SWEEP_CONFIGS = [
    {"num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 32},
    {"num_epochs": 2, "lr": 1e6, "momentum": 0.9, "batch_size": 32},  # diverges
]


@pytest.fixture(scope="module")
def modelset(tmp_path_factory, pickled_data):
    """Trained once for the whole file (three runs of the scripts); a test that damages it
    works on a copy."""
    root = tmp_path_factory.mktemp("report") / "modelset"
    l2 = importlib.import_module("L2_regularization")
    sweep = importlib.import_module("Original_version_model_multiGPU")
    common = ["--data-dir", str(pickled_data)]
    out = ["--out", str(root / "L2_regularization_model")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(l2, "CONFIGS", L2_CONFIGS)
        patch.setattr(sweep, "CONFIGS", SWEEP_CONFIGS)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert l2.main(common + out + ["--configs", "control", "--seeds", "2"]) == 0
        (root / "seeded_run.log").write_text(printed.getvalue())  # for the summary test
        assert l2.main(common + out + ["--configs", "l2"]) == 0
        assert sweep.main(common + ["--out", str(root / "original_version_model_multiGPU")]) == 1
    return root


def copy_of(modelset, tmp_path):
    """The scripts' folders, without an earlier report, for a test to damage."""
    copy = tmp_path / "modelset"
    shutil.copytree(modelset, copy, ignore=shutil.ignore_patterns("REPORT.md", "figures"))
    return copy


def rewrite(change):
    """A damage: load the results JSON, ``change`` it in place, write it back."""
    def damage(path):
        results = json.loads(path.read_text())
        change(results)
        path.write_text(json.dumps(results))
    return damage


def test_seeds_are_kept_apart_and_summarised(modelset):
    results = json.loads((modelset / "L2_regularization_model" / "training_result.json")
                         .read_text())
    runs = [(entry["id"], entry["seed"], entry["weights"]) for entry in results["configs"]]
    assert runs == [("config_1", 0, "config_1.pth"), ("config_1", 1, "config_1_seed1.pth"),
                    ("config_2", 0, "config_2.pth")]
    assert (results["configs"][0]["history"] != results["configs"][1]["history"])
    printed = (modelset / "seeded_run.log").read_text()
    assert "2 seeds: final test accuracy" in printed and "(mean ± std over 2)" in printed


def test_report_has_every_config_valid_figures_and_the_missing_scripts(modelset):
    assert make_report.main(["--modelset", str(modelset)]) == 0
    text = (modelset / "REPORT.md").read_text()

    for row in ("| config_1 (control) |", "| config_2 (l2) |"):
        assert row in text
    sweep_rows = [line for line in text.splitlines() if line.startswith("| config_")
                  and "batch_size=32, weight_decay=0.0 |" in line and "lr=" in line]
    assert any("**DIVERGED**" in line for line in sweep_rows)
    assert any("| finished |" in line and "lr=0.01," in line for line in sweep_rows)

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "figures/task2_gap.png" in links and "figures/task3_sweep.png" in links
    assert any(link.startswith("figures/confusion_") for link in links)
    for link in links:
        assert (modelset / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link

    missing = text.split("## Not run yet")[1]
    for script in ("Original_version_model.py", "Dropout_regularization.py", "Resnet_model.py"):
        assert f"`{script}`" in missing
    assert "L2_regularization.py" not in missing


def test_report_mean_and_std_of_the_seeded_config(modelset):
    make_report.main(["--modelset", str(modelset)])
    results = json.loads((modelset / "L2_regularization_model" / "training_result.json")
                         .read_text())
    finals = [entry["final_test_accuracy"] for entry in results["configs"]
              if entry["id"] == "config_1"]
    expected = f"{np.mean(finals):.2f} ± {np.std(finals, ddof=1):.2f}"
    (row,) = [line for line in (modelset / "REPORT.md").read_text().splitlines()
              if line.startswith("| config_1 (control) |")]
    assert row.split(" | ")[3] == expected


def test_report_refuses_a_missing_folder(tmp_path, capsys):
    assert make_report.main(["--modelset", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_report_refuses_a_file_as_modelset(modelset, capsys):
    results = modelset / "L2_regularization_model" / "training_result.json"
    assert make_report.main(["--modelset", str(results)]) == 2
    assert "a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("block", ["figures-is-a-file", "writes-refused"])
def test_an_unwritable_modelset_is_one_error_line_and_status_1(modelset, tmp_path, monkeypatch,
                                                               capsys, block):
    root = copy_of(modelset, tmp_path)
    if block == "figures-is-a-file":
        (root / "figures").write_text("a file where the figures folder goes")
    else:  # what a read-only folder does for a normal user (chmod does not stop root)
        def refuse(path, write):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr(report, "write_atomically", refuse)
    assert make_report.main(["--modelset", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the report into {root}/") and err.count("\n") == 1
    assert "permissions" in err and "--modelset" in err
    assert not (root / "REPORT.md").exists()


def test_a_sweep_whose_every_config_diverged_is_reported_without_warnings(modelset, tmp_path,
                                                                          capsys, recwarn):
    root = copy_of(modelset, tmp_path)
    shutil.rmtree(root / "L2_regularization_model")
    rewrite(lambda results: results.update(configs=results["configs"][1:]))(
        root / "original_version_model_multiGPU" / "training_result.json")
    assert make_report.main(["--modelset", str(root)]) == 0
    assert capsys.readouterr().err == ""
    noise = [str(warning.message) for warning in recwarn
             if issubclass(warning.category, (UserWarning, RuntimeWarning))]
    assert noise == []
    diverged = [line for line in (root / "REPORT.md").read_text().splitlines()
                if line.startswith("| config_2 |")]
    assert len(diverged) == 1 and "**DIVERGED**" in diverged[0]
