"""cifarkit: the shared engine behind the five CIFAR-10 report scripts; train.py is where to
start reading (docs/code-layout.md)."""
