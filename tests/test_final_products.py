"""iota2's products: PixelsValidity.tif, and final/ for one tile as for several."""

from __future__ import annotations

import numpy as np
import rasterio
import torch

from i2dl.maps.engine import classify_raster
from tests.conftest import FAST
from tests.test_inference import _read, _setup, predict


def test_pixels_validity_counts_the_valid_dates(make_cfg, tiny_dataset, tmp_path) -> None:
    info, series = _setup(make_cfg, tiny_dataset, tmp_path)
    with series:
        res = classify_raster(series, info, predict, tmp_path / "m", torch.device("cpu"),
                              chunk_size=7, progress=False)
    with rasterio.open(tmp_path / "clm_all.tif") as src:
        cloudy = src.read() == 1  # (T, H, W), the masks _setup gave the reader
    with rasterio.open(tiny_dataset["raster"]) as src:
        finite = np.isfinite(src.read()).reshape(len(cloudy), -1, *cloudy.shape[1:]).all(axis=1)
    want = (~cloudy & finite).sum(axis=0)
    got, profile = _read(res.validity)
    assert profile["dtype"] == "uint16"
    np.testing.assert_array_equal(got[0], want)
    assert got[0, 0, 0] == 0  # the all-cloudy pixel: no valid date, nodata in the map
    assert _read(res.classif)[0][0, 0, 0] == 0


def test_one_tile_gets_final_products(make_cfg, tiny_dataset, tmp_path) -> None:
    from i2dl.stages import train

    train.run(make_cfg(*tiny_dataset["overrides"], *FAST, "+experiment=rf", "seed=3",
                       "infer.write_proba=true"))
    run = tmp_path / "run"
    pairs = {"Classif_Seed_3.tif": "classif.tif", "Confidence_Seed_3.tif": "confidence.tif",
             "PixelsValidity.tif": "PixelsValidity.tif", "Proba_Seed_3.tif": "proba.tif"}
    for final, maps in pairs.items():
        a, pa = _read(run / "final" / final)
        b, pb = _read(run / "maps" / maps)
        np.testing.assert_array_equal(a, b)
        assert (pa["crs"], pa["transform"]) == (pb["crs"], pb["transform"])
