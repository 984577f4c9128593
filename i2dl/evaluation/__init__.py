"""Accuracy: metrics (one definition each), one run's report, the multi-run aggregate."""
