"""The one command line that every script shares."""
import argparse
import os

from .errors import UserError

DEFAULT_SEED = 0
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit


def whole_number(low, high=None):
    """An argparse type: a whole number from ``low`` (to ``high``)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} must be between {low} and {high}")
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} must be at least {low}")
        return value

    return parse


positive_int = whole_number(1)


def parse_args(script, description, default_out, default_device, argv=None, cpu_amp=False):
    parser = argparse.ArgumentParser(
        prog=script, description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, metavar="N",
                        help="train every selected config for N epochs (overrides num_epochs)")
    parser.add_argument("--configs", metavar="LIST",
                        help="only these configs, comma-separated: numbers from 1 (1,3 = "
                             "config_1 and config_3) or a config's 'name'")
    parser.add_argument("--subset", type=positive_int, metavar="N",
                        help="train on N training images and a proportional, class-balanced "
                             "slice of the test set (quick runs)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="an existing CIFAR-10 copy: DIR/cifar-10-batches-py/, "
                             "DIR/cifar-10-python.tar.gz, or DIR/train/<class>/ + "
                             "DIR/test/<class>/ image folders (default: torchvision downloads "
                             "into ./data)")
    parser.add_argument("--out", default=default_out, metavar="DIR",
                        help=f"output folder (default: {default_out})")
    parser.add_argument("--device", default=default_device, choices=("auto", "cpu", "cuda",
                                                                      "mps"),
                        help=f"where to train (default: {default_device}; auto = a CUDA GPU "
                             f"when one is visible, else a Mac's GPU (mps), else the CPU)")
    parser.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                        help="mixed precision: bf16 autocast (fp16 with loss scaling on GPUs "
                             "below compute capability 8.0: T4, RTX 20xx). auto = on for CUDA; "
                             + ("on the CPU too where it has bf16 in hardware (AVX512-BF16, "
                                "AMX): faster for this model" if cpu_amp else
                                "off on the CPU, where bf16 gains this model nothing")
                             + " (default: auto)")
    parser.add_argument("--compile", action="store_true",
                        help="wrap the model in torch.compile (first epoch slower while it "
                             "compiles; works on the CPU too)")
    parser.add_argument("--seed", type=whole_number(0, MAX_SEED), default=DEFAULT_SEED,
                        help=f"seed for weights, batch order and subsets (default: "
                             f"{DEFAULT_SEED}); the same seed gives the same result on the CPU")
    parser.add_argument("--seeds", type=positive_int, default=1, metavar="K",
                        help="train every selected config K times, with seeds SEED, SEED+1, "
                             "...; summaries and plots show mean and spread (default: 1)")
    parser.add_argument("--restart", action="store_true",
                        help="start over: train each selected config in a new run instead "
                             "of resuming (the old run stays in OUT/runs/)")
    args = parser.parse_args(argv)
    # a quoted "~/res" reaches us unexpanded: the user meant the home folder, as a shell would
    args.out = os.path.expanduser(args.out)
    args.data_dir = args.data_dir and os.path.expanduser(args.data_dir)
    if args.seed + args.seeds - 1 > MAX_SEED:
        parser.error(f"--seed {args.seed} --seeds {args.seeds}: the last seed would pass "
                     f"{MAX_SEED}")
    return args


def select_configs(configs, selection):
    """[(number, config)] for ``--configs``: 1-based numbers or names; all when None."""
    numbered = list(enumerate(configs, start=1))
    if selection is None:
        return numbered
    chosen = []
    for item in (part.strip() for part in selection.split(",")):
        match = [(number, config) for number, config in numbered  # 3, config_3 or a name
                 if item in (str(number), f"config_{number}", config.get("name"))]
        if not match:
            names = [config["name"] for config in configs if "name" in config]
            known = f"config_1 to config_{len(configs)}" + (
                f", or a name: {', '.join(names)}" if names else "")
            raise UserError(f"--configs {selection}: {item!r} is not a config of this script "
                            f"(it has {known}).")
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


def check_subset(subset, selected):
    """A --subset must hold at least one whole batch of every selected config."""
    for number, config in selected:
        if subset is not None and subset < config["batch_size"]:
            raise UserError(f"--subset {subset} is smaller than one batch of config_{number} "
                            f"(batch_size {config['batch_size']}).")
