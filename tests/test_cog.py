"""Cloud-Optimized GeoTIFF outputs (issue 24): layout, overviews, colour table, values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from i2dl.errors import ConfigError
from i2dl.io.geotiff import geotiff_profile, to_cog


def _write(path: Path, data: np.ndarray, nodata: float | None) -> Path:
    profile = geotiff_profile(data.shape[2], data.shape[1], data.shape[0], data.dtype.name,
                              "EPSG:32633", from_origin(500000, 5000000, 10, 10), nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if data.dtype == np.uint8:
            dst.write_colormap(1, {1: (255, 0, 0, 255), 2: (0, 128, 0, 255)})
    return path


def test_class_map_becomes_a_cog_with_mode_overviews_and_its_colours(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    classes = rng.choice([1, 2], size=(1, 700, 900), p=[0.9, 0.1]).astype(np.uint8)
    classes[:, :50] = 0  # nodata
    path = to_cog(_write(tmp_path / "classif.tif", classes, 0), "categorical")
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.block_shapes[0] == (256, 256) and src.overviews(1)  # tiled, overviews
        assert src.compression.name.lower() == "deflate" and src.nodata == 0
        np.testing.assert_array_equal(src.read(), classes)  # lossless
        assert src.colormap(1)[2] == (0, 128, 0, 255)
        # mode resampling: overview values are class codes, never an average of two
        factor = src.overviews(1)[0]
        over = src.read(1, out_shape=(700 // factor, 900 // factor))
    assert set(np.unique(over)) <= {0, 1, 2}
    assert [p.name for p in tmp_path.iterdir()] == ["classif.tif"]  # no temporary left


def test_continuous_map_averages_and_bad_kind(tmp_path: Path) -> None:
    conf = np.linspace(0, 1, 600 * 600, dtype=np.float32).reshape(1, 600, 600)
    path = to_cog(_write(tmp_path / "confidence.tif", conf, None))
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        np.testing.assert_array_equal(src.read(), conf)
    with pytest.raises(ConfigError, match="kind"):
        to_cog(path, "nearest")


def test_a_run_writes_its_maps_and_fusion_as_cogs(make_cfg, tiny_dataset) -> None:
    from i2dl.stages.train import run as run_train
    from tests.conftest import FAST

    cfg = make_cfg("+experiment=rf", *FAST, *tiny_dataset["overrides"], "runs=2",
                   "fusion=true", "model.estimator.n_estimators=5", "infer.chunk_size=16",
                   "infer.write_proba=true")
    run_train(cfg)
    out = Path(cfg.paths.output_dir)
    paths = [out / "seed_0" / "maps" / n for n in ("classif.tif", "confidence.tif",
                                                    "proba.tif", "PixelsValidity.tif")]
    paths += [out / "seed_1" / "final" / n for n in ("Classif_Seed_1.tif",
                                                      "Confidence_Seed_1.tif")]
    paths += [out / "final" / n for n in ("Classif_Fusion.tif", "Agreement_Fusion.tif")]
    for path in paths:
        with rasterio.open(path) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", path
    off = make_cfg("+experiment=rf", *FAST, *tiny_dataset["overrides"], "infer.cog=false",
                   "model.estimator.n_estimators=5", "infer.chunk_size=16",
                   f"paths.output_dir={out / 'plain'}")
    run_train(off)
    with rasterio.open(out / "plain" / "maps" / "classif.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
