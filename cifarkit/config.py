"""Checks on a script's CONFIGS: every problem is refused by name before anything trains."""
import difflib
import numbers
import re

import numpy as np

from .data import AUGMENTATIONS
from .errors import UserError

SCHEDULES = ("constant", "onecycle")  # onecycle: linear warm-up (20% of steps, or peak_at), to 0

# key: (kind, test, what the test demands). kind is "int", "float", "str" or "bool".
TRAINING_KEYS = {
    "name": ("str", lambda value: value.strip() != "", "a non-empty label"),
    "num_epochs": ("int", lambda value: value >= 1, "at least 1"),
    "lr": ("float", lambda value: value > 0, "greater than 0"),
    "momentum": ("float", lambda value: 0 <= value < 1, "in [0, 1)"),
    "batch_size": ("int", lambda value: value >= 1, "at least 1"),
    "weight_decay": ("float", lambda value: value >= 0, "0 or more"),
    "sync_bn": ("bool", lambda value: True, "True or False"),  # SyncBatchNorm under torchrun
    # Beyond the report (each off unless a config asks for it):
    "augment": ("str", lambda value: value in AUGMENTATIONS,
                f"one of {', '.join(repr(name) for name in AUGMENTATIONS)}"),
    "schedule": ("str", lambda value: value in SCHEDULES, f"one of {SCHEDULES}"),
    # where the one-cycle lr peaks, as a fraction of all steps (so --epochs N keeps the shape)
    "peak_at": ("float", lambda value: 0 < value < 1, "above 0 and below 1 (the fraction of "
                                                      "all steps at which the lr peaks)"),
    "nesterov": ("bool", lambda value: True, "True or False"),
    "label_smoothing": ("float", lambda value: 0 <= value < 1, "in [0, 1)"),
    "tta": ("bool", lambda value: True, "True or False"),
    # What the report measured for this config, drawn beside ours (no effect on training):
    "reported_accuracy": ("float", lambda value: 0 <= value <= 100, "a percentage, 0 to 100"),
    "reported_seconds": ("float", lambda value: value > 0, "greater than 0"),
}
REQUIRED = ("num_epochs", "lr", "batch_size")
DEFAULTS = {"momentum": 0.0, "weight_decay": 0.0}
# The value of each optional key that trains exactly as if the key were absent: a result's
# identity leaves such values out, so a key the kit adds later moves no earlier result aside.
NEUTRAL = dict(DEFAULTS, sync_bn=False, augment="none", schedule="constant", peak_at=0.2,
               nesterov=False, label_smoothing=0.0, tta=False)
FLOAT32_MAX = 3.4e38
KIND_NAMES = {"int": "a whole number", "float": "a number", "str": "a string",
              "bool": "True or False"}
KIND_TYPES = {"int": (numbers.Integral, int), "float": (numbers.Real, float), "str": (str, str),
              "bool": ((bool, np.bool_), bool)}  # (what a value must be, its plain form)


class ConfigError(UserError):
    pass


def _plain(kind, value, where):
    """``value`` as the plain Python value of ``kind``; ConfigError naming ``where`` if it is
    not one. numpy numbers (people compute sweeps with numpy) become the ints, floats and bools
    they are, so that they print, compare and write to JSON and checkpoints like any other."""
    types, convert = KIND_TYPES[kind]
    # True is an int to Python, never to a config
    if not isinstance(value, types) or kind != "bool" and isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{where} must be {KIND_NAMES[kind]}, got {value!r} "
                          f"({type(value).__name__}).")
    try:
        plain = convert(value)
    except OverflowError:  # an int too large for any float
        plain = float("inf")
    if kind == "float" and not abs(plain) < FLOAT32_MAX:  # NaN, or the optimizer would overflow
        raise ConfigError(f"{where} must be a finite number below {FLOAT32_MAX:g}, got {value!r}.")
    return plain


def _check_name(name, label):
    """A name selects its config on the command line and labels its files and plots."""
    if name != name.strip() or not name.isprintable() or any(c in name for c in ",/\\"):
        raise ConfigError(f"{label}: 'name' {name!r} must not start or end with a space or "
                          f"hold a comma or a slash (it is used in --configs and in file "
                          f"names).")
    if name.isdigit() or re.fullmatch(r"config_\d+", name):
        raise ConfigError(f"{label}: 'name' {name!r} is a number or a config's number, which "
                          f"--configs would read as another config; use a word, e.g. "
                          f"'run{name.split('_')[-1]}'.")


def model_rules(model_settings):
    """(rules, defaults) for the keys a script's model reads, from the script's own
    MODEL_SETTINGS declaration: {key: {"kind": "float", "min": 0.0, "below": 1.0,
    "default": 0.5}} ("min"/"max" inclusive, "below" exclusive, each optional)."""
    rules, defaults = {}, {}
    for key, setting in model_settings.items():
        where = f"MODEL_SETTINGS[{key!r}]"
        if key in TRAINING_KEYS:
            raise ConfigError(f"{where}: {key!r} is a training key already; give the model "
                              f"setting another name.")
        if not isinstance(setting, dict) or setting.get("kind") not in KIND_NAMES \
                or set(setting) - {"kind", "min", "max", "below", "default"}:
            raise ConfigError(f"{where}: must be a dict with 'kind' (one of "
                              f"{', '.join(KIND_NAMES)}) and optionally 'min', 'max', "
                              f"'below', 'default'; got {setting!r}.")
        low, high, below = (setting.get(field) for field in ("min", "max", "below"))
        demand = _range_text(low, high, below) or KIND_NAMES[setting["kind"]]
        rules[key] = (setting["kind"], lambda value, low=low, high=high, below=below: (
            (low is None or value >= low) and (high is None or value <= high)
            and (below is None or value < below)), demand)
        if "default" in setting:
            defaults[key] = setting["default"]
    return rules, defaults


def _range_text(low, high, below):
    """"in [0, 1)", "at least 1", ... for the bounds that are set."""
    upper = f"{high:g}]" if high is not None else f"{below:g})" if below is not None else None
    if low is not None:
        return f"in [{low:g}, {upper}" if upper else f"at least {low:g}"
    return upper and (f"at most {high:g}" if high is not None else f"below {below:g}")


def neutral_values(model_settings):
    """NEUTRAL, with the defaults of the script's own model settings."""
    return dict(NEUTRAL, **model_rules(model_settings or {})[1])


def check_config(config, label, model_settings=None):
    """Return ``config`` with defaults filled in; raise ConfigError naming ``label`` and key.
    ``model_settings``: the script's MODEL_SETTINGS (keys its model reads)."""
    if not isinstance(config, dict):
        raise ConfigError(f"{label}: a config is a dict such as "
                          f"{{'num_epochs': 5, 'lr': 0.001, 'batch_size': 4}}, "
                          f"not {type(config).__name__}.")
    model_keys, model_defaults = model_rules(model_settings or {})
    rules = dict(TRAINING_KEYS, **model_keys)
    for key, value in config.items():
        if key not in rules:
            close = difflib.get_close_matches(str(key), rules, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{label}: unknown key '{key}'.{hint} "
                              f"Known keys: {', '.join(sorted(rules))}.")
    checked = {}
    for key, value in config.items():
        kind, test, demand = rules[key]
        checked[key] = plain = _plain(kind, value, f"{label}: '{key}'")
        if not test(plain):
            raise ConfigError(f"{label}: '{key}' must be {demand}, got {value!r}.")
    missing = [key for key in REQUIRED if key not in checked]
    if missing:
        raise ConfigError(f"{label}: missing {', '.join(repr(key) for key in missing)}.")
    if checked.get("nesterov") and not checked.get("momentum"):
        raise ConfigError(f"{label}: 'nesterov' needs a 'momentum' above 0.")
    schedule = checked.get("schedule", "constant")
    if "peak_at" in checked and schedule != "onecycle":
        raise ConfigError(f"{label}: 'peak_at' places the peak of the one-cycle schedule, but "
                          f"this config's schedule is {schedule!r}; add \"schedule\": "
                          f"\"onecycle\" or remove 'peak_at'.")
    if "name" in checked:
        _check_name(checked["name"], label)
    defaults = dict(DEFAULTS, **model_defaults)  # recorded: the JSON says what was trained
    return dict(checked, **{key: value for key, value in defaults.items() if key not in checked})


def check_configs(configs, model_settings=None):
    """Check a whole CONFIGS list; names (when given) must be unique."""
    if not isinstance(configs, (list, tuple)):
        raise ConfigError(f"CONFIGS must be a list of config dicts, [{{...}}, {{...}}], not a "
                          f"{type(configs).__name__}. Put the dict(s) in square brackets.")
    if not configs:
        raise ConfigError("CONFIGS is empty: add at least one config dict to the list at the "
                          "top of the script.")
    checked = [check_config(config, f"config_{number}", model_settings)
               for number, config in enumerate(configs, start=1)]
    names = [config["name"] for config in checked if "name" in config]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"CONFIGS: the name {repeated[0]!r} is used by more than one config.")
    return checked
