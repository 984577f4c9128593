"""Stage ``zonal-stats``: ``python -m i2dl zonal-stats map=... zones=... out=...``.

iota2's ``compute_zonal_stats``; the work is :func:`i2dl.maps.zonal.zonal_stats`.
"""

from __future__ import annotations

import sys

from i2dl.errors import ConfigError, I2dlError
from i2dl.maps.zonal import write_zonal_stats, zonal_stats


def main(argv: list[str]) -> int:
    """``python -m i2dl zonal-stats key=value ...`` (see the module's docstring).

    Returns:
        0 on success, 2 on a usage error (printed), 1 on bad input (printed).
    """
    usage = ("usage: python -m i2dl zonal-stats map=CLASSIF.tif zones=POLYGONS.gpkg "
             "out=OUT.gpkg|OUT.csv [confidence=CONF.tif] [rasters=A.tif,B.tif] "
             "[chunk_size=1024]")
    args: dict[str, str] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in ("map", "zones", "out", "confidence", "rasters", "chunk_size"):
            print(f"unknown argument {item!r}\n{usage}", file=sys.stderr)
            return 2
        args[key] = value
    missing = [k for k in ("map", "zones", "out") if not args.get(k)]
    if missing:
        print(f"missing {', '.join(missing)}\n{usage}", file=sys.stderr)
        return 2
    try:
        chunk = int(args.get("chunk_size", "1024"))
        if chunk < 1:
            raise ValueError
    except ValueError:
        print(f"chunk_size must be an integer >= 1\n{usage}", file=sys.stderr)
        return 2
    try:
        table = zonal_stats(
            args["map"], args["zones"], args.get("confidence") or None,
            [p for p in args.get("rasters", "").split(",") if p], chunk,
        )
        path = write_zonal_stats(table, args["out"])
    except (I2dlError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(table)} polygons -> {path}")
    return 0
