"""The one call a script's main() makes: flags -> checks -> data -> train each config -> files."""
import sys
from pathlib import Path

from . import cli, config, data, outputs, train
from .errors import UserError


def run(*, script, description, build_model, configs, out_dir, results_file,
        normalization, default_device="auto", model_keys=(), data_parallel=False,
        weights_file="config_{number}.pth", log_every=0, argv=None):
    """Run a report script; returns its exit status (0 done, 2 refused input).

    ``build_model(config)`` returns a fresh model; ``normalization`` is (mean, std) per
    channel; ``log_every`` > 0 prints the running loss every that many mini-batches.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = cli.parse_args(description, out_dir, default_device, argv)
    try:
        selected = cli.select_configs(config.check_configs(configs, model_keys), args.configs)
        if args.epochs:
            selected = [(number, dict(chosen, num_epochs=args.epochs))
                        for number, chosen in selected]
        device = train.select_device(args.device)
        outputs.check_out_dir(args.out)
        dataset = data.load_cifar10(args.data_dir, args.subset, args.seed)
        out = outputs.prepare_out_dir(args.out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(f"{script}: {len(dataset.train_labels)} training and {len(dataset.test_labels)} test "
          f"images from {dataset.source}; device {device}; output {out}")
    on_device = _to_device(dataset, normalization, device)
    results = outputs.new_results(script, dataset, train.parallel_devices(device, data_parallel),
                                  args.seed, argv)
    for number, chosen in selected:
        entry = _train_one(number, chosen, build_model, on_device, device, data_parallel,
                           args.seed, out / weights_file.format(number=number), log_every)
        results["configs"].append(entry)
        outputs.save_json(results, out / results_file)  # after each config: nothing lost
        _plot(results["configs"], out, script, log_every)
    print(outputs.summary(results["configs"]))
    print(f"Results, weights and plots are in {out}/")
    return 0


def _to_device(dataset, normalization, device):
    scale, shift = data.normalizer(*normalization, device=device)
    return (dataset.train_images.to(device), dataset.train_labels.to(device),
            dataset.test_images.to(device), dataset.test_labels.to(device), scale, shift)


def _train_one(number, chosen, build_model, on_device, device, data_parallel, seed,
               weights_path, log_every):
    label = f"config_{number}"
    print(f"{label}: {', '.join(f'{key}={value}' for key, value in chosen.items())}")
    train.seed_everything(seed)  # every config starts from the same weights, whatever ran before
    model = train.place_model(build_model(chosen), device, data_parallel)
    batch_losses = []

    def on_log(epoch, step, loss):
        batch_losses.append({"epoch": epoch, "batch": step, "loss": loss})
        print(f"epoch {epoch}: batch {step} loss: {loss:.3f}")

    def on_epoch(record):
        print(f"{label} epoch {record['epoch']}/{chosen['num_epochs']}: "
              f"loss {record['train_loss']:.4f}, train acc {record['train_accuracy']:.2f}%, "
              f"test acc {record['test_accuracy']:.2f}%, {record['seconds']:.1f} s")

    history = train.train_config(model, chosen, on_device, seed, log_every,
                                 on_log if log_every else None, on_epoch)
    outputs.save_weights(train.unwrap(model), weights_path)
    best = max(history, key=lambda record: record["test_accuracy"])
    entry = {"id": label, "config": chosen, "status": "finished", "history": history,
             "final_test_accuracy": history[-1]["test_accuracy"],
             "best_test_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
             "train_seconds": sum(record["seconds"] for record in history),
             "weights": weights_path.name}
    if log_every:
        entry["batch_losses"] = batch_losses
        entry["steps_per_epoch"] = -(-len(on_device[1]) // chosen["batch_size"])
    return entry


def _plot(entries, out, script, log_every):
    title = Path(script).stem
    if log_every and any(entry["batch_losses"] for entry in entries):
        outputs.plot_histories(entries, out, title, outputs.PLOTS[1:])
        outputs.plot_batch_losses(entries, out, title, log_every)
    else:
        outputs.plot_histories(entries, out, title)
