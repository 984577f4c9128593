"""Fusion of the maps of several runs (iota2 multi-run products, OTB FusionOfClassifications).

With ``runs=N`` every run writes its own classification; the fusion map gives each pixel
one class and the agreement map the fraction of runs that chose it (1.0 = unanimous).

- ``majority_voting`` (iota2's default): the class most runs chose.
- ``dempster_shafer``: each run's vote is a mass function built from its "mass of
  belief" (MOB) for the class it chose, its precision (or recall, or overall accuracy)
  on its own val pixels (iota2's ``dempstershafer_mob``): mass ``p`` on ``{c}``, ``1 - p``
  on the set of every other class. Dempster's rule combines the runs and the pixel gets
  the class of largest combined **belief**, as OTB's DSFusionOfClassifiers decides.
  For these simple mass functions the (unnormalised) belief of a singleton is, for a
  class ``c`` that some run chose, the product over runs of ``p_m`` when run ``m`` chose
  ``c`` and ``1 - p_m`` otherwise; for a class no run chose it is 0, unless it is the
  only class no run chose (then the product of every ``1 - p_m``: every run's "not my
  class" leaves only it). The normalisation of Dempster's rule is common to all classes
  and does not change the decision. A confident run outweighs several unreliable ones,
  and a unanimous vote always wins, whatever its precision (deciding by the plausibility
  instead, the contour function, would give a class that no run chose whenever the
  runs' precision is below 0.5).

Ties: with ``undecided_label`` set (iota2's ``-undecidedlabel``), pixels whose top
classes tie get that label; otherwise the smallest class code wins. A pixel that is nodata
(0) in every run stays nodata; runs that are nodata at a pixel do not vote there (the
agreement is counted over the runs that voted).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import rasterio

from i2dl.errors import ConfigError
from i2dl.io.files import atomic_path
from i2dl.io.geotiff import block_windows, geotiff_profile, to_cog

log = logging.getLogger(__name__)

#: ``fusion_method`` choices (iota2 / OTB FusionOfClassifications names)
FUSION_METHODS = ("majority_voting", "dempster_shafer")
#: ``fusion_mob`` choices: the mass of belief of a run for a class, from its val report
MOBS = ("precision", "recall", "accuracy")


def mass_of_belief(confusion: np.ndarray, kind: str = "precision") -> np.ndarray:
    """(K,) mass of belief of one run per class from its confusion matrix.

    Args:
        confusion: (K, K) counts, rows = reference, columns = predicted (i2dl's report).
        kind: ``precision`` (iota2's default: how often the run is right when it says
            the class), ``recall``, or ``accuracy`` (the overall accuracy for every class).

    Raises:
        ConfigError: unknown ``kind``.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    diag = np.diag(cm)
    if kind == "precision":
        return np.divide(diag, cm.sum(axis=0), out=np.zeros(len(cm)), where=cm.sum(axis=0) > 0)
    if kind == "recall":
        return np.divide(diag, cm.sum(axis=1), out=np.zeros(len(cm)), where=cm.sum(axis=1) > 0)
    if kind == "accuracy":
        return np.full(len(cm), diag.sum() / max(cm.sum(), 1))
    raise ConfigError(f"fusion_mob={kind!r}: use one of {MOBS}")


def majority_vote(
    maps: np.ndarray, codes: np.ndarray, undecided_label: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Vote over runs.

    Args:
        maps: (N, H, W) int class codes of N runs, 0 = nodata.
        codes: (K,) sorted class codes that may appear.
        undecided_label: label of pixels whose most voted classes tie; None = the
            smallest code wins.

    Returns:
        ``fused`` (H, W) of ``maps``' dtype (0 where no run voted) and ``agreement``
        (H, W) float32 in [0, 1] (0 where no run voted).
    """
    votes = np.stack([(maps == c).sum(axis=0) for c in codes])  # (K, H, W)
    return _decide(votes.astype(np.float64), votes, maps, codes, undecided_label)


def dempster_shafer(
    maps: np.ndarray, codes: np.ndarray, mob: np.ndarray, undecided_label: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Dempster-Shafer fusion of runs (see the module's docstring).

    Args:
        maps: (N, H, W) int class codes of N runs, 0 = nodata.
        codes: (K,) sorted class codes.
        mob: (N, K) mass of belief of run ``n`` when it chooses class ``codes[k]``, in
            [0, 1] (its precision for that class, say); clipped to [1e-6, 1 - 1e-6].
        undecided_label: label of pixels whose largest beliefs tie; None = the
            smallest code wins.

    Returns:
        ``fused`` and ``agreement`` as :func:`majority_vote`.

    Raises:
        ConfigError: ``mob`` is not (N, K).
    """
    if mob.shape != (len(maps), len(codes)):
        raise ConfigError(f"dempster_shafer: mob has shape {mob.shape}, expected "
                          f"({len(maps)}, {len(codes)}) (runs x classes)")
    p = np.clip(mob.astype(np.float64), 1e-6, 1 - 1e-6)
    # log-belief of class k: sum over voting runs of log p (chose k) or log(1 - p_m)
    log_bel = np.zeros((len(codes), *maps.shape[1:]))
    for n in range(len(maps)):
        voted = maps[n] != 0
        idx = np.searchsorted(codes, maps[n])
        idx = np.where(voted & (idx < len(codes)), idx, 0)
        p_chosen = np.where(voted, p[n][idx], 1.0)
        for k, code in enumerate(codes):
            chose = maps[n] == code
            log_bel[k] += np.where(chose, np.log(p_chosen), np.log1p(-p_chosen) * voted)
    votes = np.stack([(maps == c).sum(axis=0) for c in codes])
    # a class no run chose has belief 0, unless it is the only class no run chose
    unchosen = votes == 0
    log_bel[unchosen & (unchosen.sum(axis=0) > 1)] = -np.inf
    return _decide(np.round(log_bel, 9), votes, maps, codes, undecided_label)


def _decide(
    score: np.ndarray, votes: np.ndarray, maps: np.ndarray, codes: np.ndarray,
    undecided_label: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The class of largest score (first = smallest code), ties -> undecided; agreement."""
    voters = (maps != 0).sum(axis=0)
    best = score.argmax(axis=0)
    fused = np.where(voters > 0, codes[best], 0).astype(maps.dtype)
    if undecided_label is not None and len(codes) > 1:
        top2 = np.sort(score, axis=0)[-2:]
        tie = (top2[1] == top2[0]) & (voters > 0)
        fused[tie] = undecided_label
    top = np.take_along_axis(votes, best[None], axis=0)[0]
    agreement = np.where(voters > 0, top / np.maximum(voters, 1), 0.0).astype(np.float32)
    return fused, agreement


def fuse_maps(
    paths: list[Path], codes: list[int], out_dir: str | Path, chunk_size: int = 1024,
    method: str = "majority_voting", mob: np.ndarray | None = None,
    undecided_label: int | None = None, cog: bool = False,
) -> tuple[Path, Path]:
    """Write ``Classif_Fusion.tif`` and ``Agreement_Fusion.tif`` from per-run maps.

    Args:
        paths: per-run classification GeoTIFFs on the same grid.
        codes: the class codes.
        out_dir: output folder (``<run>/final``).
        chunk_size: block window side, pixels.
        method: ``majority_voting`` or ``dempster_shafer``.
        mob: (runs, K) masses of belief, required by ``dempster_shafer``.
        undecided_label: label of tied pixels (None = smallest code wins); must not be a
            class code or 0.
        cog: rewrite both as Cloud-Optimized GeoTIFFs (:func:`i2dl.io.geotiff.to_cog`).

    Returns:
        The fusion and agreement map paths.

    Raises:
        ConfigError: fewer than two maps, maps on different grids, or ``chunk_size`` < 1.
    """
    if len(paths) < 2:
        raise ConfigError(f"fusion needs the maps of at least two runs, got {len(paths)}")
    if method not in FUSION_METHODS:
        raise ConfigError(f"fusion_method={method!r}: use one of {FUSION_METHODS}")
    if method == "dempster_shafer" and mob is None:
        raise ConfigError("dempster_shafer fusion needs each run's mass of belief (mob)")
    if undecided_label is not None and (undecided_label == 0 or undecided_label in codes):
        raise ConfigError(f"fusion_undecided_label={undecided_label} is 0 (nodata) or a "
                          f"class code {sorted(codes)}: choose another value, e.g. 255")
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
                if method == "dempster_shafer":
                    assert mob is not None  # checked above
                    fused, agreement = dempster_shafer(maps, codes_arr, mob, undecided_label)
                else:
                    fused, agreement = majority_vote(maps, codes_arr, undecided_label)
                dc.write(fused[None], window=win)
                da.write(agreement[None], window=win)
    if cog:
        to_cog(targets["fusion"], "categorical")
        to_cog(targets["agreement"], "continuous")
    log.info("fusion of %d runs: %s, %s", len(paths), targets["fusion"], targets["agreement"])
    return targets["fusion"], targets["agreement"]
