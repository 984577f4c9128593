"""Hydra configs of i2dl (a package so that Hydra finds them when i2dl runs installed)."""
