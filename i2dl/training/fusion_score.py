"""The fused map of several runs, scored honestly, and iota2's one ``final/`` folder.

With ``runs=N fusion=true``, each run re-splits the reference polygons with its own seed,
so every polygon is learnt by some run: the runs' val polygons cannot score the fused map.
As iota2 does with ``merge_final_classifications_ratio``, a fraction of each class's
polygons (``fusion_validation_ratio``) is held apart from every run
(:func:`i2dl.samples.split.fusion_holdout`, split value ``fusion`` in the stores), and
:func:`score_fusion` scores the fused map **and each run's map** on those same pixels, so
that the fusion is compared with its runs on equal terms. Pixels that the fusion leaves
undecided (``fusion_undecided_label``) or nodata count as errors.

:func:`gather_final_products` puts every run's final products beside the fusion in
``<run>/final/`` (iota2's output tree: ``Classif_Seed_<i>.tif``, ``Confidence_Seed_<i>.tif``,
``Classif_Fusion.tif``…), as hard links where the file system allows, copies otherwise.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from i2dl.evaluation.run_report import compute_metrics, confusion_csv, confusion_png
from i2dl.io.files import write_bytes_atomic
from i2dl.io.layout import FINAL_DIR, write_json
from i2dl.samples.store import FUSION, open_store, read_array, read_info

log = logging.getLogger(__name__)

#: folder of the fusion's scores, in ``<run>/final/``
FUSION_REPORT = "fusion_report"
#: code given to undecided and nodata pixels when scoring (never a class code)
UNDECIDED = -1


def _held_apart_pixels(store: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``fusion`` split of a store: reference codes and pixel-centre map coordinates.

    Returns:
        ``(codes, xs, ys)``; empty arrays when the store has none.
    """
    group = open_store(store)
    rows = np.flatnonzero(read_array(group, "split") == FUSION)
    if not len(rows):
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    code = read_array(group, "code")[rows]
    tile, row, col = (read_array(group, k)[rows] for k in ("tile", "row", "col"))
    tiles = read_info(store).attrs["tiles"]
    xs, ys = np.empty(len(rows)), np.empty(len(rows))
    for t in np.unique(tile):
        sel = tile == t
        xs[sel], ys[sel] = Affine(*tiles[int(t)]["transform"][:6]) * (col[sel] + 0.5,
                                                                     row[sel] + 0.5)
    return code, xs, ys


def _map_values(path: str | Path, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Values of band 1 of a map at map coordinates (nodata outside the map)."""
    with rasterio.open(path) as src:
        return np.array([v[0] for v in src.sample(zip(xs, ys, strict=True), indexes=1,
                                                  masked=False)], dtype=np.int64)


def score_fusion(out: Path, fused: Path, maps: Mapping[str, str], store: str | Path,
                 classes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Score the fused map and each run's map on the held-apart polygons.

    Args:
        out: the multi-run folder; writes ``final/fusion_report/`` (``metrics.json``,
            ``confusion_matrix.csv`` and ``.png`` of the fusion, ``runs.json`` with every
            map's OA, kappa and macro F1 on the same pixels).
        fused: ``Classif_Fusion.tif``.
        maps: run name -> its classification map.
        store: a run's sample store (every run holds the same ``fusion`` polygons).
        classes: ``[{"code", "name"}, ...]`` of the runs.

    Returns:
        ``{"n_samples", "oa", "kappa", "f1_macro", "runs": {name: {...}}, "report"}``, or
        None when no polygon was held apart (``fusion_validation_ratio=0``, or classes
        with too few polygons).
    """
    truth, xs, ys = _held_apart_pixels(store)
    if not len(truth):
        log.warning("the fused map is not scored: no polygon was held apart from the runs "
                    "(fusion_validation_ratio=0, or every class has fewer than 3 polygons)")
        return None
    codes = [int(c["code"]) for c in classes]
    names = [str(c["name"]) for c in classes]

    def score(path: str | Path) -> dict[str, Any]:
        pred = _map_values(path, xs, ys)
        pred = np.where(np.isin(pred, codes), pred, UNDECIDED)
        return compute_metrics(truth, pred, [*codes, UNDECIDED], [*names, "undecided"])

    fusion = score(fused)
    runs = {name: score(path) for name, path in maps.items()}
    report = out / FINAL_DIR / FUSION_REPORT
    write_json(report / "metrics.json", fusion)
    write_bytes_atomic(report / "confusion_matrix.csv", confusion_csv(fusion))
    write_bytes_atomic(report / "confusion_matrix.png",
                       confusion_png(fusion, f"fusion: {len(truth)} held-apart pixels"))
    brief = {k: {m: v[m] for m in ("oa", "kappa", "f1_macro")} for k, v in runs.items()}
    write_json(report / "runs.json", brief)
    log.info("fusion on %d held-apart pixels: OA %.4f (runs: %s)", len(truth), fusion["oa"],
             ", ".join(f"{k} {v['oa']:.4f}" for k, v in brief.items()))
    return {"n_samples": len(truth), "oa": fusion["oa"], "kappa": fusion["kappa"],
            "f1_macro": fusion["f1_macro"], "runs": brief, "report": str(report)}


def gather_final_products(out: Path, run_dirs: list[Path]) -> list[Path]:
    """Hard-link (or copy) every run's ``final/*.tif`` into ``<out>/final/``.

    Returns:
        The paths in ``<out>/final/``.
    """
    final = out / FINAL_DIR
    final.mkdir(parents=True, exist_ok=True)
    placed = []
    for d in run_dirs:
        for src in sorted((d / FINAL_DIR).glob("*_Seed_*.tif")):
            dst = final / src.name
            tmp = dst.with_name(dst.name + ".linking")
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copy2(src, tmp)
            os.replace(tmp, dst)
            placed.append(dst)
    return placed
