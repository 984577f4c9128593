"""Stage ``tiler``: ``python -m i2dl tiler [config=FILE.yaml] key=value ...``.

iota2's features tiler (``i2_features_to_grid``): plain ``key=value`` arguments over the
defaults of ``configs/tiler.yaml`` and of the run's ``dask`` group
(``configs/dask/default.yaml``: ``dask.engine=dask`` makes every tile x feature a Dask
task); the work is :func:`i2dl.features.tiling.run_tiler`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from i2dl.config import CONFIG_DIR
from i2dl.errors import I2dlError
from i2dl.features.tiling import DEFAULTS, run_tiler
from i2dl.maps.cluster import dask_settings, task_runner


def main(argv: list[str]) -> int:
    """``python -m i2dl tiler [config=FILE.yaml] key=value ...``.

    Returns:
        0 on success, 2 on a usage error, 1 on bad input (printed without traceback).
    """
    cfg = OmegaConf.merge(OmegaConf.load(DEFAULTS),
                          {"dask": OmegaConf.load(CONFIG_DIR / "dask" / "default.yaml")})
    dotlist = []
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"arguments are key=value, got {item!r}; keys: {sorted(cfg)}",
                  file=sys.stderr)
            return 2
        if key == "config":
            cfg = OmegaConf.merge(cfg, OmegaConf.load(value))
        elif key.split(".")[0] not in cfg:
            print(f"unknown key {key!r}; keys: {sorted(cfg)}", file=sys.stderr)
            return 2
        else:
            dotlist.append(item)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    assert isinstance(cfg, DictConfig)  # merged mappings
    try:
        logs = Path(str(cfg.get("output_path") or ".")) / "logs" / "FeaturesTiler"
        with task_runner(dask_settings(cfg), logs) as run_tasks:
            written = run_tiler(cfg, run_tasks)
    except I2dlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n = sum(len(v) for v in written.values())
    print(f"{n} rasters written for {len(written)} tile(s) under {cfg.output_path}")
    return 0
