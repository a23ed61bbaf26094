"""The one command line that every script shares."""
import argparse

from .errors import UserError

DEFAULT_SEED = 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def build_parser(description, default_out, default_device):
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=_positive_int, metavar="N",
                        help="train every selected config for N epochs (overrides num_epochs)")
    parser.add_argument("--configs", metavar="LIST",
                        help="only these configs, 1-based and comma-separated, e.g. 1,3 "
                             "(config_1 and config_3)")
    parser.add_argument("--subset", type=_positive_int, metavar="N",
                        help="train on N training images and a proportional, class-balanced "
                             "slice of the test set (quick runs)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="an existing CIFAR-10 copy: DIR/cifar-10-batches-py/, "
                             "DIR/cifar-10-python.tar.gz, or DIR/train/<class>/ + "
                             "DIR/test/<class>/ image folders (default: torchvision downloads "
                             "into ./data)")
    parser.add_argument("--out", default=default_out, metavar="DIR",
                        help=f"output folder (default: {default_out})")
    parser.add_argument("--device", default=default_device, choices=("auto", "cpu", "cuda"),
                        help=f"where to train (default: {default_device}; auto = a GPU when "
                             f"one is visible, else the CPU)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed for weights, batch order and subsets (default: "
                             f"{DEFAULT_SEED}); the same seed gives the same result on the CPU")
    return parser


def parse_args(description, default_out, default_device, argv=None):
    return build_parser(description, default_out, default_device).parse_args(argv)


def select_configs(configs, selection):
    """[(number, config)] for ``--configs`` (1-based numbers); all configs when None."""
    numbered = list(enumerate(configs, start=1))
    if selection is None:
        return numbered
    chosen = []
    for item in selection.split(","):
        item = item.strip()
        if not item.isdigit() or not 1 <= int(item) <= len(configs):
            raise UserError(f"--configs {selection}: {item!r} is not a config of this script "
                            f"(it has config_1 to config_{len(configs)}).")
        if numbered[int(item) - 1] not in chosen:
            chosen.append(numbered[int(item) - 1])
    return chosen
