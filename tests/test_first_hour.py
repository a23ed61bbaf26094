"""What a student sees in the first hour: figures and lines that are true for the folder in
hand (issue "A student's first hour")."""
import importlib
import importlib.util
import json
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from cifarkit import data, plots, results, train
from cifarkit import runtime as rt
from conftest import REPO, run_command, run_script

A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
B = {"name": "b", "num_epochs": 1, "lr": 0.02, "momentum": 0.9, "batch_size": 32}
RESULTS = "training_result.json"
quick_looks = importlib.util.module_from_spec(importlib.util.spec_from_file_location(
    "quick_looks", REPO / "benchmarks" / "quick_looks.py"))
quick_looks.__spec__.loader.exec_module(quick_looks)


def test_examples_png_follows_its_config_when_configs_are_removed(pickled_data, tmp_path,
                                                                  monkeypatch):
    titles = []
    real_figure = plots.examples_figure
    monkeypatch.setattr(plots, "examples_figure", lambda *args: titles.append(args[-1])
                        or real_figure(*args))
    hopeless = dict(A, name="hopeless", lr=1e-7)  # stays near chance: config_2 is the best
    learns = dict(B, lr=0.05)  # 17% after its one epoch (lr 0.02: 10%, a tie)
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [hopeless, learns], monkeypatch) == 0
    assert titles[-1].startswith("L2_regularization, config_2 b:")
    assert run_script("L2_regularization", out, pickled_data, [learns], monkeypatch) == 0  # config_1 removed: b is config_1
    assert titles[-1].startswith("L2_regularization, config_1 b:")


def history_entry(config, accuracies):
    return {"id": "config_1", "seed": 0, "config": config, "history": [
        {"epoch": epoch, "train_loss": 1.0, "train_accuracy": value, "test_accuracy": value,
         "train_accuracy_eval": value} for epoch, value in enumerate(accuracies, 1)]}


@pytest.mark.parametrize("dropout, said", [(None, False), (0.0, False), (0.5, True)])
def test_the_running_accuracy_says_dropout_only_where_there_is_dropout(dropout, said):
    config = dict(A) if dropout is None else dict(A, dropout=dropout)
    figure = plots.history_figure([history_entry(config, [40.0, 50.0])], "train_accuracy_eval",
                                  "t", "y", 5.0)
    legend = " ".join(text.get_text() for text in figure.axes[0].get_legend().get_texts())
    assert ("dropout on" in legend) == said


def test_a_one_epoch_run_is_a_point_with_its_value():
    figure = plots.history_figure([history_entry(dict(A), [37.5])], "train_accuracy_eval", "t",
                                  "y", 5.0)
    axes = figure.axes[0]
    assert [text.get_text() for text in axes.texts] == ["37.5"]
    assert all(line.get_marker() not in ("", "None") for line in axes.lines
               if len(line.get_xdata()) == 1)


def test_confusion_rows_add_up_to_100():
    counts = np.array([[1, 1, 1], [2, 2, 3], [0, 0, 5]])
    percent = 100 * counts / counts.sum(axis=1, keepdims=True)
    assert np.round(percent).sum(axis=1).tolist() != [100, 100, 100]  # 99: the fault
    assert plots.rounded_rows(percent).sum(axis=1).tolist() == [100, 100, 100]


def test_subtitles_name_the_data_folder_not_its_whole_path():
    run_fields = {"data": {"train_images": 300, "test_images": 100,
                           "source": "image folders in /home/me/data/cifar10-jpeg (subset)"},
                  "devices": ["cpu"]}
    assert plots.subtitle(run_fields, []).endswith("image folders in cifar10-jpeg (subset)")


def test_short_epochs_get_an_estimate_and_lines_name_the_config(pickled_data, tmp_path,
                                                                monkeypatch, capsys):
    # 300 images at batch 32: 10 steps an epoch, fewer than the 40 the estimate used to wait
    assert run_script("L2_regularization", tmp_path / "out", pickled_data, [A], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "config_1: about" in printed and "an epoch on this CPU" in printed
    assert "config_1 a: num_epochs=1" in printed  # the name, as the summary shows it
    assert "; fp32; output" in printed  # the precision in the run's header
    saved = json.loads((tmp_path / "out" / RESULTS).read_text())
    assert results.config_label(saved["configs"][0]).startswith("config_1 a:")


def test_predict_names_the_classes_of_pictures_as_training_saw_them(pickled_data, tmp_path,
                                                                    monkeypatch, capsys):
    """predict.py, run from another folder, on pictures saved from the test set: its classes
    are the ones the training's own test pass predicted (same model, same normalization)."""
    out = tmp_path / "out"
    assert run_script("L2_regularization", out, pickled_data, [A], monkeypatch) == 0
    dataset = data.load_cifar10(pickled_data)
    pictures = []
    for index in (0, 35, 99):
        path = tmp_path / f"picture {index}.png"
        Image.fromarray(dataset.test_images[index].permute(1, 2, 0).numpy()).save(path)
        pictures.append(str(path))
    result = run_command("predict.py", out / "config_1.pth", *pictures, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model, normalization, _ = predict.load_trained(out / "config_1.pth")
    scale, shift = data.normalizer(*normalization, device="cpu")
    cpu = rt.Runtime(torch.device("cpu"))
    expected = train.predict(model, dataset.test_images[[0, 35, 99]], scale, shift, cpu)
    for line, picture, label in zip(result.stdout.splitlines(), pictures, expected.tolist()):
        assert line.startswith(f"{picture}: {data.CLASSES[label]} ")
    assert run_command("predict.py", tmp_path / "nope.pth", pictures[0]).stderr.startswith(
        "error: ")


@pytest.mark.parametrize("script, command", quick_looks.quick_looks())
def test_each_quick_look_of_readme_runs(script, command, pickled_data, tmp_path):
    """README's first-look commands, as written but on the tests' 300 images and for one
    epoch (their times and accuracies on CIFAR-10: benchmarks/quick_looks.py)."""
    words = shlex.split(command)
    assert words[:2] == ["python", script]
    for flag, small in (("--subset", "300"), ("--epochs", "1")):
        if flag in words:
            words[words.index(flag) + 1] = small
    module = importlib.import_module(script.removesuffix(".py"))
    assert module.main(words[2:] + ["--data-dir", str(pickled_data), "--out",
                                    str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "test_accuracy.png").is_file()
