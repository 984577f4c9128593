"""Exceptions raised by i2dl.

Every exception also derives from a builtin (``ValueError``, ``FileNotFoundError``) so
that callers that do not know i2dl can still catch it, as ``rasterio.errors`` does.
"""

from __future__ import annotations


class I2dlError(Exception):
    """Base class of every error raised on purpose by i2dl."""


class InputDataError(I2dlError, ValueError):
    """User input data (raster, dates file, polygons, table) is unusable as given."""


class InputFileNotFoundError(I2dlError, FileNotFoundError):
    """A path given in the configuration does not exist or cannot be opened."""


class ConfigError(I2dlError, ValueError):
    """A configuration value is invalid (wrong name, type or range)."""


class StoreError(I2dlError, ValueError):
    """A sample store is missing, incomplete or inconsistent with the request."""


class PackageShadowedError(I2dlError, ImportError):
    """A top-level package of i2dl (``models``, ``datamodules``) is shadowed by another."""


class UnsafeModelSpecError(StoreError):
    """A saved ``model.yaml`` names something to build that is not a model class."""
