"""LightningDataModules streaming the Zarr sample store."""

from datamodules.pixel_series import PixelSeriesDataModule, StoreBlockDataset

__all__ = ["PixelSeriesDataModule", "StoreBlockDataset"]
