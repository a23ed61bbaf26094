"""The engine's batch path against plain reference code, and its augmentation."""
import copy

import pytest
import torch
import torch.nn.functional as F

from cifarkit import data, train
from cifarkit import runtime as rt
from Original_version_model import build_model
from conftest import labelled_images




@pytest.mark.parametrize("augment", data.AUGMENTATIONS)
def test_augmentation_keeps_labels_with_their_images(augment):
    images, labels = labelled_images(64)
    identity = (torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1))  # raw pixel values out
    torch.manual_seed(0)
    order = torch.randperm(len(labels))
    batch, batch_labels = data.prepare_batch(images, labels, order, *identity, augment=augment)
    assert torch.equal(batch_labels, labels[order])
    for image, label in zip(batch, batch_labels):
        values = set(image.unique().tolist())
        assert values <= {0.0, float(label * 20 + 20)}  # its own pixels, padding, cutout
        assert (image == label * 20 + 20).float().mean() > 0.5
        blanked = (image == 0).sum().item()
        if augment.startswith("reflect-"):  # a mirrored border: no padding zeros
            # inside-cutout: exactly one whole 8x8 square in each of the 3 channels
            assert blanked == (3 * 8 * 8 if augment.endswith("inside-cutout") else 0)
        elif augment in ("none", "flip"):
            assert blanked == 0


def test_crop_is_a_window_of_the_padded_image_and_flip_a_mirror():
    torch.manual_seed(1)
    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    padded = F.pad(batch, (4, 4, 4, 4))
    cropped = data.random_crop(batch)
    for original, image in zip(padded, cropped):
        windows = [(top, left) for top in range(9) for left in range(9)
                   if torch.equal(original[:, top:top + 32, left:left + 32], image)]
        assert len(windows) >= 1
    flipped = data.random_flip(batch)
    assert all(torch.equal(out, image) or torch.equal(out, image.flip(2))
               for out, image in zip(flipped, batch))
    assert not all(torch.equal(out, image) for out, image in zip(flipped, batch))


def one_engine_step(model, images, labels, config, runtime):
    """The loss of one step of the kit's loop (train.fit) on the whole of ``images``, model
    placed (and laid out channels_last) by the engine as the scripts do."""
    model = rt.place_model(model, runtime)
    scale, shift = data.normalizer(*data.TUTORIAL_NORMALIZATION, device="cpu")
    on_cpu = data.OnDevice(images, labels, images, labels, scale, shift)
    chosen = dict(config, num_epochs=1, batch_size=len(labels))
    history = train.fit(model, chosen, on_cpu, runtime).progress["history"]
    return torch.tensor(history[0]["train_loss"])


def test_one_step_matches_a_plain_reference_implementation():
    torch.manual_seed(2)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (32,))
    config = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True,
              "label_smoothing": 0.1}
    model = build_model({})
    reference = copy.deepcopy(model)
    ours_loss = one_engine_step(model, images, labels, config, rt.Runtime(torch.device("cpu")))

    inputs = (images.float() / 255 - 0.5) / 0.5
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9,
                                          weight_decay=5e-4, nesterov=True)
    loss = F.cross_entropy(reference(inputs), labels, label_smoothing=0.1)
    reference_optimizer.zero_grad()
    loss.backward()
    reference_optimizer.step()

    torch.testing.assert_close(ours_loss, loss.detach(), rtol=1e-5, atol=1e-6,
                               check_dtype=False)  # the epoch sums are float64
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_step_stays_close_to_fp32():
    torch.manual_seed(3)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (32,))
    config = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
    model = build_model({})
    twin = copy.deepcopy(model)
    fp32 = one_engine_step(model, images, labels, config, rt.Runtime(torch.device("cpu")))
    bf16 = one_engine_step(twin, images, labels, config,
                           rt.Runtime(torch.device("cpu"), amp_dtype=torch.bfloat16))
    # the loss is taken in fp32 from the bf16 logits, not rounded to bf16 itself
    assert bf16.to(torch.bfloat16).double() != bf16
    assert not torch.equal(bf16, fp32)  # bf16 did run...
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0)  # ...and stayed close
    for ours, theirs in zip(twin.parameters(), model.parameters()):
        assert ours.dtype == torch.float32  # autocast: the weights stay fp32
        torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-3)


def test_amp_auto_uses_bf16_on_the_cpu_only_where_the_script_and_the_cpu_allow(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: native)
        assert rt.init_runtime("cpu", amp="auto", cpu_amp=True).amp_dtype == (
            torch.bfloat16 if native else None)
        assert rt.init_runtime("cpu", amp="auto", cpu_amp=False).amp_dtype is None
        assert rt.init_runtime("cpu", amp="off", cpu_amp=True).amp_dtype is None
        assert rt.init_runtime("cpu", amp="on").amp_dtype == torch.bfloat16
