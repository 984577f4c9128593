"""Several runs of the main job: ``runs`` seeds or ``kfold`` folds, aggregated and fused.

The train stage (:mod:`i2dl.stages.train`) hands its one-run function to
:func:`repeat_runs`, which runs it once per seed (``<run>/seed_<i>/``, iota2's
``arg_train.runs``) or per fold (``<run>/fold_<i>/``, sits' ``sits_kfold_validate``),
aggregates the runs into ``<run>/RESULTS.txt`` (:mod:`i2dl.evaluation.aggregate`,
:mod:`i2dl.evaluation.results_files`) and with
``fusion=true`` fuses their maps (:mod:`i2dl.maps.fusion`). :func:`objective_value` is the
score a hyper-parameter search maximises over these runs.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from i2dl.config import DEPRECATED_OBJECTIVES, OBJECTIVES
from i2dl.errors import ConfigError
from i2dl.evaluation.aggregate import aggregate
from i2dl.evaluation.results_files import write_results
from i2dl.evaluation.run_report import CONFUSION_CSV
from i2dl.io.layout import FINAL_DIR, REPORT_DIR, read_summary, run_dir, stage_logging
from i2dl.maps.fusion import fuse_maps, mass_of_belief
from i2dl.training.fusion_score import gather_final_products, score_fusion

log = logging.getLogger(__name__)

#: ``train_one(cfg) -> summary``: one run of the main job in ``cfg.paths.output_dir``.
TrainOne = Callable[[DictConfig], dict[str, Any]]


def requested_runs(cfg: DictConfig) -> tuple[int, Any]:
    """``runs`` and ``kfold`` as asked for, refused with a DDP trainer when repeated.

    Raises:
        ConfigError: ``trainer=ddp`` with ``runs`` > 1 or ``kfold``.
    """
    runs = int(cfg.get("runs", 1) or 1)
    kfold = cfg.get("kfold")
    if "ddp" in str(cfg.trainer.get("strategy", "")) and (runs > 1 or kfold is not None):
        asked = " and ".join([f"runs={runs}"] * (runs > 1)
                             + [f"kfold={kfold}"] * (kfold is not None))
        raise ConfigError(
            f"trainer=ddp trains one model with several processes; {asked} is not supported "
            "with it: sweep seeds or folds as a multirun (-m seed=1,2,3 or "
            "sampling.fold=0,1,2 with hydra/launcher=slurm)"
        )
    if not cfg.sampling.get("split_ground_truth", True) and (runs > 1 or kfold is not None):
        raise ConfigError(
            "sampling.split_ground_truth=false leaves no val polygon, and runs / kfold "
            "compare their runs on val: use runs=1 and kfold=null, or split the ground truth"
        )
    return runs, kfold


def check_runs(runs: int, kfold: Any) -> None:
    """Refuse a bad ``runs`` / ``kfold`` pair.

    Raises:
        ConfigError: ``runs`` < 1, ``kfold`` < 2 (or a bool), or both ``runs`` > 1 and
            ``kfold``.
    """
    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    if kfold is not None and (isinstance(kfold, bool) or int(kfold) < 2 or runs > 1):
        raise ConfigError(
            f"kfold must be null or an integer >= 2 (got {kfold!r}), and cannot be combined "
            f"with runs={runs}: use seed=... to repeat a cross-validation"
        )


def run_configs(cfg: DictConfig, runs: int, kfold: Any) -> list[DictConfig]:
    """The config of each run: ``seed_<i>`` with seed ``seed + i``, or ``fold_<i>``.

    Each is a copy of ``cfg`` with ``runs=1``, ``kfold=null``, its seed or fold, and its
    own folder ``<run>/<name>`` as ``paths.output_dir``.
    """
    out = run_dir(cfg)
    base = int(cfg.seed) if cfg.seed is not None else 0
    jobs: list[tuple[str, dict[str, Any]]]
    if kfold is not None:
        jobs = [
            (f"fold_{i}", {"sampling.folds": int(kfold), "sampling.fold": i})
            for i in range(int(kfold))
        ]
    else:
        jobs = [(f"seed_{i}", {"seed": base + i}) for i in range(runs)]
    if cfg.get("fusion", False) and len(jobs) > 1:  # polygons no run sees, to score it
        for _, overrides in jobs:
            overrides["sampling.fusion_holdout_ratio"] = float(
                cfg.get("fusion_validation_ratio") or 0.0)
            overrides["sampling.fusion_holdout_seed"] = base
    configs = []
    for name, overrides in jobs:
        cfg_i = copy.deepcopy(cfg)
        with open_dict(cfg_i):
            cfg_i.runs = 1
            cfg_i.kfold = None
            for key, value in overrides.items():
                OmegaConf.update(cfg_i, key, value, force_add=True)
            cfg_i.paths.output_dir = str(out / name)
        configs.append(cfg_i)
    return configs


def fuse_run_maps(cfg: DictConfig, out: Path, run_dirs: list[Path]) -> dict[str, Any] | None:
    """With ``fusion=true``: the runs' maps fused into ``<out>/final/`` (iota2's fusion).

    Majority voting or Dempster-Shafer (``fusion_method``, with the mass of belief
    ``fusion_mob`` from each run's val confusion matrix), :func:`i2dl.maps.fusion.fuse_maps`.

    The fused map and every run's map are then scored on the polygons held apart from
    every run (:func:`i2dl.training.fusion_score.score_fusion`).

    Returns:
        ``{"classif", "agreement", "method", "scores"}`` (``scores`` None when nothing
        was held apart), or None when fusion is off or a run has no map.
    """
    summaries = [read_summary(d) for d in run_dirs]
    maps = [str(s.get("classif_map") or "") for s in summaries]
    if not (cfg.get("fusion", False) and all(maps)):
        return None
    codes = [c["code"] for c in summaries[0]["classes"]]
    method = str(cfg.get("fusion_method", "majority_voting"))
    mob = None
    if method == "dempster_shafer":
        mob = np.stack([
            mass_of_belief(pd.read_csv(d / REPORT_DIR / CONFUSION_CSV, index_col=0).to_numpy(),
                           str(cfg.get("fusion_mob", "precision")))
            for d in run_dirs
        ])
    undecided = cfg.get("fusion_undecided_label")
    fused, agreement = fuse_maps(
        [Path(m) for m in maps], codes, out / FINAL_DIR, method=method, mob=mob,
        undecided_label=None if undecided is None else int(undecided),
        cog=bool(cfg.infer.get("cog", True)),
    )
    scores = score_fusion(out, fused, {d.name: m for d, m in zip(run_dirs, maps, strict=True)},
                          summaries[0]["store"], summaries[0]["classes"])
    return {"classif": str(fused), "agreement": str(agreement), "method": method,
            "scores": scores}


def repeat_runs(
    cfg: DictConfig, train_one: TrainOne, runs: int, kfold: Any,
) -> tuple[dict[str, Any], list[Path]]:
    """Run the job once per seed or fold, aggregate the runs and fuse their maps.

    Args:
        cfg: the job's config.
        train_one: one run of the job (:data:`TrainOne`).
        runs: ``runs`` (seeds), when ``kfold`` is None.
        kfold: ``kfold`` (folds), or None.

    Returns:
        The aggregate (:func:`i2dl.evaluation.aggregate.aggregate`, with ``"fusion"`` when
        the maps were fused) and the run folders.
    """
    out = run_dir(cfg)
    configs = run_configs(cfg, runs, kfold)
    run_dirs = []
    for i, cfg_i in enumerate(configs):
        log.info("%s (%d/%d, seed %s) in %s", Path(cfg_i.paths.output_dir).name, i + 1,
                 len(configs), cfg_i.seed, cfg_i.paths.output_dir)
        train_one(cfg_i)
        run_dirs.append(Path(cfg_i.paths.output_dir))
    with stage_logging(out, "train"):
        agg = aggregate(run_dirs)
        fusion = fuse_run_maps(cfg, out, run_dirs)
        if fusion is not None:
            agg["fusion"] = fusion
        if kfold is None:  # iota2's one final/ folder (folds share a seed: their names clash)
            gather_final_products(out, run_dirs)
        files = write_results(out, agg)
        log.info("%d runs aggregated: %s", len(run_dirs), files.get("RESULTS.txt", out))
    return agg, run_dirs


def objective_value(cfg: DictConfig, run_dirs: list[Path]) -> float | None:
    """The score a hyper-parameter search maximises (``objective``), or None if unset.

    The mean, over the runs or folds of this job, of the chosen checkpoint's score on the
    **selection** split (``summary.json`` ``"selection"``, written by evaluate): the val
    polygons, which the report scores, never inform the search (iota2's
    ``hyperparameters_solver`` chooses on its own validation data likewise). With
    ``kfold=K`` it is the cross-validated selection score. ``selection_f1`` is the former
    name of ``selection_fscore`` (a DeprecationWarning).

    Raises:
        ConfigError: unknown ``objective``; a run without selection scores (a scikit-learn
            model fits on the selection split, so it has none).
    """
    name = cfg.get("objective")
    if not name:
        return None
    if name in DEPRECATED_OBJECTIVES:
        warnings.warn(f"objective={name} is deprecated: use objective="
                      f"{DEPRECATED_OBJECTIVES[name]} (the same macro F1)", DeprecationWarning,
                      stacklevel=2)
        name = DEPRECATED_OBJECTIVES[name]
    if name not in OBJECTIVES:
        raise ConfigError(f"objective={name!r} is not one of {sorted(OBJECTIVES)} (or null)")
    values = []
    for d in run_dirs:
        selection = read_summary(d).get("selection") or {}
        value = selection.get(OBJECTIVES[name])
        if value is None:
            raise ConfigError(
                f"objective={name}: run {d} has no selection score (scikit-learn models fit "
                "on the selection split; search them with kfold and report on val instead)"
            )
        values.append(float(value))
    return float(np.mean(values))


def with_objective(cfg: DictConfig, result: dict[str, Any], run_dirs: list[Path]) -> dict[str, Any]:
    """``result`` with ``"objective"`` (:func:`objective_value`) when ``objective`` is set."""
    value = objective_value(cfg, run_dirs)
    if value is not None:
        result["objective"] = value
        log.info("objective %s = %.4f (mean over %d run(s))", cfg.objective, value,
                 len(run_dirs))
    return result
