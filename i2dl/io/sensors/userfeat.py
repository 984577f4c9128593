"""User features: date-independent rasters of a tile (iota2's ``userFeat`` sensor).

iota2 adds "already processed" rasters (elevation, slope, texture, climate, ...) to every
pixel's features: ``chain.user_feat_path`` holds one folder per tile, and
``userFeat.patterns`` gives parts of the file names to pick (``"mnt pente aspect"``); the
rasters must already be on the tile's grid (iota2's documentation prepares them with
``otbcli_Superimpose``). Here each pattern is a glob relative to the tile folder
(``"DEM.tif"``, ``"*slope*.tif"``, ``"climate/*.tif"``); a pattern without glob characters
matches, as in iota2, every GeoTIFF whose name contains it. Each file may have one or more
bands; all bands become channels that do not depend on the date. The code composing a
time series broadcasts them over the dates.
"""

from __future__ import annotations

import glob as globlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.sensors.base import RasterReader
from i2dl.io.sensors.common import (
    Grid,
    RasterPool,
    check_grid,
    equals_nodata,
    open_meta,
    resolve_window,
    short_list,
)

log = logging.getLogger(__name__)

_RASTER_SUFFIXES = (".tif", ".tiff")


class UserFeatures(RasterReader):
    """Date-independent feature rasters of one tile.

    Args:
        root: folder of tile folders (iota2's ``user_feat_path``), or the tile folder.
        tile: the tile name (``T31TCJ``), the sub-folder of ``root``.
        patterns: glob patterns relative to the tile folder, in channel order; a pattern
            without ``*?[`` matches the GeoTIFFs whose name contains it. Files matched by
            several patterns are read once, at their first pattern. A plain name part
            searches the tile folder only (iota2's ``arbo: "/*"``); use ``**`` to descend.
        max_open: most files kept open at once (None: half the process's file limit).
        band_names: F channel names; None names a single-band file by its stem
            (``DEM``) and the bands of a multi-band file ``<stem>_b1``, ``<stem>_b2``...

    Attributes:
        path: the tile folder. files: the rasters read, in channel order.
        names: F channel names. band_names: the same (for symmetry with sources).
        dates: empty, the features do not depend on the date (``n_dates`` is 0).
        crs, transform, width, height: the grid (of the first file; all must share it).

    Raises:
        InputFileNotFoundError: the tile folder does not exist or a file cannot be opened.
        InputDataError: a pattern matches no GeoTIFF (folder, pattern and the folder's
            GeoTIFFs named), or the files are not on one grid.
        ConfigError: no pattern, or ``band_names`` of the wrong length.
    """

    def __init__(
        self,
        root: str | Path,
        tile: str,
        patterns: Sequence[str] = ("DEM.tif",),
        band_names: Sequence[str] | None = None,
        max_open: int | None = None,
    ) -> None:
        if isinstance(patterns, str):
            patterns = patterns.split()
        if not patterns:
            raise ConfigError("userFeat patterns is empty; give at least one file pattern")
        root = Path(root)
        folder = root / tile if (root / tile).is_dir() else root
        if not folder.is_dir() or (folder == root and root.name != tile):
            raise InputFileNotFoundError(
                f"user features folder {root / tile} does not exist; put the tile's feature "
                f"rasters in <user_feat_path>/{tile}/"
            )
        self.path = folder
        self.tile = tile
        self.files: list[Path] = []
        for pattern in patterns:
            hits = _match(folder, pattern)
            if not hits:
                available = sorted(
                    str(p.relative_to(folder))
                    for p in folder.rglob("*")
                    if p.suffix.lower() in _RASTER_SUFFIXES
                )
                raise InputDataError(
                    f"user feature pattern {pattern!r} matches no GeoTIFF in {folder}; it "
                    f"holds {short_list(available)}. Fix userFeat patterns or add the file"
                )
            for hit in hits:
                if hit in self.files:
                    log.info("%s matched by several patterns; read once", hit)
                else:
                    self.files.append(hit)
        self._counts: list[int] = []
        self._nodata: list[float | None] = []
        names: list[str] = []
        grid: Grid | None = None
        for path in self.files:
            g, count, _, nodata = open_meta(path, "user feature")
            if grid is None:
                grid = g
            else:
                check_grid(
                    path,
                    g,
                    grid,
                    f"the first user feature {self.files[0]}",
                    "resample every user feature onto the tile's grid (otbcli_Superimpose or "
                    "gdalwarp) as iota2 requires",
                )
            self._counts.append(count)
            self._nodata.append(nodata)
            stem = path.name.rsplit(".", 1)[0]
            names += [stem] if count == 1 else [f"{stem}_b{i + 1}" for i in range(count)]
        assert grid is not None
        if band_names is not None:
            if len(band_names) != len(names):
                raise ConfigError(
                    f"band_names has {len(band_names)} names but the user features "
                    f"{[p.name for p in self.files]} have {len(names)} bands in all"
                )
            names = [str(n) for n in band_names]
        if len(set(names)) != len(names):
            raise ConfigError(f"user feature names {names} repeat; give distinct band_names")
        self.names = names
        self.band_names = names
        self.dates = []
        self.grid = grid
        self.crs, self.transform = grid.crs, grid.transform
        self.width, self.height = grid.width, grid.height
        self._pool = RasterPool(max_open)

    @property
    def n_features(self) -> int:
        """F, the number of channels."""
        return len(self.names)

    def read_static(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of every feature.

        Args:
            window: whole-pixel window of the grid; None reads the whole grid.

        Returns:
            ``x`` (H, W, F) float32, the rasters' values in their own units (unscaled),
            and ``valid`` (H, W) bool, True where no feature is NaN or its file's nodata.

        Raises:
            ValueError: the window is fractional or outside the grid.
            InputFileNotFoundError: a file cannot be opened.
        """
        win = resolve_window(window, self.width, self.height, self.path)
        h, w = int(win.height), int(win.width)
        x = np.empty((h, w, self.n_features), dtype=np.float32)
        invalid = np.zeros((h, w), dtype=bool)
        c = 0
        for path, count, nodata in zip(self.files, self._counts, self._nodata, strict=True):
            src = self._pool.get(path, "user feature")
            data = src.read(window=win, out_dtype="float32")  # (count, H, W)
            invalid |= equals_nodata(data, nodata).any(axis=0)
            x[:, :, c : c + count] = data.transpose(1, 2, 0)
            c += count
        return x, ~invalid

    def close(self) -> None:
        """Close the open files."""
        self._pool.close()


def _match(folder: Path, pattern: str) -> list[Path]:
    """GeoTIFFs of ``folder`` matched by ``pattern`` (glob, or name part), sorted.

    A plain name that is a file of the folder matches that file only.
    """
    if not any(ch in pattern for ch in "*?["):
        exact = folder / pattern
        if exact.is_file():
            return [exact]
        hits = [
            p
            for p in folder.iterdir()
            if p.is_file() and pattern in p.name and p.suffix.lower() in _RASTER_SUFFIXES
        ]
    else:
        hits = [
            Path(p)
            for p in globlib.glob(str(folder / pattern), recursive=True)
            if Path(p).is_file() and Path(p).suffix.lower() in _RASTER_SUFFIXES
        ]
    return sorted(hits)
