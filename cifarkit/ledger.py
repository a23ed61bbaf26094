"""A folder's results ledger: which earlier result belongs to which config, and every move.

    earlier, completed = ledger.open_folder(out, names)  # finish what a kill left, read
    plan = ledger.plan(found, configs, restart, ...)     # what stays, is renamed, goes aside
    kept, lines = ledger.carry_out(out, names, earlier, plan, current_configs)

Nothing else in the kit moves, renames or deletes a result. Every change of a folder (files
renamed after a reorder, a changed config's files moved into ``earlier-<time>/``, --restart)
is one transaction: a journal naming every move and the results JSONs to write is written
first, then the files move and the JSONs are written, then the journal goes. A kill at any
moment leaves the journal, and the next run of any script into that folder (or make_report)
completes it before it reads anything, so a results entry is never apart from its weights and
checkpoint. A file moves first to a hidden name in its own folder (an atomic rename), then to
its place; across file systems (a checkpoints/ link to a scratch disk) it is copied, synced,
renamed into place, and only then removed.

A result's identity is what the experiment computes, not how it is named: the data by its
content fingerprint (not the path spelling), the normalization, the config without naming
keys and without values equal to the neutral ones (so a key added to the kit later, whose
default trains as before, changes no identity), and the model's fingerprint.
"""
import errno
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import signals
from .errors import UserError
from .results import PLOT_FILES, load_results, save_json, write_atomically

EARLIER_PREFIX = "earlier-"  # subfolders holding results that a later run moved aside
JOURNAL = ".ledger.json"     # a transaction in progress...
JOURNAL_COPY = ".ledger.copy.json"  # ...and its copy, should one be damaged or deleted
STAGED = re.compile(r"\.ledger-[0-9a-f]{8}-\d+")  # a file on its way (see _commit)
CHECKPOINTS = "checkpoints"
CHECKPOINT_NAME = re.compile(r"(?P<label>config_\d+)_seed(?P<seed>\d+)\.ckpt")
TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # write_atomically's, cut short by a kill
NAMING_KEYS = ("name", "reported_accuracy", "reported_seconds")  # change no computation
CONFLICT = "two different configs under one id"


@dataclass(frozen=True)
class Names:
    """How one script names its files in a folder."""
    script: str         # the script's file name, recorded in its results JSON
    results_file: str   # its results JSON
    weights_file: str   # its weights pattern: "config_{number}.pth" or "model.pth"


@dataclass
class Configs:
    """A script's CONFIGS as the ledger sees them."""
    checked: dict    # config id -> the config, defaults filled in
    neutral: dict    # key -> the value that trains as if the key were absent
    identity: dict   # config id -> (config identity, model fingerprint)
    selected: list   # the ids this run trains
    every: bool      # no --configs: all are selected, and removed configs' results may go


@dataclass
class Plan:
    """What happens to a folder's earlier results before training starts."""
    everything: str = None                     # why every kit file goes aside, or None
    aside: dict = field(default_factory=dict)  # config id -> why its results go aside
    renamed: dict = field(default_factory=dict)  # old id -> new id
    left: list = field(default_factory=list)   # changed configs not selected: left as they are


# ----------------------------------------------------------------------------- file names

def number_of(label):
    """3 for "config_3"."""
    return int(label.split("_")[1])


def weights_stem(pattern, number):
    """The weights file name of config ``number`` without ".pth" and the seed: config_3 for
    "config_{number}.pth"; for a pattern without a number (the baseline's "model.pth"),
    "model" for config 1 and "model_config_3" for the others, so configs never share one."""
    if "{number}" in pattern:
        return pattern.format(number=number)[:-len(".pth")]
    return pattern[:-len(".pth")] + ("" if number == 1 else f"_config_{number}")


def weights_name(pattern, number, seed, base_seed):
    """config_N.pth for the run's own seed; config_N_seedS.pth for the extra seeds."""
    stem = weights_stem(pattern, number)
    return f"{stem}.pth" if seed == base_seed else f"{stem}_seed{seed}.pth"


def _weights_regex(pattern, number=None):
    """What weights_name() writes for config ``number`` (any config when None)."""
    if number is not None:
        stem = re.escape(weights_stem(pattern, number))
    elif "{number}" in pattern:
        stem = re.escape(pattern[:-len(".pth")]).replace(re.escape("{number}"), r"\d+")
    else:
        stem = re.escape(pattern[:-len(".pth")]) + r"(_config_\d+)?"
    return re.compile(stem + r"(_seed\d+)?\.pth")


def checkpoint_path(out, label, seed):
    return Path(out) / CHECKPOINTS / f"{label}_seed{seed}.ckpt"


def _files(folder, pattern):
    """The regular files in ``folder`` whose names match ``pattern`` (never a pipe)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir()
                  if pattern.fullmatch(path.name) and path.is_file())


def config_files(out, label, weights_file):
    """The weights (every seed) and checkpoints of one config (``label``: config_N)."""
    return (_files(out, _weights_regex(weights_file, number_of(label)))
            + _files(Path(out) / CHECKPOINTS, re.compile(re.escape(label) + r"_seed\d+\.ckpt")))


def kit_files(out, names):
    """The files in ``out`` that this kit writes (results JSONs, weights, PNGs, checkpoints):
    the only ones it ever moves. Anything else there is left alone."""
    out = Path(out)
    found = [out / name for name in (names.results_file, *PLOT_FILES)]
    for path in _files(out, re.compile(r".+\.json")):  # any script's results, and its weights
        results = load_results(path)
        if isinstance(results, dict):
            found.append(path)
            found += [out / entry["weights"] for entry in results["configs"]
                      if isinstance(entry.get("weights"), str)
                      and Path(entry["weights"]).name == entry["weights"]]
    found += _files(out, _weights_regex(names.weights_file))
    found += _files(out / CHECKPOINTS, CHECKPOINT_NAME)
    return sorted({path for path in found if path.is_file()})


def remove_temporaries(out):
    """Delete what writes cut short by kill -9 or a power cut left behind (a ResNet
    checkpoint's is 90 MB): files named as only write_atomically names them."""
    for folder in (Path(out), Path(out) / CHECKPOINTS):
        for path in _files(folder, TEMPORARY):
            path.unlink()


def remove_stale_checkpoints(out, results):
    """Delete the checkpoints of the entries that ended (finished or diverged), which a kill
    between recording an entry and removing its checkpoint leaves (carried into earlier-*
    for ever otherwise). A finished entry whose weights are gone keeps its checkpoint: the
    config finishes again from it."""
    out = Path(out)
    for entry in results["configs"] if isinstance(results, dict) else []:
        ended = entry["status"] == "diverged" or (
            entry["status"] == "finished" and isinstance(entry.get("weights"), str)
            and Path(entry["weights"]).name == entry["weights"]
            and (out / entry["weights"]).is_file())
        path = checkpoint_path(out, entry["id"], entry["seed"])
        if ended and path.is_file():
            path.unlink()
    remove_if_empty(out / CHECKPOINTS)


def remove_if_empty(folder):
    """checkpoints/ once empty; a link to a scratch disk, or a disk mounted there, stays."""
    folder = Path(folder)
    if (folder.is_dir() and not folder.is_symlink() and not folder.is_mount()
            and not any(folder.iterdir())):
        folder.rmdir()


# ------------------------------------------------------------------------------- identity

def config_identity(config, neutral):
    """What a config makes the training compute: no naming keys, and no key whose value is
    the neutral one (``neutral``: {key: value that trains as if the key were absent})."""
    return {key: value for key, value in sorted(config.items())
            if key not in NAMING_KEYS and not (key in neutral and neutral[key] == value)}


def same_data(earlier, now):
    """Whether two results JSONs' "data" records describe the same inputs: the images by
    their content fingerprint and counts, and the normalization; not the path they were read
    from. A record written before the normalization was recorded is taken as the same."""
    if not isinstance(earlier, dict) or not isinstance(now, dict):
        return False
    keys = (set(earlier) | set(now)) - {"source"}
    if "normalization" not in earlier:
        keys.discard("normalization")
    return all(earlier.get(key) == now.get(key) for key in keys)


def describe_change(before, after, neutral=None):
    """What changed between two configs (or data records), briefly:
    "lr 0.01 -> 0.02, nesterov (unset) -> True"; a key absent from a config identity shows
    its ``neutral`` value where it has one (the identity leaves neutral values out)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return "it is no longer in CONFIGS" if after is None else f"{before!r} -> {after!r}"
    changes, neutral = [], neutral or {}
    for key in list(before) + [key for key in after if key not in before]:
        old, new = (config.get(key, neutral.get(key, "(unset)")) for config in (before, after))
        if old != new and key != "source":
            changes.append(describe_change(old, new) if isinstance(old, dict)
                           and isinstance(new, dict) else f"{key} {old!r} -> {new!r}")
    return ", ".join(changes)


# ------------------------------------------------------------------------------ reading

def open_folder(out, names):
    """Finish a transaction a kill interrupted, remove cut-short writes; return (the
    folder's results JSON: a dict, None when absent, "unreadable" when it cannot be used;
    the lines that say what a finished transaction moved)."""
    finished = [f"{line} (a move that a stopped run had begun, completed now)"
                for line in recover(out)]
    remove_temporaries(out)
    path = Path(out) / names.results_file
    if path.exists() and not path.is_file():
        return "unreadable", finished
    earlier = load_results(path)
    remove_stale_checkpoints(out, earlier)
    return earlier, finished


def whole_folder_problem(out, names, earlier, results):
    """Why every kit file in ``out`` must go aside before this run can use the folder (it
    holds another script's results, another seed's, other data's, or unreadable ones), or
    None."""
    if earlier is None:  # then no file named as the kit names its results is accounted for
        strays = [path.name for path in kit_files(out, names) if path.parent == Path(out)]
        if strays:
            return (f"{out} holds {', '.join(strays[:3])}{', ...' if len(strays) > 3 else ''}"
                    f", named as this kit names its results, but no {names.results_file} of "
                    f"{names.script}")
        return None
    if earlier == "unreadable":
        return f"{Path(out) / names.results_file} is not a results file this kit can read"
    if earlier.get("script") != names.script:
        return f"{Path(out) / names.results_file} was written by {earlier.get('script')}"
    if earlier["seed"] != results["seed"]:
        return f"--seed differs from the earlier run's ({earlier['seed']} -> {results['seed']})"
    if not same_data(earlier["data"], results["data"]):
        return (f"the data differs from the earlier run's "
                f"({describe_change(earlier['data'], results['data'])})")
    return None


def found_configs(earlier, checkpoints, results, neutral):
    """{config id: (config identity, model fingerprint)} of what the folder holds, from the
    results JSON and the readable ``checkpoints`` ({path: identity}); CONFLICT where two
    disagree, None for a checkpoint of another seed or data set."""
    found = {}

    def add(label, content):
        found[label] = content if found.get(label, content) == content else CONFLICT

    for entry in (earlier or {}).get("configs", []):
        add(entry["id"], (config_identity(entry["config"], neutral), entry.get("model")))
    for path, identity in sorted(checkpoints.items()):
        name = CHECKPOINT_NAME.fullmatch(Path(path).name)
        same_run = (identity.get("seed") == int(name["seed"])
                    and same_data(identity.get("data"), results["data"]))
        saved = identity.get("config")
        add(name["label"], (config_identity(saved if isinstance(saved, dict) else {}, neutral),
                            identity.get("model")) if same_run else None)
    return found


def read_checkpoints(out, read_identity):
    """({path: identity}, {config id: why its checkpoint cannot be used}) for the kit's
    checkpoints in ``out``; ``read_identity(path)`` raises UserError for one it cannot read."""
    readable, unusable = {}, {}
    for path in _files(Path(out) / CHECKPOINTS, CHECKPOINT_NAME):
        try:
            readable[path] = read_identity(path)
        except UserError as error:
            unusable[CHECKPOINT_NAME.fullmatch(path.name)["label"]] = str(error)
    return readable, unusable


# ------------------------------------------------------------------------------ deciding

def plan(found, configs, restart, epochs_flag, unusable=()):
    """Match what the folder holds (``found``: {id: identity}) to ``configs`` by content: a
    config that moved in CONFIGS keeps its results under its new id; a changed config's
    results go aside when it is selected (a removed one's when every config is);
    ``restart``: the selected configs' results go aside, wherever they are now, and their
    ``unusable`` checkpoints (ids) with them."""
    current = configs.identity
    changed = [label for label, content in found.items() if current.get(label) != content]
    free = [label for label in current if found.get(label) != current[label]]
    result = Plan()
    for label in changed:
        moved_to = next((other for other in free if current[other] == found[label]), None)
        if moved_to is not None:
            result.renamed[label] = moved_to
            free.remove(moved_to)
    for label in (label for label in changed if label not in result.renamed):
        taken = label in result.renamed.values()
        if configs.every or label in configs.selected or taken:
            result.aside[label] = _why_changed(label, found[label], current.get(label), taken,
                                               epochs_flag, configs.neutral)
        else:  # its entries keep the config they were trained with
            result.left.append(label)
    for label in unusable:  # a damaged checkpoint never stays under a new config's name
        if label in result.renamed.values() and label not in result.aside \
                and label not in result.renamed:  # one that moves, moves with its config
            result.aside[label] = f"{label}: its checkpoint cannot be used"
    if restart:
        owners = {result.renamed.get(label, label): label for label in found
                  if label in result.renamed or label not in changed}
        for label in configs.selected:
            owner = owners.get(label, label if label in unusable else None)
            if owner is not None:
                result.renamed.pop(owner, None)
                result.aside[owner] = f"--restart {label}"
    return result


def _why_changed(label, content, now, taken, epochs_flag, neutral):
    if now is None or taken:
        why = "it is no longer in CONFIGS"
    elif not isinstance(content, tuple):
        why = ("it was trained with another seed or data set" if content is None
               else "its results hold two different configs")
    elif content[0] == now[0]:
        return f"{label}: the model class changed since its earlier results"
    else:
        why = describe_change(content[0], now[0], neutral)
        if epochs_flag and content[0].get("num_epochs") != now[0].get("num_epochs"):
            why += " (--epochs)"
    return f"{label} differs from its earlier results: {why}"


def blocked_checkpoints(plan_, unusable, precisions, precision, selected):
    """Refuse a selected config's checkpoint that cannot be used (unreadable, or trained in
    other arithmetic) unless the plan moves it aside; other configs' never block this run.
    ``precisions``: {config id: the precision its checkpoint was trained in}."""
    def resumed(label):  # the id whose checkpoint the selected config would carry on
        owner = next((old for old, new in plan_.renamed.items() if new == label), label)
        return None if owner in plan_.aside or (owner == label and label in plan_.renamed) \
            else owner

    for label in selected:
        owner = resumed(label)
        if owner in unusable:
            raise UserError(f"{unusable[owner]} To start {label} over: --restart --configs "
                            f"{number_of(label)}.")
        if owner in precisions and precisions[owner] != precision:
            raise UserError(
                f"{label}: its checkpoint was trained in {precisions[owner]} so far; this run "
                f"would carry it on in {precision} (another --amp, device or GPU). Rerun as it "
                f"was started to resume it, or start it over with --restart --configs "
                f"{number_of(label)} (its checkpoint is then moved aside).")


# ------------------------------------------------------------------------------- acting

def carry_out(out, names, earlier, plan_, current_configs):
    """Perform ``plan_`` as one transaction; return (the results JSON the folder now holds,
    or None; the lines that say what moved). ``current_configs``: {id: config} of CONFIGS,
    whose naming keys (name, reported figures) the kept entries take."""
    out = Path(out)
    target = _earlier_folder(out)
    moves, writes, lines = [], {}, []
    if plan_.everything:
        moves = [(path, target / path.relative_to(out)) for path in kit_files(out, names)]
        if moves:
            lines.append(f"{plan_.everything}: the earlier results are kept in {target}/")
        kept = None
    else:
        lost = _lost_weights(out, earlier, plan_)
        lines += [f"{entry['id']}: its weights {entry['weights']} are missing (moved or deleted "
                  f"by hand?), so it trains again" for entry in lost]
        kept = _kept(earlier, plan_, current_configs, names.weights_file, lost)
        for label, reason in plan_.aside.items():
            moves += [(path, target / path.relative_to(out))
                      for path in config_files(out, label, names.weights_file)]
            lines.append(f"{reason}: its earlier results are kept in {target}/")
        moving = [entry for entry in (earlier or {}).get("configs", [])
                  if entry["id"] in plan_.aside]
        if moving:
            writes[target / names.results_file] = dict(earlier, configs=moving)
        renames = _renames(out, plan_.renamed, names.weights_file)
        sources = {source for source, _ in moves + renames}
        for _, new_name in renames:  # a file of no known config where a result now goes
            if os.path.lexists(new_name) and new_name not in sources:
                moves.append((new_name, target / new_name.relative_to(out)))
                lines.append(f"{new_name.name} was in the way of a config's new name: it is "
                             f"kept in {target}/")
        moves += renames
        for path in _unnamed_weights(out, names, kept, moves, current_configs):
            moves.append((path, target / path.relative_to(out)))
            lines.append(f"{path.name}, which no results entry names, is kept in {target}/ "
                         f"(this run may write there)")
        lines += [f"{old} is {new} now (the same config, moved in CONFIGS): its results are "
                  f"kept, renamed to {new}" for old, new in plan_.renamed.items()]
        lines += _relabelled(earlier, kept, plan_)
        if kept is not None and kept != earlier:
            writes[out / names.results_file] = kept
    if moves or writes:
        _commit(out, moves, writes, lines)
    return kept, lines


def _relabelled(earlier, kept, plan_):
    """A line for each kept config whose naming keys (its name, the report's figures) were
    edited: nothing retrains, and the PNGs are redrawn with the new labels."""
    if kept is None:
        return []
    before = {entry["id"]: entry["config"] for entry in earlier["configs"]}
    lines = {}
    for entry in kept["configs"]:
        label = entry["id"]
        if label in before and label not in plan_.renamed.values():
            was, now = ({key: config[key] for key in NAMING_KEYS if key in config}
                        for config in (before[label], entry["config"]))
            if was != now:
                lines[label] = (f"{label}: {describe_change(was, now)} (a label: its results "
                                f"are kept)")
    return list(lines.values())


def _unnamed_weights(out, names, kept, moves, current_configs):
    """Weights files where this run may write that no results entry names (a user's own, or
    one whose entry was deleted by hand): moved aside, never overwritten."""
    named = {entry.get("weights") for entry in (kept or {}).get("configs", [])}
    sources = {source for source, _ in moves}
    return [path for label in current_configs
            for path in config_files(out, label, names.weights_file)
            if path.suffix == ".pth" and path.name not in named and path not in sources]


def _earlier_folder(out):
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target, suffix = out / f"{EARLIER_PREFIX}{stamp}", 1
    while os.path.lexists(target):
        suffix += 1
        target = out / f"{EARLIER_PREFIX}{stamp}-{suffix}"
    return target


def _renames(out, renamed, weights_file):
    moves = []
    for old, new in renamed.items():
        old_stem, new_stem = (weights_stem(weights_file, number_of(label))
                              for label in (old, new))
        for path in config_files(out, old, weights_file):
            name = (path.name.replace(old, new, 1) if path.suffix == ".ckpt"
                    else new_stem + path.name[len(old_stem):])
            moves.append((path, path.parent / name))
    return moves


def _lost_weights(out, earlier, plan_):
    """The finished entries that stay but whose weights file is not there."""
    return [entry for entry in (earlier or {}).get("configs", [])
            if entry["status"] == "finished" and entry["id"] not in plan_.aside
            and not (isinstance(entry.get("weights"), str) and (out / entry["weights"]).is_file())]


def _kept(earlier, plan_, current_configs, weights_file, lost=()):
    """``earlier`` without the entries going aside or ``lost``, the renamed ones under their
    new ids and weights names, each with the current config's naming keys."""
    if not isinstance(earlier, dict):
        return None
    configs = []
    for entry in earlier["configs"]:
        if entry["id"] in plan_.aside or entry in lost:
            continue
        label = plan_.renamed.get(entry["id"], entry["id"])
        entry = dict(entry, id=label)
        if label in current_configs and label not in plan_.left:
            entry["config"] = current_configs[label]
        if entry.get("weights"):
            entry["weights"] = weights_name(weights_file, number_of(label), entry["seed"],
                                            earlier["seed"])
        configs.append(entry)
    configs.sort(key=lambda entry: (number_of(entry["id"]), entry["seed"]))
    return dict(earlier, configs=configs)


# --------------------------------------------------------------------------- transactions

def _commit(out, moves, writes, lines):
    """Record the transaction, then perform it (see the module docstring)."""
    token = secrets.token_hex(4)
    # the lines name the folder absolutely (see _settle): a rerun completing this may start
    # elsewhere, or find the folder moved
    journal = {"phase": "stage", "writes": {}, "moves": [], "lines": lines, "out": str(out)}
    for index, (source, target) in enumerate(moves):
        staged = Path(source).parent / f".ledger-{token}-{index}"
        journal["moves"].append([str(Path(path).relative_to(out))
                                 for path in (source, target, staged)])
    for path, content in writes.items():
        journal["writes"][str(Path(path).relative_to(out))] = content
    with signals.held():
        try:
            _record(out, journal)
        except OSError as error:
            remedy = ("Free some space there" if error.errno in (errno.ENOSPC, errno.EDQUOT)
                      else "Make sure you can write there (permissions, a read-only or "
                           "append-only folder)")
            raise UserError(f"{out}: cannot record the move of earlier results "
                            f"({error.strerror or error}); nothing was moved. {remedy}, or "
                            f"choose another folder with --out DIR.") from None
        _attempt(out, lambda: _finish(out, journal))


def recover(out):
    """Complete the transaction that a kill (or a full disk) interrupted, and return the
    lines it was to say (none when there was nothing to complete)."""
    out = Path(out)
    journal = read_journal(out)
    if journal is None:
        stranded = [path.name for folder in (out, out / CHECKPOINTS)
                    for path in _files(folder, STAGED)]
        if stranded:
            raise UserError(
                f"{out}: files of an interrupted move are left under hidden names "
                f"({', '.join(stranded[:3])}{', ...' if len(stranded) > 3 else ''}) and its "
                f"record, {JOURNAL} (and {JOURNAL_COPY}), is gone, so where they belong is "
                f"unknown. Put the record back if you can; else the files here may no longer "
                f"match their results entries: move the whole folder away, keep it for "
                f"reference, and rerun into a fresh one.")
        return []
    with signals.held():
        _attempt(out, lambda: _finish(out, journal))
    gone = [target for _, target, _ in journal["moves"] if not os.path.lexists(out / target)]
    was = journal.get("out")  # the folder moved since (mv out moved): its lines name it now
    moved = (re.compile(re.escape(was) + r"(?=[/\s:,)]|$)")
             if isinstance(was, str) and os.path.isabs(was) else None)
    return [moved.sub(lambda _: str(out.absolute()), line) if moved else line
            for line in journal.get("lines", []) if isinstance(line, str)] + [
        f"{target}: gone while it was being moved (its hidden .ledger-* file deleted by "
        f"hand?): the results entry that names it has no weights now" for target in gone]


def _record(out, journal):
    """The journal, twice: a damaged or deleted one still leaves the other to finish by."""
    for name in (JOURNAL, JOURNAL_COPY):
        save_json(journal, out / name)


def read_journal(out):
    """The journal of an unfinished transaction (from its copy if need be), or None."""
    found, damaged = None, []
    for name in (JOURNAL, JOURNAL_COPY):
        path = out / name
        if found is None and os.path.lexists(path):
            try:
                found = json.loads(path.read_text())
                found = found if {"phase", "moves", "writes"} <= set(found) else None
            except (OSError, ValueError, RecursionError, TypeError):
                found = None
            if found is None:
                damaged.append(path.name)
    if found is None and damaged:
        waiting = any(_files(folder, STAGED) for folder in (out, out / CHECKPOINTS))
        where = ("the files it moves wait under hidden names (.ledger-*)" if waiting else
                 "no file of it waits under a hidden name (.ledger-*), so either it had not "
                 "begun or its files are in place and the results JSON was still to be "
                 "rewritten")
        raise UserError(f"{out}: a move of earlier results was interrupted and its record "
                        f"({', '.join(damaged)}) cannot be read. Do not delete it: {where}. "
                        f"Put back an intact copy if you have one; else the files here may no "
                        f"longer match their results entries: move the whole folder away, "
                        f"keep it for reference, and rerun into a fresh one.")
    return found


def _finish(out, journal):
    """Carry a journal forward from wherever it stopped; every step can be done again."""
    if journal["phase"] == "stage":
        for source, _, staged in journal["moves"]:
            if os.path.lexists(out / source) and not os.path.lexists(out / staged):
                os.replace(out / source, out / staged)  # in its own folder: atomic
        journal["phase"] = "place"
        _record(out, journal)
    for _, target, staged in journal["moves"]:
        if os.path.lexists(out / staged):
            _transfer(out / staged, out / target)
        elif not os.path.lexists(out / target) and _dangling(out / staged):
            # a scratch disk not mounted, say: the file is there, not here
            raise OSError(errno.ENOENT, "cannot reach the folder of a file on its way "
                          "(a scratch disk not mounted?)", str((out / staged).parent))
    for name, content in journal["writes"].items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        save_json(content, out / name)
    remove_if_empty(out / CHECKPOINTS)
    for name in (JOURNAL, JOURNAL_COPY):  # the first one gone already means "done"
        if os.path.lexists(out / name):
            os.unlink(out / name)


def _dangling(path):
    """Whether a folder on ``path``'s way is a link to nothing (the checkpoints link to a
    scratch disk that is not mounted)."""
    return any(folder.is_symlink() and not folder.exists() for folder in path.parents)


def _transfer(source, target):
    """Move one file; across file systems, copy (synced, renamed into place), then remove."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # a copy a kill cut short
            stale.unlink()
        with open(source, "rb") as original:
            write_atomically(target, lambda file: shutil.copyfileobj(original, file))
        os.unlink(source)


def _attempt(out, step):
    try:
        step()
    except OSError as error:
        raise UserError(f"{out}: moving earlier results failed ({error.strerror or error}: "
                        f"{error.filename or ''}). Nothing is lost: the move is recorded in "
                        f"{Path(out) / JOURNAL}, and the next run into this folder completes "
                        f"it once that is fixed.") from None


