"""Readers of sensor products, one module per sensor, on one base (:mod:`.base`)."""
