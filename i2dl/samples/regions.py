"""Eco-regions: one model per region (iota2 ``chain.regionPath`` / ``regionField``).

The territory is stratified by a region file (polygons, a ``region_field`` whose values
are integers or strings castable to integers, no overlaps). Training pixels take the region
their pixel centre falls in (a polygon crossing a region boundary is cut into one part per
region, as iota2 splits its polygons by region); one model is trained per region; at
inference each model classifies its own region only and the region maps are merged; pixels
in no region are nodata.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from i2dl.errors import InputDataError, InputFileNotFoundError

log = logging.getLogger(__name__)


def read_regions(path: str | Path, region_field: str, crs: Any) -> gpd.GeoDataFrame:
    """Read and check a region file.

    Args:
        path: GeoPackage/Shapefile of region polygons.
        region_field: field holding the region id (int, or str castable to int).
        crs: target CRS (the raster's); the regions are reprojected to it when needed.

    Returns:
        GeoDataFrame with an int64 column ``region`` (>= 0) and the geometry, in ``crs``.

    Raises:
        InputFileNotFoundError: missing file.
        InputDataError: missing field, values not castable to integers (fids listed),
            negative ids, or overlapping regions (pairs of fids listed).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError(f"region file {path} does not exist (sampling.region_file)")
    gdf = gpd.read_file(path, engine="pyogrio", fid_as_index=True)
    if region_field not in gdf.columns:
        fields = [c for c in gdf.columns if c != "geometry"]
        raise InputDataError(
            f"{path}: region field {region_field!r} (sampling.region_field) not found; "
            f"fields are {fields}"
        )
    values = pd.to_numeric(gdf[region_field].astype("string").str.strip(), errors="coerce")
    bad = values.isna() | (values % 1 != 0) | (values < 0)
    if bad.any():
        raise InputDataError(
            f"{path}: region field {region_field!r} must hold non-negative integers (or strings "
            f"castable to them); features fid {gdf.index[bad].tolist()[:20]} do not"
        )
    out = gpd.GeoDataFrame(
        {"fid": gdf.index.to_numpy(), "region": values.astype(np.int64).to_numpy()},
        geometry=gdf.geometry.to_numpy(), crs=gdf.crs,
    )
    if crs is not None and out.crs is not None and out.crs != crs:
        log.info("reprojecting regions %s to the raster CRS", path)
        out = out.to_crs(crs)
    left, right = out.sindex.query(out.geometry, predicate="intersects")
    pairs = []
    for i, j in zip(left, right, strict=True):
        if i < j:
            inter = out.geometry.iloc[i].intersection(out.geometry.iloc[j]).area
            if inter > 1e-9 * min(out.geometry.iloc[i].area, out.geometry.iloc[j].area):
                pairs.append((int(out.fid.iloc[i]), int(out.fid.iloc[j])))
    if pairs:
        raise InputDataError(
            f"{path}: regions overlap (pairs of fids): {pairs[:20]}; each pixel must belong to "
            "one region at most"
        )
    return out
