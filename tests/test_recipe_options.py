"""The ResNet recipe's options: Page's augmentation (crop of the reflect-padded image, cutout
kept inside the image) and where the one-cycle lr peaks (peak_at)."""
import pytest
import torch
from torchvision.transforms import functional as TF

from cifarkit import config, data, train
from conftest import blanked_squares, windows_found




def test_reflect_crop_is_a_window_of_the_reflect_padded_image():
    """Each image equals torchvision's pad(reflect) then crop at one offset, and every offset
    from 0 to 8 occurs: a zero-padded crop, a shift without padding or a mirrored edge that
    repeats the border pixel would each fail here."""
    torch.manual_seed(4)
    batch = torch.randint(1, 256, (300, 3, 32, 32), dtype=torch.uint8)  # no zero pixels
    cropped = data.random_crop(batch, border="reflect")
    assert cropped.dtype == torch.uint8 and cropped.shape == batch.shape
    offsets = []
    for original, image in zip(batch, cropped):
        reference = TF.pad(original, [4], padding_mode="reflect")  # torchvision's, per image
        found = windows_found(reference, image)
        assert len(found) == 1, found  # random pixels: one window, and it is exact
        offsets += found
    assert {top for top, _ in offsets} == set(range(9))
    assert {left for _, left in offsets} == set(range(9))
    assert (cropped > 0).all()  # nothing was filled with zeros


def test_zero_padded_crop_is_unchanged_by_the_new_option():
    torch.manual_seed(5)
    batch = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(6)
    default = data.random_crop(batch)
    torch.manual_seed(6)
    zeros = data.random_crop(batch, border="zeros")
    assert torch.equal(default, zeros)
    padded = torch.nn.functional.pad(batch, (4,) * 4)
    assert all(len(windows_found(original, image)) >= 1 for original, image in zip(padded, default))




def test_inside_cutout_blanks_a_whole_8x8_square_inside_every_image():
    torch.manual_seed(7)
    batch = torch.ones(400, 3, 32, 32)
    boxes = blanked_squares(data.cutout(batch, placement="inside"))
    assert {(height, width) for _, _, height, width in boxes} == {(8, 8)}
    # every position the square can take inside the image, the edges included
    assert {top for top, _, _, _ in boxes} == set(range(25))
    assert {left for _, left, _, _ in boxes} == set(range(25))


def test_overhanging_cutout_still_hangs_over_the_edge():
    torch.manual_seed(8)
    boxes = blanked_squares(data.cutout(torch.ones(400, 3, 32, 32)))
    assert any((height, width) != (8, 8) for _, _, height, width in boxes)


def test_a_bad_augment_value_is_refused_with_the_choices():
    with pytest.raises(config.ConfigError) as error:
        config.check_config({"num_epochs": 1, "lr": 0.1, "batch_size": 8,
                             "augment": "reflect+crop"}, "config_1")
    for name in data.AUGMENTATIONS:
        assert repr(name) in str(error.value)
    for name in ("reflect-crop+flip", "reflect-crop+flip+inside-cutout"):
        config.check_config({"num_epochs": 1, "lr": 0.1, "batch_size": 8, "augment": name},
                            "config_1")


def lrs(config_dict, steps):
    """The lr of every training step of ``config_dict`` (num_epochs x steps), as the engine
    sets it, and the lr after the last step."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=config_dict["lr"])
    scheduler = train.make_scheduler(optimizer, config_dict, steps)
    seen = []
    for _ in range(config_dict["num_epochs"] * steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen, optimizer.param_groups[0]["lr"]


def test_peak_at_places_the_peak_of_the_one_cycle_schedule():
    onecycle = {"schedule": "onecycle", "lr": 0.4, "num_epochs": 4, "batch_size": 512}
    seen, after = lrs(dict(onecycle, peak_at=0.25), steps=25)  # 100 steps, peak at step 24
    warmup, total = 25, 100
    for step in (0, 10, 24, 25, 60, 99):
        expected = (0.4 * (step + 1) / warmup if step < warmup
                    else 0.4 * (total - step) / (total - warmup + 1))
        assert seen[step] == pytest.approx(expected, rel=1e-12), step
    assert seen.index(max(seen)) == 24 and max(seen) == pytest.approx(0.4)
    assert after == pytest.approx(0.0, abs=1e-12)
    # a fraction of all steps: --epochs 8 moves the peak with the length of the run
    seen, _ = lrs(dict(onecycle, peak_at=0.25, num_epochs=8), steps=25)
    assert seen.index(max(seen)) == 49


def test_a_config_without_peak_at_keeps_the_old_schedule_bit_for_bit():
    onecycle = {"schedule": "onecycle", "lr": 0.05, "num_epochs": 3, "batch_size": 128}
    total, steps = 3 * 391, 391  # 50,000 images at batch 128; 20% of the steps is 234.6
    warmup = max(1, int(0.2 * total))  # the schedule as it was before peak_at
    old = [0.05 * ((step + 1) / warmup if step < warmup
                   else max(0.0, (total - step) / (total - warmup + 1))) for step in range(total)]
    seen, _ = lrs(onecycle, steps)
    assert seen == old  # exactly, not approximately
    assert lrs(dict(onecycle, peak_at=0.2), steps)[0] == old


@pytest.mark.parametrize("extra, message", [
    ({"peak_at": 0.3}, "'peak_at' places the peak of the one-cycle schedule, but this "
                       "config's schedule is 'constant'"),
    ({"peak_at": 0.3, "schedule": "constant"}, "add \"schedule\": \"onecycle\" or remove"),
    ({"peak_at": 0.0, "schedule": "onecycle"}, "'peak_at' must be above 0 and below 1"),
    ({"peak_at": 1.0, "schedule": "onecycle"}, "'peak_at' must be above 0 and below 1"),
    ({"peak_at": "20%", "schedule": "onecycle"}, "'peak_at' must be a number"),
])
def test_peak_at_is_refused_where_it_means_nothing(extra, message):
    with pytest.raises(config.ConfigError, match="config_2") as error:
        config.check_config(dict({"num_epochs": 1, "lr": 0.1, "batch_size": 8}, **extra),
                            "config_2")
    assert message in str(error.value)
