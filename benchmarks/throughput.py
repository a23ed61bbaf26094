"""Training images per second: the PyTorch tutorial's input pipeline against this kit's.

    python benchmarks/throughput.py --data-dir ../shared/cifar10-jpeg
    python benchmarks/throughput.py --data-dir ../shared/cifar10-jpeg --gpu   # on a GPU

(a) the tutorial: a torchvision-style dataset that turns each uint8 image into a PIL image,
    then ToTensor + Normalize, batched by DataLoader(shuffle=True, num_workers=2); fp32, eager.
(b) this kit: the same images as one uint8 tensor on the device, batches cut by index and
    normalised as a whole (cifarkit.train.fit), eager, in the precision the model's
    script picks by default (--amp auto: fp32 for LeNet on the CPU; bf16 autocast for
    ResNet-18 on CPUs with bf16 in hardware, and on GPUs). --amp off/on forces it.
(c) the ceiling: (b)'s model step alone, on one batch that never changes. No input pipeline
    can be faster than this, so c/a bounds any b/a on this machine.
--compile wraps the model of (b) and (c) in torch.compile; --cases picks some of the cases.
All three train the same model with the same SGD on the same data, in the same process; they
alternate for several rounds and the median of each is reported, with b/a and c/a.

--gpu also times one full ResNet-18 epoch of (b) and runs Resnet_model.py's "recipe" config
end to end, reporting its training time and test accuracy. --quick shrinks every step count
(for the tests; its numbers mean nothing).
"""
import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import Resnet_model  # noqa: E402
from cifarkit import data, train  # noqa: E402
from cifarkit.cli import positive_int  # noqa: E402
from cifarkit.errors import UserError  # noqa: E402
from cifarkit import runtime as rt  # noqa: E402
import Original_version_model  # noqa: E402

CASES = [  # name, its script, the script's CPU_AMP, batch size, steps a round (full, --quick)
    ("LeNet, batch 4", Original_version_model, False, 4, 3000, 20),
    ("LeNet, batch 64", Original_version_model, False, 64, 400, 5),
    ("ResNet-18, batch 128", Resnet_model, Resnet_model.CPU_AMP, 128, 12, 1),
]
WARMUP_STEPS = 5


class TutorialDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: PIL image, then the transforms."""

    def __init__(self, images, labels, normalization):
        import torchvision.transforms as transforms

        self.images = images.permute(0, 2, 3, 1).numpy()  # N x 32 x 32 x 3, as CIFAR10 keeps
        self.labels = labels.tolist()
        self.transform = transforms.Compose([transforms.ToTensor(),
                                             transforms.Normalize(*normalization)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def tutorial_round(model, dataset, batch_size, steps, device, warmup=WARMUP_STEPS):
    """Images/s of the tutorial loop over ``steps`` batches (after a short warm-up)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         num_workers=2)
    model.train()
    started, seen = None, 0
    batches = iter(loader)
    for step, (inputs, targets) in enumerate(batches):
        if step == warmup:
            started, seen = _now(device), 0
        inputs, targets = inputs.to(device), targets.to(device)
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the tutorial reads the loss every step
        seen += len(targets)
        if step == warmup + steps - 1:
            break
    speed = seen / (_now(device) - started)
    del batches  # stops the worker processes now, so they do not slow down pipeline (b)
    return speed


def kit_round(model, images, labels, normalization, batch_size, steps, runtime, seed,
              warmup=WARMUP_STEPS):
    """Images/s of cifarkit's training loop over ``steps`` batches (after a warm-up)."""
    scale, shift = data.normalizer(*normalization, device=runtime.device)
    order = data.batch_order(len(labels), batch_size, seed, 1)[:warmup + steps]
    warmup = min(warmup, len(order) // 2)  # a small data set: half of it warms up
    parts = ([torch.cat(order[:warmup])] if warmup else []) + [torch.cat(order[warmup:])]
    chosen = {"lr": 0.001, "momentum": 0.9, "weight_decay": 0.0, "batch_size": batch_size,
              "num_epochs": 1}
    seconds = []
    for part in parts:  # the warm-up, if any, then the timed steps
        on_device = data.OnDevice(images[part], labels[part], images[:1], labels[:1], scale,
                                  shift)  # a test "set" of one image
        seconds.append(train.fit(model, chosen, on_device, runtime,
                                 seed).progress["history"][0]["seconds"])
    return len(parts[-1]) / seconds[-1]


def ceiling_round(model, images, labels, normalization, batch_size, steps, runtime,
                  warmup=WARMUP_STEPS):
    """Images/s of (b)'s model step alone: one batch, prepared once, trained on again and
    again (the same forward, loss, backward and optimizer step as train.train_config)."""
    optimizer = train.make_optimizer(model, {"lr": 0.001, "momentum": 0.9, "weight_decay": 0.0},
                                     runtime)
    scale, shift = data.normalizer(*normalization, device=runtime.device)
    index = torch.arange(batch_size, device=runtime.device)
    inputs, targets = data.prepare_batch(images, labels, index, scale, shift)
    inputs = rt.memory_format(inputs)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            started = _now(runtime.device)
        with train.autocast(runtime.device.type, runtime.amp_dtype):
            loss = F.cross_entropy(model(inputs).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (_now(runtime.device) - started)


def _now(device):
    rt.synchronize(device)
    return time.perf_counter()


def compare(dataset, device, amp, compile, cases, rounds, quick):
    rows = []
    warmup = 0 if quick else WARMUP_STEPS  # --quick: no warm-up
    for number, (name, script, cpu_amp, batch_size, steps, quick_steps) in enumerate(CASES, 1):
        if number not in cases:
            continue
        steps = quick_steps if quick else steps
        runtime = rt.init_runtime(device, amp=amp, compile=compile, cpu_amp=cpu_amp)
        normalization = script.NORMALIZATION
        build = partial(script.build_model, {})  # the script's model, as its configs get it
        tutorial_data = TutorialDataset(dataset.train_images, dataset.train_labels, normalization)
        images = dataset.train_images.to(runtime.device)
        labels = dataset.train_labels.to(runtime.device)
        speeds = {"a": [], "b": [], "c": []}
        for round_number in range(rounds):  # alternate, so drift hits all three alike
            torch.manual_seed(round_number)
            speeds["a"].append(tutorial_round(build().to(runtime.device), tutorial_data,
                                              batch_size, steps, runtime.device, warmup))
            torch.manual_seed(round_number)
            speeds["b"].append(kit_round(rt.place_model(build(), runtime), images, labels,
                                         normalization, batch_size, steps, runtime,
                                         round_number, warmup))
            torch.manual_seed(round_number)
            speeds["c"].append(ceiling_round(rt.place_model(build(), runtime), images, labels,
                                             normalization, batch_size, steps, runtime, warmup))
        a, b, c = (statistics.median(speeds[key]) for key in "abc")
        precision = rt.precision(runtime) + (", torch.compile" if compile else "")
        rows.append({"case": name, "kit_precision": precision,
                     "tutorial_images_per_s": a, "kit_images_per_s": b,
                     "ceiling_images_per_s": c, "ratio": b / a, "ceiling_ratio": c / a,
                     "rounds": rounds, "steps_per_round": steps,
                     "all_a": speeds["a"], "all_b": speeds["b"], "all_c": speeds["c"]})
        print(f"{name:22s}  (a) tutorial {a:8.1f} img/s   (b) kit {b:8.1f} img/s   "
              f"b/a = {b / a:5.2f}x   (c) step alone {c:8.1f} img/s, c/a = {c / a:5.2f}x   "
              f"[(b), (c): {precision}; {rounds} rounds of {steps} steps, medians]", flush=True)
    return rows


def gpu_mode(args, dataset):
    """One full ResNet-18 epoch of the kit's loop (--quick: one step), then the ResNet
    recipe end to end."""
    runtime = rt.init_runtime(args.device, amp=args.amp, cpu_amp=Resnet_model.CPU_AMP)
    torch.manual_seed(0)
    model = rt.place_model(Resnet_model.build_model({}), runtime)
    images = dataset.train_images.to(runtime.device)
    labels = dataset.train_labels.to(runtime.device)
    warmup = 0 if args.quick else WARMUP_STEPS
    steps = 1 if args.quick else -(-len(labels) // 128) - warmup  # the epoch's rest
    speed = kit_round(model, images, labels, data.CIFAR10_NORMALIZATION, 128, steps, runtime, 0,
                      warmup)
    print(f"ResNet-18 epoch, batch 128, {rt.precision(runtime)}: {speed:.0f} img/s, "
          f"{len(labels) / speed:.1f} s per epoch of {len(labels)} images", flush=True)
    with tempfile.TemporaryDirectory() as out:
        argv = ["--configs", "recipe", "--out", out, "--device", args.device,
                "--data-dir", args.data_dir, "--amp", args.amp]
        argv += ["--subset", str(args.subset)] if args.subset else []
        argv += ["--epochs", str(args.epochs)] if args.epochs else []
        status = Resnet_model.main(argv)
        (entry,) = json.loads((Path(out) / "Resnet_model_result.json").read_text())["configs"]
    recipe = {"status": status, "precision": entry["precision"],
              "train_seconds": entry["train_seconds"],
              "final_test_accuracy": entry["final_test_accuracy"],
              "epochs": entry["config"]["num_epochs"]}
    print(f"ResNet recipe: {recipe['final_test_accuracy']:.2f}% test accuracy after "
          f"{recipe['epochs']} epochs, {recipe['train_seconds']:.1f} s of training", flush=True)
    return {"resnet_epoch_images_per_s": speed, "resnet_recipe": recipe}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a CIFAR-10 copy (see README)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="alternating rounds per case")
    parser.add_argument("--quick", action="store_true", help="a few steps only (tests)")
    parser.add_argument("--gpu", action="store_true",
                        help="also a full ResNet-18 epoch and the ResNet recipe end to end")
    parser.add_argument("--subset", type=int, help="--gpu: train on N images (tests)")
    parser.add_argument("--epochs", type=int, help="--gpu: override the recipe's epochs (tests)")
    parser.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                        help="mixed precision for (b) and (c), as the scripts' --amp (default: "
                             "auto, what each model's script does by default); (a) is fp32")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model in (b) and (c), as the scripts' --compile")
    parser.add_argument("--cases", default="1,2,3",
                        help="which cases to run, by number: 1 LeNet batch 4, 2 LeNet batch 64, "
                             "3 ResNet-18 batch 128 (default: all)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    try:
        cases = {int(number) for number in args.cases.split(",")}
    except ValueError:
        cases = set()
    if not cases or not cases <= set(range(1, len(CASES) + 1)):
        parser.error(f"--cases {args.cases}: comma-separated numbers from 1 to {len(CASES)}")
    device = rt.init_runtime(args.device).device
    try:
        dataset = data.load_cifar10(args.data_dir, args.subset, 0)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    machine = (f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
               f"{torch.__version__}, device {device}"
               + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
               + (f", CPU bf16 in hardware: {rt.cpu_has_native_bf16()}"
                  if device.type == "cpu" else ""))
    print(f"Machine: {machine}; data: {dataset.source}", flush=True)
    results = {"machine": machine, "command": "python benchmarks/throughput.py "
               + " ".join(sys.argv[1:] if argv is None else argv),
               "cases": compare(dataset, args.device, args.amp, args.compile, cases, args.rounds,
                                args.quick)}
    if args.gpu:
        results.update(gpu_mode(args, dataset))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
