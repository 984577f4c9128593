"""Shared fixtures: config composition, real-data location, tiny synthetic datasets."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from rasterio.transform import from_origin
from shapely.geometry import box

from i2dl.config import CONFIG_DIR, CONFIG_NAME, ROOT_DIR, register_resolvers

DATA_DIR = Path(os.environ.get("I2DL_DATA", ROOT_DIR.parent / "shared" / "data"))
SLOVENIA = DATA_DIR / "slovenia_s2_ndvi"

#: Overrides that make any run short and CPU-only.
FAST = [
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "infer.device=cpu",
]
#: A small LTAE for tests (the default one is 256 wide).
SMALL_LTAE = [
    "model.encoder.d_model=32",
    "model.encoder.n_head=4",
    "model.encoder.d_k=4",
    "model.encoder.mlp=[32,16]",
    "model.head.hidden=[16]",
]


def masked_series(b: int, t: int, c: int, step_days: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A random batch ``x (b, t, c)``, ``days (b, t)`` every ``step_days``, ``mask`` ~70 % valid.

    Date 0 is always valid, so no pixel is empty.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, generator=g)
    days = torch.arange(t).mul(step_days).expand(b, -1)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[:, 0] = True
    return x, days, mask


@pytest.fixture
def slovenia_dir() -> Path:
    """The real Slovenia example, or skip."""
    if not (SLOVENIA / "NDVI.tif").is_file():
        pytest.skip(f"real data absent: {SLOVENIA} (set I2DL_DATA to the shared data folder)")
    return SLOVENIA


@pytest.fixture
def make_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose the primary config with outputs under ``tmp_path``.

    Call as ``make_cfg(*overrides)``; run folder ``tmp_path/run``, stores ``tmp_path/stores``.
    """
    register_resolvers()

    def _make(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(
                config_name=CONFIG_NAME,
                overrides=[
                    f"paths.output_dir={tmp_path / 'run'}",
                    f"paths.store_dir={tmp_path / 'stores'}",
                    *overrides,
                ],
            )

    yield _make
    GlobalHydra.instance().clear()


def write_stack(
    path: Path,
    x: np.ndarray,
    transform: rasterio.Affine,
    crs: str = "EPSG:32633",
    dtype: str = "float32",
) -> Path:
    """Write a (bands, H, W) array as a GeoTIFF."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=x.shape[2],
        height=x.shape[1],
        count=x.shape[0],
        dtype=dtype,
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(x.astype(dtype))
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> dict:
    """A synthetic 20 x 24 px, T=6, C=2 series with a cloud mask and 3 classes x 3 polygons.

    Class c (codes 1, 2, 3) has values around ``c`` in channel 0 and ``-c`` in channel 1;
    the cloud mask marks date 2 invalid on the left half. Returns paths and the
    Hydra overrides pointing ``data`` at it.
    """
    rng = np.random.default_rng(0)
    t, c, h, w = 6, 2, 20, 24
    transform = from_origin(500000.0, 5000240.0, 10.0, 10.0)
    label = np.zeros((h, w), dtype=np.int64)
    polys, codes = [], []
    for k, code in enumerate((1, 2, 3)):
        for j in range(3):
            r0, c0 = 1 + 6 * k, 1 + 8 * j
            label[r0 : r0 + 4, c0 : c0 + 6] = code
            x0, y0 = transform @ (c0, r0 + 4)
            x1, y1 = transform @ (c0 + 6, r0)
            polys.append(box(x0, y0, x1, y1))
            codes.append(code)
    base = np.stack([label.astype(float), -label.astype(float)])  # (C, H, W)
    series = np.stack([base + rng.normal(0, 0.1, base.shape) for _ in range(t)])  # (T,C,H,W)
    stack = series.reshape(t * c, h, w)
    raster = write_stack(tmp_path / "stack.tif", stack, transform)
    clm = np.zeros((t, h, w))
    clm[2, :, : w // 2] = 1
    cloud = write_stack(tmp_path / "clm.tif", clm, transform, dtype="uint8")
    dates = [dt.date(2020, 1, 1) + dt.timedelta(days=10 * i) for i in range(t)]
    dates_file = tmp_path / "dates.txt"
    dates_file.write_text("\n".join(d.strftime("%Y%m%d") for d in dates) + "\n")
    gdf = gpd.GeoDataFrame({"code": codes, "name": [f"class{k}" for k in codes]}, geometry=polys,
                           crs="EPSG:32633")
    reference = tmp_path / "reference.gpkg"
    gdf.to_file(reference, driver="GPKG")
    overrides = [
        "data.name=tiny",
        f"data.raster={raster}",
        f"data.dates_file={dates_file}",
        "data.band_names=[b1,b2]",
        f"data.masks=[{{path:{cloud},invalid_values:[1]}}]",
        f"data.reference={reference}",
        "data.data_field=code",
        "data.nomenclature=null",
    ]
    return {
        "raster": raster,
        "cloud": cloud,
        "dates_file": dates_file,
        "dates": dates,
        "reference": reference,
        "label": label,
        "series": series,
        "gdf": gdf,
        "transform": transform,
        "overrides": overrides,
    }


@pytest.fixture
def fork_safe_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Single-threaded GDAL decoding, for tests whose child processes are forked.

    The readers decode GeoTIFF tiles with GDAL's worker-thread pool (``NUM_THREADS``);
    earlier tests start that pool in the pytest process, and a forked child that uses it
    can deadlock (the pool's threads do not exist in the child). Real runs do not fork
    after reading a raster (kill tests of the CLI use subprocesses).
    """
    monkeypatch.setattr("i2dl.io.raster.READ_THREADS", "1")
