"""Majority-vote fusion of the maps of several runs (iota2 multi-run products).

With ``runs=N`` every run writes its own classification; the fusion map gives each pixel
the class most runs chose, and the agreement map the fraction of runs that chose it
(1.0 = unanimous). Ties go to the smallest class code. A pixel that is nodata (0) in every
run stays nodata; runs that are nodata at a pixel do not vote there (the agreement is
counted over the runs that voted).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import rasterio

from i2dl.errors import ConfigError
from i2dl.io.files import atomic_path
from i2dl.io.geotiff import block_windows, geotiff_profile

log = logging.getLogger(__name__)


def majority_vote(maps: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vote over runs.

    Args:
        maps: (N, H, W) int class codes of N runs, 0 = nodata.
        codes: (K,) sorted class codes that may appear.

    Returns:
        ``fused`` (H, W) of ``maps``' dtype (0 where no run voted) and ``agreement``
        (H, W) float32 in [0, 1] (0 where no run voted).
    """
    votes = np.stack([(maps == c).sum(axis=0) for c in codes])  # (K, H, W)
    voters = (maps != 0).sum(axis=0)
    best = votes.argmax(axis=0)  # first max = smallest code
    fused = np.where(voters > 0, codes[best], 0).astype(maps.dtype)
    top = np.take_along_axis(votes, best[None], axis=0)[0]
    agreement = np.where(voters > 0, top / np.maximum(voters, 1), 0.0).astype(np.float32)
    return fused, agreement


def fuse_maps(
    paths: list[Path], codes: list[int], out_dir: str | Path, chunk_size: int = 1024
) -> tuple[Path, Path]:
    """Write ``Classif_Fusion.tif`` and ``Agreement_Fusion.tif`` from per-run maps.

    Args:
        paths: per-run classification GeoTIFFs on the same grid.
        codes: the class codes.
        out_dir: output folder (``<run>/final``).
        chunk_size: block window side, pixels.

    Returns:
        The fusion and agreement map paths.

    Raises:
        ConfigError: fewer than two maps, maps on different grids, or ``chunk_size`` < 1.
    """
    if len(paths) < 2:
        raise ConfigError(f"fusion needs the maps of at least two runs, got {len(paths)}")
    out_dir = Path(out_dir)
    targets = {
        "fusion": out_dir / "Classif_Fusion.tif",
        "agreement": out_dir / "Agreement_Fusion.tif",
    }
    with ExitStack() as stack:
        sources = [stack.enter_context(rasterio.open(p)) for p in paths]
        first = sources[0]
        for s, p in zip(sources, paths, strict=True):
            if (s.crs, s.transform, s.shape) != (first.crs, first.transform, first.shape):
                raise ConfigError(f"{p} is not on the grid of {paths[0]}: cannot fuse")
        grid = (first.width, first.height, 1)
        prof_c = geotiff_profile(*grid, first.dtypes[0], first.crs, first.transform, first.nodata)
        prof_a = geotiff_profile(*grid, "float32", first.crs, first.transform, nodata=0.0)
        codes_arr = np.asarray(sorted(codes))
        windows = block_windows(first.width, first.height, chunk_size, param="fusion chunk_size")
        tmp_c = stack.enter_context(atomic_path(targets["fusion"]))
        tmp_a = stack.enter_context(atomic_path(targets["agreement"]))
        with rasterio.open(tmp_c, "w", **prof_c) as dc, rasterio.open(tmp_a, "w", **prof_a) as da:
            for win in windows:
                maps = np.stack([s.read(1, window=win) for s in sources])
                fused, agreement = majority_vote(maps, codes_arr)
                dc.write(fused[None], window=win)
                da.write(agreement[None], window=win)
    log.info("fusion of %d runs: %s, %s", len(paths), targets["fusion"], targets["agreement"])
    return targets["fusion"], targets["agreement"]
