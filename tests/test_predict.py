"""predict.py: it names the classes of a user's pictures as the training's own test pass
did, from another folder; it refuses weights whose script's model has changed since they were
trained, fills in a model setting added since, and refuses a run's weights edited by hand
(a user's torch.save over a weights view never reaches the run). (The report's reading of
results: test_report.py.)"""
import os

import pytest
import torch
from PIL import Image

import predict
from cifarkit import data, train
from cifarkit import runtime as rt
from conftest import finished_runs, run_command, run_script, write_probe

A = {"name": "a", "num_epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}
SCRIPT = "L2_regularization"


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
    copied = tmp_path / "copied"  # the weights view and its JSON, without runs/
    copied.mkdir()
    for name in ("config_1.pth", "training_result.json"):
        (copied / name).write_bytes((out / name).read_bytes())
    capsys.readouterr()
    assert predict.load_trained(copied / "config_1.pth")[2] == "L2_regularization"
    assert "is not beside it, so whether L2_regularization.py's model has changed since these " \
           "weights were trained is not checked" in capsys.readouterr().err


def test_predict_refuses_a_changed_model_and_fills_a_new_model_setting(pickled_data, tmp_path,
                                                                      monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    script = write_probe(tmp_path)
    assert run_script(script, out, pickled_data, None, None) == 0
    picture = tmp_path / "picture.png"
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
    Image.new("RGB", (32, 32), (10, 200, 30)).save(picture)
    (run_dir,) = out.glob("runs/*")
    assert predict.main([str(run_dir / "weights.pth"), str(picture)]) == 0
    weights_file = run_dir / "weights.pth"
    torch.save({key: value * 2 for key, value in weights.items()}, weights_file)  # by hand
    assert predict.main([str(weights_file), str(picture)]) == 2
    assert "not the weights its run" in capsys.readouterr().err


def test_pictures_are_read_as_a_camera_and_a_scanner_mean_them(tmp_path):
    """A 16-bit grey PNG keeps its shades (not a white square), a phone JPEG is turned the
    way its EXIF orientation says, and a picture whose header claims 10^10 pixels is refused
    in one line before it is decoded."""
    import numpy as np

    grey = tmp_path / "grey16.png"
    Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(grey)
    assert predict.read_picture(grey).float().mean().item() == pytest.approx(128, abs=1)

    upright = np.zeros((20, 40, 3), dtype=np.uint8)
    upright[:, :20] = 255  # white on the left, black on the right
    sideways = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    Image.fromarray(np.rot90(upright, k=1).copy()).save(sideways, exif=exif, quality=95)
    seen = predict.read_picture(sideways)[0].float().mean(dim=0)  # 32 x 32
    assert seen[:, :12].mean() > 200 and seen[:, -12:].mean() < 50

    pipe = tmp_path / "pipe.png"  # opened, it would wait for a writer
    os.mkfifo(pipe)
    with pytest.raises(predict.UserError, match="not a regular file"):
        predict.read_picture(pipe)

    bomb = tmp_path / "bomb.png"
    _png_claiming(bomb, 100000)
    with pytest.raises(predict.UserError, match="too large a picture"):
        predict.read_picture(bomb)


def _png_claiming(path, side):
    """A tiny PNG file whose header says side x side pixels."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_ctrl_c_in_predict_says_one_line(tmp_path, monkeypatch, capsys):
    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "load_trained", pressed)
    assert predict.main([str(tmp_path / "config_1.pth"), str(tmp_path / "a.png")]) == 130
    error = capsys.readouterr().err
    assert "Stopped by Ctrl-C" in error and "Traceback" not in error
