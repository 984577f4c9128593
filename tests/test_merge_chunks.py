"""features-map merges a tile's chunks one at a time, as the mosaic would (issue 23).

:func:`i2dl.io.geotiff.mosaic` keeps every input open, and GDAL keeps a decoded block per
open pixel-interleaved dataset: its peak RSS grew with the number of chunks (1.3 GB for
2 x 2 chunks of 512^2 x 175 float32 bands, 2.7 GB for 4 x 4). :func:`merge_chunks`
opens one chunk at a time and must write the same raster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from i2dl.features.feature_maps import chunk_windows, merge_chunks
from i2dl.io.geotiff import geotiff_profile, mosaic


@pytest.mark.parametrize(("dtype", "nodata", "n_chunks"), [
    ("float32", np.nan, None), ("int16", -10000, None), ("float32", np.nan, 3)])
def test_merged_chunks_equal_the_mosaic(tmp_path: Path, dtype, nodata, n_chunks) -> None:
    width, height, count = 40, 29, 5
    transform = from_origin(300000.0, 5000000.0, 10.0, 10.0)
    rng = np.random.default_rng(0)
    values = rng.normal(100, 20, (count, height, width)).astype(dtype)
    values[:, rng.random((height, width)) < 0.2] = nodata
    windows = chunk_windows(width, height, 16, n_chunks)
    paths = []
    for i, win in enumerate(windows):
        path = tmp_path / f"chunk_{i}.tif"
        rows, cols = win.toslices()
        profile = geotiff_profile(int(win.width), int(win.height), count, dtype, "EPSG:32631",
                                  rasterio.windows.transform(win, transform), nodata)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(values[:, rows, cols])
        paths.append(path)
    names = [f"b{i}" for i in range(count)]
    merged = merge_chunks(paths, windows, tmp_path / "merged.tif", names, dtype, nodata,
                          "EPSG:32631", transform, width, height)
    expected = mosaic(paths, tmp_path / "mosaic.tif", names, nodata=nodata)
    with rasterio.open(merged) as a, rasterio.open(expected) as b:
        assert (a.width, a.height, a.count, a.dtypes, a.crs, a.transform, a.descriptions) == (
            b.width, b.height, b.count, b.dtypes, b.crs, b.transform, b.descriptions)
        assert a.block_shapes == b.block_shapes and a.compression == b.compression
        np.testing.assert_array_equal(a.read(), b.read())
        np.testing.assert_array_equal(a.read(), values)
