"""Checks on a script's CONFIGS: every problem is refused by name before anything trains."""
import difflib
import numbers

from .data import AUGMENTATIONS
from .errors import UserError

SCHEDULES = ("constant", "onecycle")  # onecycle: linear warm-up over 20% of steps, then to 0

# key: (kind, test, what the test demands). kind is "int", "float" or "str".
TRAINING_KEYS = {
    "name": ("str", lambda value: value.strip() != "", "a non-empty label"),
    "num_epochs": ("int", lambda value: value >= 1, "at least 1"),
    "lr": ("float", lambda value: value > 0, "greater than 0"),
    "momentum": ("float", lambda value: 0 <= value < 1, "in [0, 1)"),
    "batch_size": ("int", lambda value: value >= 1, "at least 1"),
    "weight_decay": ("float", lambda value: value >= 0, "0 or more"),
    "sync_bn": ("bool", lambda value: True, "True or False"),  # SyncBatchNorm under torchrun
    # Beyond the report (each off unless a config asks for it):
    "augment": ("str", lambda value: value in AUGMENTATIONS, f"one of {AUGMENTATIONS}"),
    "schedule": ("str", lambda value: value in SCHEDULES, f"one of {SCHEDULES}"),
    "nesterov": ("bool", lambda value: True, "True or False"),
    "label_smoothing": ("float", lambda value: 0 <= value < 1, "in [0, 1)"),
    "tta": ("bool", lambda value: True, "True or False"),
}
# Keys that only a script whose model reads them accepts (it names them in model_keys).
MODEL_KEYS = {
    "dropout": ("float", lambda value: 0 <= value < 1, "in [0, 1)"),
}
REQUIRED = ("num_epochs", "lr", "batch_size")
DEFAULTS = {"momentum": 0.0, "weight_decay": 0.0}
KIND_NAMES = {"int": "a whole number", "float": "a number", "str": "a string",
              "bool": "True or False"}


class ConfigError(UserError):
    pass


def _check_kind(kind, value):
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):  # True is an int to Python, never to a config
        return False
    if kind == "int":
        return isinstance(value, numbers.Integral)
    return isinstance(value, numbers.Real)


def check_config(config, label, model_keys=()):
    """Return ``config`` with defaults filled in; raise ConfigError naming ``label`` and key."""
    if not isinstance(config, dict):
        raise ConfigError(f"{label}: a config is a dict such as "
                          f"{{'num_epochs': 5, 'lr': 0.001, 'batch_size': 4}}, "
                          f"not {type(config).__name__}.")
    rules = dict(TRAINING_KEYS, **{key: MODEL_KEYS[key] for key in model_keys})
    for key, value in config.items():
        if key not in rules:
            close = difflib.get_close_matches(str(key), rules, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{label}: unknown key '{key}'.{hint} "
                              f"Known keys: {', '.join(sorted(rules))}.")
        kind, test, demand = rules[key]
        if not _check_kind(kind, value):
            raise ConfigError(f"{label}: '{key}' must be {KIND_NAMES[kind]}, "
                              f"got {value!r} ({type(value).__name__}).")
        if not test(value):
            raise ConfigError(f"{label}: '{key}' must be {demand}, got {value!r}.")
    missing = [key for key in REQUIRED if key not in config]
    if missing:
        raise ConfigError(f"{label}: missing {', '.join(repr(key) for key in missing)}.")
    if config.get("nesterov") and not config.get("momentum"):
        raise ConfigError(f"{label}: 'nesterov' needs a 'momentum' above 0.")
    checked = dict(config, **{key: value for key, value in DEFAULTS.items() if key not in config})
    return {key: float(value) if rules[key][0] == "float" else value
            for key, value in checked.items()}


def check_configs(configs, model_keys=()):
    """Check a whole CONFIGS list; names (when given) must be unique."""
    if not isinstance(configs, (list, tuple)) or not configs:
        raise ConfigError("CONFIGS is empty: add at least one config dict to the list at the "
                          "top of the script.")
    checked = [check_config(config, f"config_{number}", model_keys)
               for number, config in enumerate(configs, start=1)]
    names = [config["name"] for config in checked if "name" in config]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"CONFIGS: the name {repeated[0]!r} is used by more than one config.")
    return checked
