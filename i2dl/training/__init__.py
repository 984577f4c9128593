"""Fitting: model construction, the training loops, DDP roles, the runs / k-fold loop."""
