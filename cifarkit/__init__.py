"""cifarkit: the shared engine behind the five CIFAR-10 report scripts.

data.py (files -> tensors -> batches), config.py (CONFIGS checks), train.py (devices, the
epoch loop, evaluation), outputs.py (weights, JSON, plots, summary), cli.py (flags),
experiment.py (one call that a script's main() makes).
"""
