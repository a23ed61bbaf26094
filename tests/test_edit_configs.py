"""The run store: every (config, seed) trains in a folder of its own under runs/, written once;
config_N.pth, the results JSON and the PNGs are views of the runs CONFIGS selects. Edits,
undos, reorders, --restart, kills, two writers at once and folders of the kit before the store
never rename, move, rewrite or delete a finished run."""
import importlib
import json
import os
import subprocess
import sys
import shutil
import tarfile
import time

import pytest
import torch

import make_report
import predict
from conftest import (REPO, assert_still_there, assert_views_are_the_runs, finished_runs,
                      run_script, write_probe, ORIGINAL)

A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
B = {"name": "b", "num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 32}
SCRIPT = "L2_regularization"
RESULTS = "training_result.json"


def views(out, results_file=RESULTS):
    """{config id: (its run, its weights view's bytes or None)} of the results JSON."""
    results = json.loads((out / results_file).read_text())
    return {entry["id"]: (entry["run"], (out / entry["weights"]).read_bytes()
                          if entry["weights"] else None) for entry in results["configs"]}


def test_edits_reorders_restarts_and_undos_never_touch_a_finished_run(pickled_data, tmp_path,
                                                                      monkeypatch, capsys):
    out = tmp_path / "out"
    steps = [([A, B], []), ([A, dict(B, lr=0.05)], []), ([dict(B, lr=0.05), A], []),
             ([dict(B, lr=0.05), A], ["--restart", "--configs", "2"]), ([A], []), ([A, B], [])]
    seen = {}
    for configs, flags in steps:
        assert run_script(SCRIPT, out, pickled_data, configs, monkeypatch, *flags) == 0
        assert_still_there(seen, out)
        seen = finished_runs(out)
        assert_views_are_the_runs(out, pickled_data)
    assert len(seen) == 4  # a, b, b with lr 0.05, a again (--restart)
    printed = capsys.readouterr().out
    assert "config_2 differs from its earlier results: lr 0.02 -> 0.05; it trains anew" in printed


def test_undoing_an_edit_trains_nothing_and_brings_back_every_view(pickled_data, tmp_path,
                                                                   monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    first, results = views(out), json.loads((out / RESULTS).read_text())
    assert run_script(SCRIPT, out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0
    assert views(out)["config_2"] != first["config_2"]
    capsys.readouterr()
    (out / "test_accuracy.png").unlink()  # a view a kill left out: rebuilt too
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert " epoch " not in printed and "config_2: already finished" in printed
    assert "it shows its earlier run" in printed
    assert views(out) == first
    now = json.loads((out / RESULTS).read_text())
    assert [entry["history"] for entry in now["configs"]] == \
        [entry["history"] for entry in results["configs"]]
    assert all((out / name).is_file() for name in ("loss.png", "test_accuracy.png",
                                                   "train_accuracy.png", "examples.png"))


@pytest.mark.parametrize("edit, retrains", [
    ({"INIT_LINE": "torch.nn.init.zeros_(model.fc1.weight)"}, True),
    ({"HIDDEN_ACT = F.relu": "HIDDEN_ACT = torch.tanh"}, True),
    ({"pass": "pass  # a comment, and a blank line\n"}, False),
], ids=["build_model's initialisation", "a module-level activation", "a comment"])
def test_what_the_model_computes_decides_whether_it_retrains(edit, retrains, pickled_data, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    script = write_probe(tmp_path)
    assert run_script(script, out, pickled_data, None, None) == 0
    edits = {key: value for key, value in edit.items() if key in ORIGINAL}
    script = write_probe(tmp_path, **edits) if edits else None
    if not edits:  # an edit of the template's text itself
        key, value = next(iter(edit.items()))
        (tmp_path / "probe_script.py").write_text(
            (tmp_path / "probe_script.py").read_text().replace(key, value))
        sys.modules.pop("probe_script", None)
        script = importlib.import_module("probe_script")
    capsys.readouterr()
    assert run_script(script, out, pickled_data, None, None) == 0
    printed = capsys.readouterr().out
    assert ("already finished" not in printed) == retrains, printed
    if retrains:
        assert "config_1 differs from its earlier results: the model; it trains anew" in printed


def test_predict_refuses_a_changed_model_and_fills_a_new_model_setting(pickled_data, tmp_path,
                                                                      monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    script = write_probe(tmp_path)
    assert run_script(script, out, pickled_data, None, None) == 0
    picture = tmp_path / "picture.png"
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 30, 30)).save(picture)
    write_probe(tmp_path, MODEL_SETTINGS_LINE='MODEL_SETTINGS = {"width": {"kind": "int", '
                '"min": 1, "default": 16}}', BUILD_ARGS='config["width"]',
                MODEL_SETTINGS_ARG="model_settings=MODEL_SETTINGS")
    capsys.readouterr()
    assert predict.main([str(out / "config_1.pth"), str(picture)]) == 0
    assert "picture.png: " in capsys.readouterr().out
    write_probe(tmp_path, **{"INIT_LINE": "torch.nn.init.zeros_(model.fc1.weight)"})
    assert predict.main([str(out / "config_1.pth"), str(picture)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "probe_script.py's model has changed since these weights were trained" in error


def test_the_report_shows_a_configs_earlier_curve_beside_its_current_one(pickled_data, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "modelset" / "L2_regularization_model"
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    assert run_script(SCRIPT, out, pickled_data, [A, dict(B, lr=0.05)], monkeypatch) == 0
    assert make_report.main(["--modelset", str(tmp_path / "modelset")]) == 0
    report = (tmp_path / "modelset" / "REPORT.md").read_text()
    assert "**config_2, earlier runs**" in report and "lr 0.02 -> 0.05" in report
    assert "**config_1, earlier runs**" not in report
    figure = tmp_path / "modelset" / "figures" / "L2_regularization_model_config_2_earlier.png"
    assert figure.is_file() and f"({figure.relative_to(tmp_path / 'modelset')})" in report


def launch(pickled_data, out, *flags, torchrun=False, epochs=2):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2"] if torchrun else [sys.executable]
    return subprocess.Popen([*launcher, f"{SCRIPT}.py", "--data-dir", str(pickled_data), "--out",
                             str(out), "--device", "cpu", "--epochs", str(epochs), *flags], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("torchrun", [False, True], ids=["two processes", "torchrun beside one"])
def test_two_runs_into_one_folder_at_once_both_land(torchrun, pickled_data, tmp_path):
    out = tmp_path / "out"
    first = launch(pickled_data, out, "--configs", "1", torchrun=torchrun)
    second = launch(pickled_data, out, "--configs", "2")
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    results = json.loads((out / RESULTS).read_text())
    assert [(entry["id"], entry["status"]) for entry in results["configs"]] == \
        [("config_1", "finished"), ("config_2", "finished")]
    assert (out / "config_1.pth").is_file() and (out / "config_2.pth").is_file()
    assert len(finished_runs(out)) == 2


def test_a_second_run_of_the_same_config_waits_for_the_first(pickled_data, tmp_path):
    out = tmp_path / "out"
    first = launch(pickled_data, out, "--configs", "1", epochs=40)
    for _ in range(600):  # until the first has claimed its run
        if list(out.glob("runs/*/run.json")):
            break
        time.sleep(0.05)
    second = launch(pickled_data, out, "--configs", "1", epochs=40)
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert "another process is training it right now" in outputs[1] \
        and "config_1: already finished" in outputs[1], outputs[1]
    assert len(finished_runs(out)) == 1


def test_a_folder_of_the_kit_before_the_store_is_taken_in_with_nothing_lost(pickled_data, tmp_path,
                                                                            monkeypatch,
                                                                            capsys):
    """The fixture was written by the ledger's last version (tests/fixtures/
    make_legacy_folder.py): config_2 finished, config_3 stopped by out-of-memory with its
    checkpoint, an earlier-*/ holding config_2's first run, and a move of config_1 into a
    second earlier-*/ cut by a kill (journal and hidden file left)."""
    with tarfile.open(REPO / "tests" / "fixtures" / "legacy-f2187f3.tar.gz") as archive:
        archive.extractall(tmp_path / "modelset", filter="data")
    out = tmp_path / "modelset" / "tiny"
    weights = {path.read_bytes() for path in out.rglob("*") if path.is_file()
               and (path.suffix == ".pth" or path.name.startswith(".ledger-"))}
    assert len(weights) == 3
    assert make_report.main(["--modelset", str(tmp_path / "modelset")]) == 0
    assert "4 result(s) written by an earlier version of the kit" in capsys.readouterr().out
    records = {path.parent.name: json.loads(path.read_text())
               for path in out.glob("runs/*/run.json")}
    assert sorted((record["label"], record["status"], record["config"]["lr"])
                  for record in records.values()) == [
        ("config_1", "finished", 0.05), ("config_2", "finished", 0.02),
        ("config_2", "finished", 0.03), ("config_3", "out_of_memory", 0.01)]
    assert {path.read_bytes() for path in out.glob("runs/*/weights.pth")} == weights
    assert len(list(out.glob("runs/*/checkpoint.ckpt"))) == 1
    assert not list(out.glob(".ledger*")) and not list(out.glob("earlier-*"))
    before = finished_runs(out)
    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    try:
        tiny = importlib.import_module("tiny_script")
    finally:
        sys.path.remove(str(REPO / "tests" / "fixtures"))
    C = {"name": "c", "num_epochs": 2, "lr": 0.01, "momentum": 0.9, "batch_size": 30}
    configs = [dict(tiny.CONFIGS[0], lr=0.04), dict(tiny.CONFIGS[1], lr=0.03), C]
    capsys.readouterr()
    assert run_script(tiny, out, pickled_data, configs, monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_2: already finished" in printed  # known again by its old fingerprint
    assert "config_3: resuming from its checkpoint after epoch 1" in printed
    assert "config_1 a: num_epochs=1, lr=0.04" in printed  # a new config: trained
    assert_still_there(before, out)


# ---- kill -9 at the file operations of a run (strace's syscall injection) ----

FILE_CALLS = ("rename", "link", "unlink", "write")  # each with its *at variants
STRACE = shutil.which("strace")


def driver(which, pickled_data, out, strace=()):
    return subprocess.run([*strace, sys.executable, str(REPO / "tests" / "store_driver.py"),
                           which, "--data-dir", str(pickled_data), "--out", str(out), "--device",
                           "cpu"], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)


def calls_of(kind):
    return {"rename": "rename,renameat,renameat2", "link": "link,linkat",
            "unlink": "unlink,unlinkat", "write": "write"}[kind]


def count_calls(pickled_data, out, tmp_path):
    """How many times the edited run (two configs, one of them changed) makes each call."""
    log = tmp_path / "strace.log"
    result = driver("after", pickled_data, out, [STRACE, "-f", "-qq", "-o", str(log), "-e",
                                             "trace=" + ",".join(calls_of(kind) for kind in
                                                                 FILE_CALLS)])
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    return {kind: sum(1 for line in lines if line.split(None, 1)[-1].split("(")[0]
                      in calls_of(kind).split(",")) for kind in FILE_CALLS}


def kill_points():
    """(call, n): every rename, link and unlink, and some writes, with KILL_SWEEP=all;
    a sample otherwise (the suite's time)."""
    return [("rename", 3), ("link", 1), ("unlink", 2), ("write", 40)]


def check_after_rerun(out, pickled_data):
    """What a user relies on after the rerun: every finished run reloads to its recorded
    accuracy, and every view is the run it names (including the PNGs)."""
    assert_views_are_the_runs(out, pickled_data)
    results = json.loads((out / RESULTS).read_text())
    assert [(entry["id"], entry["config"]["lr"], entry["status"]) for entry in
            results["configs"]] == [("config_1", 0.01, "finished"), ("config_2", 0.05, "finished")]
    for record_path in out.glob("runs/*/run.json"):
        record = json.loads(record_path.read_text())
        if record["status"] == "finished":
            assert not (record_path.parent / "checkpoint.ckpt").exists()
    for name in ("loss.png", "train_accuracy.png", "test_accuracy.png", "examples.png"):
        assert (out / name).stat().st_mtime >= (out / RESULTS).stat().st_mtime - 1
    assert not list(out.glob(".*.tmp")) and not list(out.glob("runs/*/.*.tmp"))  # tidied


@pytest.mark.skipif(STRACE is None, reason="needs strace (apt-get install strace)")
def test_kill_9_at_file_operations_of_an_edited_run_then_the_same_command(pickled_data, tmp_path):
    base = tmp_path / "base"
    assert driver("before", pickled_data, base).returncode == 0
    sweep = os.environ.get("KILL_SWEEP") == "all"
    if sweep:
        counts = count_calls(pickled_data, shutil.copytree(base, tmp_path / "count"), tmp_path)
        points = [(kind, n) for kind in FILE_CALLS
                  for n in range(1, counts[kind] + 1, 1 if kind != "write" else 7)]
    else:
        points = kill_points()
    killed = 0
    for kind, n in points:
        out = shutil.copytree(base, tmp_path / f"{kind}-{n}")
        before = finished_runs(out)
        result = driver("after", pickled_data, out, [STRACE, "-f", "-qq", "-o", "/dev/null",
                                                 "-e", f"inject={calls_of(kind)}:signal=KILL:"
                                                       f"when={n}"])
        killed += result.returncode != 0
        assert_still_there(before, out)
        rerun = driver("after", pickled_data, out)
        assert rerun.returncode == 0, (kind, n, rerun.stderr[-2000:])
        assert "Traceback" not in rerun.stderr
        assert_still_there(before, out)
        check_after_rerun(out, pickled_data)
        shutil.rmtree(out)
    assert killed >= len(points) - 1  # each point was reached (the last write may not be)
    print(f"{len(points)} kill points, {killed} killed")


def test_saving_over_a_weights_view_never_reaches_its_run(pickled_data, tmp_path, monkeypatch,
                                                         capsys):
    """config_1.pth is a copy of its run's weights: torch.save over it (a student keeping a
    fine-tuned model) leaves the run as it finished; the rerun keeps the student's file and
    says so, and predict.py refuses the file as the run's weights."""
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    before = finished_runs(out)
    weights = torch.load(out / "config_1.pth", weights_only=True)
    torch.save({key: value + 1 for key, value in weights.items()}, out / "config_1.pth")
    assert finished_runs(out) == before
    capsys.readouterr()
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    assert "config_1.pth is not the weights of any run" in capsys.readouterr().out
    assert finished_runs(out) == before
    picture = tmp_path / "picture.png"
    from PIL import Image
    Image.new("RGB", (32, 32), (10, 200, 30)).save(picture)
    (run_dir,) = out.glob("runs/*")
    assert predict.main([str(run_dir / "weights.pth"), str(picture)]) == 0
    weights_file = run_dir / "weights.pth"
    torch.save({key: value * 2 for key, value in weights.items()}, weights_file)  # by hand
    assert predict.main([str(weights_file), str(picture)]) == 2
    assert "not the weights its run" in capsys.readouterr().err


def test_a_file_a_pipe_and_a_broken_link_in_runs_are_passed_over(pickled_data, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "out"
    assert run_script(SCRIPT, out, pickled_data, [A], monkeypatch) == 0
    (out / "runs" / "notes.txt").write_text("mine")
    os.mkfifo(out / "runs" / "a-pipe")  # opened, it would wait for a writer for ever
    (out / "runs" / "gone").symlink_to(tmp_path / "nowhere")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".notes.0123abcd.tmp").write_text("mine too")  # named like a temporary
    (out / "runs" / "linked").symlink_to(elsewhere)
    assert run_script(SCRIPT, out, pickled_data, [A, B], monkeypatch) == 0
    assert make_report.main(["--modelset", str(tmp_path)]) == 0
    assert (out / "runs" / "notes.txt").read_text() == "mine"
    assert (elsewhere / ".notes.0123abcd.tmp").read_text() == "mine too"
    assert len(finished_runs(out)) == 2
