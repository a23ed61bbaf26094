"""The report's tables and figures, regenerated from whatever the scripts wrote into modelset/.

    python make_report.py                   # reads modelset/, writes modelset/REPORT.md
    python make_report.py --modelset DIR    # another folder holding the scripts' folders

Reads every results JSON one folder below modelset/ and writes REPORT.md, in task order (1 to
4): a results table per script with its best config's confusion matrix and example predictions,
the Task 2 train-test gap, the Task 3 sweep, LeNet against ResNet-18 for time, for each task a
sentence setting our numbers beside the report's, and what has not been run yet with its
figures in modelset/figures/. Each output folder gets its own section, so two folders of one
script (modelset/Resnet/ and modelset/Resnet-run2/) are both reported. A results JSON that
cannot be used is named in a warning and in REPORT.md, and skipped: one with a field the
report reads missing or of the wrong kind, one that is not a regular file (a named pipe is
never read: it would wait for a writer), one nested too deeply to parse, one holding two
results for one config and seed, or two different configs under one config id (the report
averages a config over its seeds, so it would average the two as one). A config field of
the wrong kind that only names the config or quotes the report's figures ("name",
"reported_accuracy", "reported_seconds") is left out with a warning instead, and the file's
results are reported.

Exit status: 0 report written; 1 a file could not be written; 2 --modelset is not a folder.
"""
import argparse
import ast
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from cifarkit import plots, report, results, signals, store
from cifarkit.results import load_results
from cifarkit.errors import UserError


@dataclass
class ScriptText:
    """What the report reads in a script's text (never importing it)."""
    task: str  # its REPORT_TASK
    configs: list  # its CONFIGS, each a dict ({} for one not written as a literal)
    out: str  # the folder its --out defaults to, e.g. modelset/Resnet


def read_scripts(folder=Path(__file__).resolve().parent):
    """{script: ScriptText (its REPORT_TASK, CONFIGS and default --out)} for the
    scripts in ``folder``, in task order. Read as text, never imported: the report runs where
    torch is not installed; a script that no longer parses still names its task (no configs)."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        try:
            text = path.read_text()
            line = re.search(r"^REPORT_TASK = .*$", text, re.MULTILINE)
            task = ast.literal_eval(ast.parse(line.group(0)).body[0].value) if line else None
        except (OSError, SyntaxError, ValueError):
            continue
        if report.task_number(task) is None:
            continue
        try:
            lists = [node.value for node in ast.parse(text).body if isinstance(node, ast.Assign)
                     and any(getattr(target, "id", None) == "CONFIGS" for target in node.targets)]
        except (SyntaxError, ValueError):
            lists = []
        elements = lists[-1].elts if lists and isinstance(lists[-1], (ast.List, ast.Tuple)) else []
        out = re.search(r"""out_dir=["']([^"']+)["']""", text)
        found[path.name] = ScriptText(task, list(map(_literal_dict, elements)),
                                             out.group(1) if out else f"modelset/{path.stem}")
    return dict(sorted(found.items(), key=lambda item: (item[1].task, item[0])))


def _literal_dict(node):
    """A config of CONFIGS as written, or {} where it is not a literal dict."""
    try:
        config = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return {}
    return config if isinstance(config, dict) else {}


def _foreign(modelset):
    """Why REPORT.md and figures/ must not be written into ``modelset``, or None: it is a
    project (a repository, source files), one script's output folder, or holds a REPORT.md
    this command did not write."""
    data = [name for name in ("cifar-10-batches-py", "cifar-10-python.tar.gz", "data_batch_1")
            if (modelset / name).exists()]
    if data or ((modelset / "train" / "airplane").is_dir() and (modelset / "test").is_dir()):
        return (f"that is a CIFAR-10 data folder ({(data or ['train/', 'test/'])[0]}), not the "
                f"scripts' output folder: the report never goes into the data. Give the folder "
                f"that holds their output folders (default: modelset).")
    markers = results.foreign_entries(modelset)
    if markers:
        return (f"that folder holds {', '.join(markers[:3])}: it looks like a project, not "
                f"the scripts' output folder. Give the folder that holds their output "
                f"folders (default: modelset).")
    own = [path.name for path in sorted(modelset.glob("[!.]*.json"))
           if results.read_results(path)[1] is None]
    if own:
        return (f"that folder holds {own[0]}: it is one script's output folder. Give the "
                f"folder that holds the output folders: --modelset {modelset.resolve().parent}")
    if store.RUNS in modelset.resolve().parts[-2:]:
        return (f"that is inside an output folder's run store ({store.RUNS}/), not the folder "
                f"that holds the scripts' output folders (default: modelset).")
    existing = modelset / "REPORT.md"
    if existing.is_file() and not existing.read_text(errors="replace").startswith(
            report.REPORT_HEADER):
        return (f"{existing} was not written by make_report.py, and would be overwritten. "
                f"Rename or move it, then run this again.")
    figures = modelset / "figures"
    if figures.is_symlink() or (figures.exists() and not figures.is_dir()):
        return (f"{figures} is {'a link' if figures.is_symlink() else 'not a folder'}, where "
                f"make_report.py writes the report's figures anew each time. Move it, then "
                f"run this again.")
    yours = [path for path in sorted(figures.iterdir()) if path.is_symlink()
             or not path.is_file() or not plots.drawn_by_kit(path)] if figures.is_dir() else []
    if yours:
        return (f"{yours[0]} was not drawn by make_report.py, and figures/ is written anew "
                f"with each report. Move it (and any other file of yours) out of {figures}, "
                f"then run this again.")
    return None


def _rebuild_views(modelset):
    """Each output folder's views, rebuilt from its runs: the results JSON, the weights files
    and the PNGs show the runs it names as they are now (a kill may have left a view stale)."""
    for folder in sorted(path for path in modelset.iterdir() if path.is_dir()):
        found = sorted(folder.glob("[!.]*.json"))
        if not found and (folder / store.RUNS).is_dir():
            print(f"warning: {folder} holds runs but no results JSON (deleted?): run its "
                  f"script once (nothing trains again) to rebuild it.", file=sys.stderr)
        for path in found:
            if not isinstance(load_results(path), dict) or store.pre_store(folder, path.name):
                continue  # reported as skipped, with why
            try:
                with store.store_lock(folder, create=True):
                    store.remove_temporaries(folder)
                    for line in store.rebuild_views(folder, path.name):
                        print(f"{folder}: {line}")
            except (OSError, UserError) as error:  # a read-only folder: reported as it is
                why = error.strerror if isinstance(error, OSError) and error.strerror else error
                print(f"warning: cannot rebuild the views in {folder} ({why}); its results "
                      f"JSON is reported as it is.", file=sys.stderr)


def main(argv=None):
    try:
        with signals.sigterm_as_interrupt():
            return _make_report(argv)
    except KeyboardInterrupt as stop:  # every view and run it wrote is whole (written by renames)
        signum = getattr(stop, "signum", signal.SIGINT)
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\nStopped by {name}; REPORT.md and figures/ are whole, as they were (or new, "
              f"if the stop came as they were swapped in). Run the same command again.",
              file=sys.stderr)
        return signals.EXIT[signum]


def _make_report(argv):
    parser = argparse.ArgumentParser(prog="make_report.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modelset", default="modelset", metavar="DIR",
                        help="the folder holding the scripts' output folders (default: modelset)")
    args = parser.parse_args(argv)
    modelset = Path(args.modelset)
    if not modelset.is_dir():
        what = "a file, not a folder" if modelset.exists() else "no such folder"
        print(f"error: --modelset {modelset}: {what}. Give the folder that holds the scripts' "
              f"output folders, or run a script first, e.g. python Original_version_model.py",
              file=sys.stderr)
        return 2
    refusal = _foreign(modelset)
    if refusal:
        print(f"error: --modelset {modelset}: {refusal}", file=sys.stderr)
        return 2
    _rebuild_views(modelset)
    scripts = read_scripts()
    runs, skipped = report.load_runs(modelset, scripts)
    for path, why in skipped:  # the report lists them too; the terminal must not hide them
        print(f"warning: {path}: {why}; skipped.", file=sys.stderr)
    for run in runs:
        for why in run.ignored:
            print(f"warning: {run.path}: {why}; {report.IGNORED}.", file=sys.stderr)
    try:
        path = report.write_report(modelset, runs, skipped, scripts)
    except OSError as error:  # read-only folder, full disk, a file where a folder should be
        where = error.filename2 or error.filename
        print(f"error: cannot write the report into {modelset}/: {error.strerror or error}"
              f"{f' ({where})' if where else ''}. Fix the folder's permissions, or copy it "
              f"somewhere writable and run python make_report.py --modelset COPY",
              file=sys.stderr)
        return 1
    print(f"Report written to {path} (figures in {path.parent / 'figures'}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
