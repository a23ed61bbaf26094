"""The one call a script's main() makes: flags -> checks -> data -> train each config -> files.

Exit status: 0 every selected config finished; 1 a config diverged, ran out of memory or a
file could not be written; 2 bad input (nothing trained, nothing written); 130 / 143
stopped by SIGINT / SIGTERM after saving a checkpoint.
"""
import contextlib
import signal
import sys
from pathlib import Path

import torch

from . import checkpoints, cli, config, data, outputs, train
from .errors import UserError

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def run(*, script, description, build_model, configs, out_dir, results_file,
        normalization, default_device="auto", model_keys=(), data_parallel=False,
        weights_file="config_{number}.pth", log_every=0, argv=None):
    """Run a report script; returns its exit status.

    ``build_model(config)`` returns a fresh model; ``normalization`` is (mean, std) per
    channel; ``log_every`` > 0 prints the running loss every that many mini-batches.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = cli.parse_args(script, description, out_dir, default_device, argv)
    try:
        all_configs = _checked_configs(configs, model_keys, args)
        selected = cli.select_configs(all_configs, args.configs)
        cli.check_subset(args.subset, selected)
        device = train.select_device(args.device)
        outputs.check_out_dir(args.out, _bytes_needed(build_model(selected[0][1])))
        dataset = data.load_cifar10(args.data_dir, args.subset, args.seed)
        results = outputs.new_results(script, dataset, train.parallel_devices(device, data_parallel),
                                      args.seed, argv)
        earlier, reason = _earlier_results(Path(args.out), results_file, results, all_configs)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = outputs.prepare_out_dir(args.out)
    if args.restart and outputs.has_results(out):
        reason = "--restart"
    if reason:
        print(f"{reason}: the earlier results are kept in {outputs.move_aside(out)}/")
    elif earlier:
        results.update(started=earlier["started"], configs=earlier["configs"])

    print(f"{script}: {len(dataset.train_labels)} training and {len(dataset.test_labels)} test "
          f"images from {dataset.source}; device {device}; output {out}")
    job = {"build_model": build_model, "device": device, "data_parallel": data_parallel,
           "seed": args.seed, "run_data": results["data"], "out": out, "log_every": log_every,
           "data": _to_device(dataset, normalization, device), "weights_file": weights_file}
    try:
        with _stop_on_signals() as received:
            for number, chosen in selected:
                status = _run_config(job, number, chosen, results, results_file, received)
                if status == "interrupted":
                    return _interrupted(received, number, out, script, argv)
    except OSError as error:  # disk full, folder removed: what was saved before stays
        print(f"error: cannot write to {out}: {error}. Results saved so far are kept; "
              f"rerun the same command to carry on.", file=sys.stderr)
        return 1
    chosen_ids = {f"config_{number}" for number, _ in selected}
    finished = [entry for entry in results["configs"] if entry["id"] in chosen_ids]
    print(outputs.summary(finished))
    print(f"Results, weights and plots are in {out}/")
    return 0 if all(entry["status"] == "finished" for entry in finished) else 1


def _checked_configs(configs, model_keys, args):
    checked = config.check_configs(configs, model_keys)
    if args.epochs:
        checked = [dict(chosen, num_epochs=args.epochs) for chosen in checked]
    return checked


def _bytes_needed(model):
    """Room for the weights, a checkpoint (model and momentum) and the small files."""
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    return 3 * weights + 20 * 2**20


def _identity(chosen, seed, run_data):
    """What must match for a checkpoint or a finished result to count as this run's."""
    return {"config": chosen, "seed": seed, "data": run_data}


def _earlier_results(out, results_file, results, all_configs):
    """(earlier results to keep, or None; why the folder must be moved aside, or None)."""
    current = {f"config_{number}": chosen for number, chosen in enumerate(all_configs, 1)}
    earlier = outputs.load_results(out / results_file)
    if earlier == "unreadable":
        return None, f"{out / results_file} is unreadable"
    if earlier and (earlier.get("seed"), earlier.get("data")) != (results["seed"],
                                                                  results["data"]):
        return None, "the seed or the data differ from the earlier run's"
    for entry in (earlier or {}).get("configs", []):
        if current.get(entry["id"]) != entry["config"]:
            return None, f"{entry['id']} in CONFIGS differs from its earlier results"
    for path in sorted((out / "checkpoints").glob("config_*.ckpt")):
        checkpoint = checkpoints.load_checkpoint(path)
        wanted = _identity(current.get(path.stem), results["seed"], results["data"])
        if checkpoint["identity"] != wanted:
            return None, f"{path.stem} in CONFIGS differs from its unfinished checkpoint"
    return earlier, None


def _to_device(dataset, normalization, device):
    scale, shift = data.normalizer(*normalization, device=device)
    return (dataset.train_images.to(device), dataset.train_labels.to(device),
            dataset.test_images.to(device), dataset.test_labels.to(device), scale, shift)


def _run_config(job, number, chosen, results, results_file, received):
    """Train (or resume, or skip) one config; record it; return its status."""
    label, out = f"config_{number}", job["out"]
    done = next((entry for entry in results["configs"] if entry["id"] == label), None)
    if done:
        print(f"{label}: already {done['status']} in {out} ({outputs.outcome(done)}); "
              f"skipped. Use --restart to train it again.")
        return done["status"]
    print(f"{label}: {outputs.settings(chosen)}")
    train.seed_everything(job["seed"])  # every config starts from the same weights
    model = train.place_model(job["build_model"](chosen), job["device"], job["data_parallel"])
    optimizer = train.make_optimizer(model, chosen)
    checkpoint_path = out / "checkpoints" / f"{label}.ckpt"
    checkpoint = checkpoints.load_checkpoint(checkpoint_path)
    progress = train.new_progress()
    if checkpoint:
        progress = checkpoints.restore(checkpoint, train.unwrap(model), optimizer)
        print(f"{label}: resuming from its checkpoint after epoch {progress['epoch']}, "
              f"step {progress['step']}")
    identity = _identity(chosen, job["seed"], job["run_data"])
    status = _train(job, label, chosen, model, optimizer, progress, received,
                    lambda progress: checkpoints.save_checkpoint(
                        checkpoint_path, identity, train.unwrap(model), optimizer, progress))
    if status == "interrupted":
        return status
    weights_path = out / job["weights_file"].format(number=number)
    if status == "finished":
        outputs.save_weights(train.unwrap(model), weights_path)
    entry = outputs.config_entry(label, chosen, status, progress, weights_path.name)
    if job["log_every"]:
        entry["steps_per_epoch"] = -(-len(job["data"][1]) // chosen["batch_size"])
    results["configs"] = sorted([e for e in results["configs"] if e["id"] != label] + [entry],
                                key=lambda e: int(e["id"].split("_")[1]))
    outputs.save_json(results, out / results_file)  # after each config: nothing lost
    outputs.plot_run(results["configs"], out, results["script"], job["log_every"])
    checkpoint_path.unlink(missing_ok=True)
    return status


def _train(job, label, chosen, model, optimizer, progress, received, save):
    def on_log(epoch, step, loss):
        print(f"epoch {epoch}: batch {step} loss: {loss:.3f}")

    def on_epoch(record):
        print(f"{label} epoch {record['epoch']}/{chosen['num_epochs']}: "
              f"loss {record['train_loss']:.4f}, train acc {record['train_accuracy']:.2f}%, "
              f"test acc {record['test_accuracy']:.2f}%, {record['seconds']:.1f} s")

    try:
        status = train.train_config(model, optimizer, chosen, job["data"], job["seed"],
                                    progress, save, lambda: bool(received), job["log_every"],
                                    on_log, on_epoch)
    except torch.cuda.OutOfMemoryError:
        print(f"error: {label} ran out of GPU memory at batch_size {chosen['batch_size']}. "
              f"Try a smaller batch_size in CONFIGS; the other configs carry on.",
              file=sys.stderr)
        torch.cuda.empty_cache()
        return "out_of_memory"
    if status == "diverged":
        where = progress["diverged_at"]
        print(f"{label}: the loss became NaN or infinite at epoch {where['epoch']}, step "
              f"{where['step']}; this config is stopped and marked diverged. A smaller lr "
              f"usually helps.", file=sys.stderr)
    return status


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT / SIGTERM ask training to stop after the current step; a second one stops now."""
    received = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        print(f"\n{signal.Signals(signum).name}: finishing the current step and saving a "
              f"checkpoint (send it again to stop at once).", file=sys.stderr, flush=True)

    previous = {signum: signal.signal(signum, handler) for signum in SIGNAL_EXIT}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _interrupted(received, number, out, script, argv):
    name = signal.Signals(received[0]).name
    print(f"Stopped by {name} during config_{number}; its checkpoint is in "
          f"{out / 'checkpoints'}/. To resume, run the same command again:\n"
          f"  python {' '.join([script] + argv)}", file=sys.stderr)
    return SIGNAL_EXIT[received[0]]
