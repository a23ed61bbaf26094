"""cifarkit: the shared engine behind the five CIFAR-10 report scripts.

data.py (files -> uint8 tensors -> batches), config.py (CONFIGS checks), runtime.py
(devices, DataParallel/DDP, AMP, compile), train.py (the epoch loop, evaluation),
checkpoints.py (resume), outputs.py and plots.py (weights, JSON, PNGs, summary), report.py
(make_report.py), cli.py (flags), experiment.py (the one call a script's main() makes).
"""
