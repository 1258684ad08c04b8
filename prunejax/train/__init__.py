"""Training: config, optimizer, the pure train step, state/shardings, checkpoints, metrics, the loop and `train`."""
