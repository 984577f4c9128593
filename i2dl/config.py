"""Hydra/OmegaConf helpers shared by every stage: config location, resolvers, checks."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import inspect
import logging
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from i2dl.errors import ConfigError, PackageShadowedError
from i2dl.io.files import not_writable, write_text_atomic
from i2dl.io.layout import DRAWN_SEED

log = logging.getLogger(__name__)

#: Repository root (the folder holding ``i2dl/``, ``configs/``, ``models/``, ...).
ROOT_DIR = Path(__file__).resolve().parents[1]
#: Hydra config directory, read from the source tree (editable install).
CONFIG_DIR = ROOT_DIR / "configs"
#: Name of the primary config shared by every stage.
CONFIG_NAME = "train"
#: Top-level packages of this project besides ``i2dl`` (names a user's folder may shadow).
SIBLING_PACKAGES = ("models", "datamodules", "configs")


def check_packages() -> None:
    """Check that ``models``, ``datamodules`` and ``configs`` are this project's packages.

    The project's layout has generic top-level names: a ``models/`` folder in the working
    directory (first on ``sys.path`` under ``python -m``) would be imported instead.

    Raises:
        PackageShadowedError: (an ``ImportError``) a package resolves outside the
            repository; the message names both paths and the fix.
    """
    for name in SIBLING_PACKAGES:
        spec = importlib.util.find_spec(name)
        expected = ROOT_DIR / name / "__init__.py"
        found = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if found != expected.resolve():
            raise PackageShadowedError(
                f"the package {name!r} imported by i2dl is {found or 'missing'}, not i2dl's "
                f"own {expected}: a folder named {name!r} in the working directory or on "
                f"PYTHONPATH shadows it. Run i2dl from another folder, rename your "
                f"{name!r} folder, or reinstall i2dl with `pip install -e .`"
            )


def register_resolvers() -> None:
    """Register i2dl's OmegaConf resolvers (idempotent).

    - ``${i2dl_root:}``: absolute path of the repository root, so that the default
      ``paths.data_dir`` (``<root>/../shared/data``) does not depend on the working directory.
    """
    if not OmegaConf.has_resolver("i2dl_root"):
        OmegaConf.register_new_resolver("i2dl_root", lambda: str(ROOT_DIR))


register_resolvers()


# ------------------------------------------------------------------ config checks


@dataclass(frozen=True)
class Check:
    """One config key's check: what the value must be, and an example of a good one.

    Attributes:
        key: dotted key (``sampling.ratio``); a key absent from the config is skipped
            (``model.model_selection_criterion`` of a scikit-learn model).
        expected: the rule in words, for the error message.
        ok: the test, given the resolved value.
        example: a valid value, shown as ``key=example`` in the fix.
    """

    key: str
    expected: str
    ok: Callable[[Any], bool]
    example: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(key: str, low: int, high: int | None = None, *, null: str = "", example: str) -> Check:
    """An integer in ``low..high``; ``null`` (its meaning) allows None."""
    rng = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"

    def ok(v: Any) -> bool:
        if v is None:
            return bool(null)
        return _is_int(v) and v >= low and (high is None or v <= high)

    return Check(key, rng + (f", or null ({null})" if null else ""), ok, example)


def _fraction(
    key: str, *, zero: bool = False, one: bool = False, null: str = "", example: str
) -> Check:
    """A number in (0, 1), with 0 and/or 1 allowed; ``null`` (its meaning) allows None."""
    bounds = ("[0" if zero else "(0") + ", " + ("1]" if one else "1)")

    def ok(v: Any) -> bool:
        if v is None:
            return bool(null)
        return _is_number(v) and (0 < v or (zero and v == 0)) and (v < 1 or (one and v == 1))

    return Check(key, f"a number in {bounds}" + (f", or null ({null})" if null else ""), ok,
                 example)


def _number(key: str, low: float, *, null: str = "", example: str) -> Check:
    def ok(v: Any) -> bool:
        return (v is None and bool(null)) or (_is_number(v) and v >= low)

    return Check(key, f"a number >= {low}" + (f", or null ({null})" if null else ""), ok,
                 example)


def _positive(key: str, example: str) -> Check:
    return Check(key, "a number > 0", lambda v: _is_number(v) and v > 0, example)


def _choice(key: str, choices: Sequence[str], example: str) -> Check:
    return Check(key, "one of " + ", ".join(choices), lambda v: v in choices, example)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _device(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None


#: ``objective`` values -> summary key: the selection-split score that a hyper-parameter
#: search maximises (:func:`i2dl.training.runs.objective_value`). Macro F1 is ``fscore`` in
#: configs (iota2's name) and ``f1_macro`` in reports: the same number.
OBJECTIVES = {"selection_oa": "oa", "selection_fscore": "f1_macro", "selection_kappa": "kappa"}
#: Former ``objective`` names -> current name, still accepted with a DeprecationWarning.
DEPRECATED_OBJECTIVES = {"selection_f1": "selection_fscore"}

#: Largest seed accepted by numpy and Lightning (unsigned 32 bits).
MAX_SEED = 2**32 - 1


def config_checks() -> tuple[Check, ...]:
    """The checked config values, key -> rule (:func:`check_config`).

    Only what OmegaConf/Hydra do not check themselves (they check key names and syntax,
    not types nor ranges: the config groups have no schema).
    """
    from i2dl.samples.extract import NORMALIZATIONS
    from i2dl.samples.selection import SAMPLERS, STRATEGIES
    from models.base import CRITERIA

    return (
        _int("seed", 0, MAX_SEED, null="a fresh random seed, recorded in the run folder",
             example="0"),
        _int("runs", 1, example="1"),
        _int("kfold", 2, null="no cross-validation", example="5"),
        _int("ensemble_size", 1, example="5"),
        Check("refit", "true or false", _bool, "true"),
        Check("refit_window", "an odd integer >= 1",
              lambda v: _is_int(v) and v >= 1 and v % 2 == 1, "5"),
        Check("sampling.split_ground_truth", "true or false", _bool, "false"),
        _int("cpu_threads", 1, null="torch's default", example="1"),
        _fraction("sampling.ratio", example="0.75"),
        _fraction("sampling.selection_ratio", zero=True, example="0.2"),
        _int("sampling.random_seed", 0, MAX_SEED, null="follows seed", example="${seed}"),
        _int("sampling.selection_seed", 0, MAX_SEED, null="follows seed", example="${seed}"),
        _choice("sampling.strategy", STRATEGIES, "all"),
        _choice("sampling.sampler", SAMPLERS, "random"),
        _int("sampling.per_class", 1, null="unused unless strategy=constant", example="2000"),
        _fraction("sampling.percent", one=True, null="unused unless strategy=percent",
                  example="0.5"),
        _int("sampling.total", 1, null="unused unless strategy=total", example="10000"),
        _int("sampling.folds", 2, null="iota2's ratio split", example="5"),
        _int("sampling.fold", 0, example="0"),
        _int("store.samples_per_chunk", 1, example="4096"),
        _choice("store.normalization", sorted(NORMALIZATIONS), "standard"),
        Check("store.rebuild", "true or false", _bool, "false"),
        Check("store.rebuild_damaged", "true or false", _bool, "true"),
        _choice("resume", ["auto", "never"], "auto"),
        Check("infer.resume", "true or false", _bool, "true"),
        Check("objective", "null or one of " + ", ".join(sorted(OBJECTIVES)),
              lambda v: v is None or v in OBJECTIVES or v in DEPRECATED_OBJECTIVES,
              "selection_fscore"),
        _int("datamodule.batch_size", 1, example="256"),
        Check("datamodule.num_workers", "auto (workers on CUDA, none on the CPU) or an integer "
              ">= 0", lambda v: v == "auto" or (_is_int(v) and v >= 0), "auto"),
        Check("datamodule.pin_memory", "auto (on CUDA), true or false",
              lambda v: v == "auto" or isinstance(v, bool), "auto"),
        _int("datamodule.block_chunks", 1, example="8"),
        _number("datamodule.cache_mb", 0, example="512"),
        _int("trainer.max_epochs", 1, example="30"),
        _number("trainer.gradient_clip_val", 0, null="no clipping", example="1.0"),
        _int("callbacks.early_stopping.patience", 0, example="10"),
        _choice("model.model_selection_criterion", sorted(CRITERIA), "fscore"),
        _fraction("model.label_smoothing", zero=True, example="0.0"),
        _int("model.max_samples", 1, null="all learn samples", example="null"),
        _positive("model.optimizer.lr", example="0.001"),
        _number("model.optimizer.weight_decay", 0, example="1e-6"),
        _int("model.estimator.n_estimators", 1, example="100"),
        _int("model.estimator.max_depth", 1, null="grow until leaves are pure", example="null"),
        _int("model.estimator.min_samples_split", 2, example="2"),
        Check("infer.batch_size", "auto (chosen per device) or an integer >= 1",
              lambda v: v == "auto" or (_is_int(v) and v >= 1), "auto"),
        _int("infer.chunk_size", 1, example="512"),
        Check("infer.device", "auto, cpu, cuda or cuda:N", _device, "auto"),
        _int("infer.reader_threads", 1, example="2"),
        _int("infer.read_ahead", 0, example="2"),
        _choice("infer.engine", ["dask", "local"], "local"),
        _choice("fusion_method", ["dempster_shafer", "majority_voting"], "majority_voting"),
        _choice("fusion_mob", ["accuracy", "precision", "recall"], "precision"),
        _int("fusion_undecided_label", 1, null="ties go to the smallest class code",
             example="255"),
        _fraction("fusion_validation_ratio", zero=True, example="0.1"),
        _fraction("sampling.fusion_holdout_ratio", zero=True, example="0.1"),
        Check("infer.smoothing.window_size", "an odd integer >= 3",
              lambda v: _is_int(v) and v >= 3 and v % 2 == 1, "7"),
        Check("infer.smoothing.smoothness", "a number > 0",
              lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0, "20"),
        Check("infer.uncertainty", "a list of entropy, margin, least",
              lambda v: isinstance(v, list | tuple | ListConfig)
              and all(k in ("entropy", "margin", "least") for k in v), "[entropy]"),
        _choice("dask.engine", ["dask", "local"], "local"),
        _int("dask.n_workers", 1, example="4"),
        _int("dask.threads_per_worker", 1, example="1"),
        _int("dask.retries", 0, example="2"),
        _int("infer.dask.n_workers", 1, example="4"),
        _int("infer.dask.threads_per_worker", 1, example="1"),
        _int("features_map.chunk_size", 1, example="512"),
    )


_ABSENT = object()


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value of ``key``, or ``_ABSENT``; an unresolvable one is returned as text."""
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        return f"<cannot be resolved: {exc}>"


def check_config(cfg: DictConfig) -> None:
    """Check every value of :func:`config_checks`, and the keys that go together.

    Called by the CLI on the composed config before a stage runs (and before Hydra
    creates the run folder), so that a bad value stops the run before any work.

    Args:
        cfg: the composed config (with or without its ``hydra`` node).

    Raises:
        ConfigError: (a ``ValueError``) one or more bad values; the message lists every
            one with its value, the rule and an example of the fix.
    """
    problems = []
    for check in config_checks():
        value = _value(cfg, check.key)
        if value is _ABSENT:
            continue
        unresolved = isinstance(value, str) and value.startswith("<cannot be resolved")
        if unresolved or not check.ok(value):
            problems.append(
                f"{check.key}={value!r}: expected {check.expected}; e.g. {check.key}="
                f"{check.example}"
            )
    folds, fold = _value(cfg, "sampling.folds"), _value(cfg, "sampling.fold")
    if _is_int(folds) and _is_int(fold) and not 0 <= fold < folds:
        problems.append(
            f"sampling.fold={fold!r}: expected an integer in 0..{folds - 1} "
            f"(sampling.folds={folds}); e.g. sampling.fold=0"
        )
    runs, kfold = _value(cfg, "runs"), _value(cfg, "kfold")
    if _is_int(runs) and _is_int(kfold) and runs > 1:
        problems.append(
            f"kfold={kfold!r}: expected null with runs={runs!r} (a cross-validation runs "
            f"once per fold); e.g. runs=1 kfold={kfold}, repeated with seed=..."
        )
    problems += device_problems(cfg) + ddp_problems(cfg) + unknown_key_problems(cfg)
    if problems:
        raise ConfigError(
            f"{len(problems)} invalid configuration value(s); fix them on the command line "
            "(key=value) or in the config files:\n  " + "\n  ".join(problems)
        )


def device_problems(cfg: DictConfig) -> list[str]:
    """A CUDA device asked for (``infer.device``, ``trainer.accelerator``) that is not here.

    Checked with the other values, so that ``infer.device=cuda`` on a machine without
    CUDA stops before prepare and fit, not after them.
    """
    import torch

    problems = []
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = _value(cfg, "infer.device")
    if isinstance(device, str) and _device(device) and device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n_gpus:
            have = (f"{n_gpus} CUDA device(s)" if n_gpus
                    else "no CUDA (torch.cuda.is_available() is False)")
            problems.append(f"infer.device={device!r}: this machine has {have}; e.g. "
                            "infer.device=auto (CUDA when present, else the CPU) or cpu")
    accel = _value(cfg, "trainer.accelerator")
    if accel in ("gpu", "cuda") and not n_gpus:
        problems.append(f"trainer.accelerator={accel!r}: this machine has no CUDA "
                        "(torch.cuda.is_available() is False); e.g. trainer.accelerator=auto")
    return problems


def ddp_problems(cfg: DictConfig) -> list[str]:
    """What ``trainer=ddp`` cannot do: scikit-learn models, several runs or folds.

    DDP trains one deep network with one process per device; a scikit-learn model is
    fitted in one process, and ``runs``/``kfold`` repeat the whole job (sweep them as a
    multirun instead). Only the values that were set are named.
    """
    if "ddp" not in str(_value(cfg, "trainer.strategy")):
        return []
    problems = []
    target = str(_value(cfg, "model._target_"))
    if target.endswith("SklearnClassifier"):
        problems.append(
            f"trainer=ddp with model {_value(cfg, 'model.name')!r}: DDP trains deep models "
            "with one process per device; a scikit-learn model is fitted in one process. "
            "Drop trainer=ddp (scikit-learn parallelises with model.estimator.n_jobs)")
    runs, kfold = _value(cfg, "runs"), _value(cfg, "kfold")
    repeated = [f"runs={runs}"] if _is_int(runs) and runs > 1 else []
    if kfold not in (None, _ABSENT):
        repeated.append(f"kfold={kfold}")
    if repeated:
        problems.append(
            f"{' and '.join(repeated)} with trainer=ddp: DDP trains one model with several "
            "processes; sweep seeds or folds as a multirun instead (-m seed=1,2,3 or "
            "sampling.folds=5 sampling.fold=0,1,2,3,4, with hydra/launcher=slurm)")
    return problems


#: Config groups whose nodes are checked key by key (:func:`unknown_key_problems`); the
#: entries of ``callbacks`` and ``logger`` have free names, their ``_target_`` is checked.
CHECKED_GROUPS = ("sampling", "store", "evaluate", "infer", "datamodule", "model", "trainer",
                  "features_map", "obia", "autocontext", "paths", "data", "dask")
#: Groups whose entries are named freely by the user (``+callbacks.spy._target_=...``).
ENTRY_GROUPS = ("callbacks", "logger")
#: Groups checked at their first level only (user-shaped nodes below: sensors, masks).
SHALLOW_GROUPS = ("data",)
#: Config folders holding ``# @package _global_`` files.
GLOBAL_FOLDERS = ("experiment", "debug", "hparams_search")
#: Keys of Hydra's instantiation, valid in any node with a ``_target_``.
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


@functools.lru_cache(maxsize=1)
def _yaml_trees() -> tuple[tuple[str, Any], ...]:
    """Every config file of ``configs/`` as ``(package, content)``, raw (no defaults)."""
    trees: list[tuple[str, Any]] = [("", OmegaConf.load(CONFIG_DIR / f"{CONFIG_NAME}.yaml"))]
    for folder in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir()):
        if folder.name in ("hydra", "__pycache__"):
            continue
        for file in sorted(folder.glob("*.yaml")):
            head = file.read_text(encoding="utf-8").lstrip()
            package = "" if folder.name in GLOBAL_FOLDERS or "@package _global_" in \
                head.split("\n", 1)[0] else folder.name
            trees.append((package, OmegaConf.load(file)))
    return tuple(trees)


@functools.lru_cache(maxsize=256)
def _declared_keys(path: str) -> frozenset[str]:
    """The keys any config file declares at the dotted ``path`` (``model.encoder``)."""
    keys: set[str] = set()
    for package, tree in _yaml_trees():
        if package and path != package and not path.startswith(package + "."):
            continue
        rel = path[len(package) + 1:] if package else path
        node = OmegaConf.select(tree, rel, throw_on_missing=False) if rel else tree
        if isinstance(node, DictConfig):
            keys.update(str(k) for k in node.keys() if k != "defaults")
    return frozenset(keys)


def _target_keys(target: Any) -> set[str] | None:
    """The parameters of a ``_target_`` (None: any key, or it cannot be resolved here)."""
    from hydra.utils import get_method

    try:
        params = inspect.signature(get_method(str(target))).parameters.values()
    except Exception:  # unresolvable targets are reported when they are built
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params} | HYDRA_KEYS


def _node_problems(node: DictConfig, path: str, deep: bool) -> list[str]:
    """Unknown keys of one node, then of its sub-nodes (``deep``), each with a close name."""
    target = node.get("_target_") if "_target_" in node else None
    declared = set(_declared_keys(path))
    allowed = declared
    if target is not None:
        params = _target_keys(target)
        if params is None:
            return []
        allowed = declared | params
    problems = []
    for key in (str(k) for k in node.keys()):
        if key not in allowed and declared:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"did you mean {path}.{close[0]}?" if close else (
                "valid keys: " + ", ".join(sorted(allowed - HYDRA_KEYS)))
            group = path.split(".")[0]
            where = (f"configs/{group}/" if (CONFIG_DIR / group).is_dir()
                     else f"configs/{CONFIG_NAME}.yaml")
            where += f" nor a parameter of {target}" if target is not None else ""
            problems.append(f"{path}.{key}: unknown key (not declared in {where}); {hint} "
                            f"Remove `+{path}.{key}=...`")
            continue
        child = node._get_node(key)
        if deep and isinstance(child, DictConfig) and (_declared_keys(f"{path}.{key}")
                                                      or "_target_" in child):
            problems += _node_problems(child, f"{path}.{key}", deep)
    return problems


def unknown_key_problems(cfg: DictConfig) -> list[str]:
    """Keys of a known config group that no config file declares: ``+sampling.ratioo=0.5``.

    Hydra refuses an unknown key given as ``key=value`` but adds it with ``+key=value``,
    and then nothing reads it. A key is known when a file of ``configs/`` declares it at
    that place (any option of the group, an experiment, the primary config), or, in a node
    with a ``_target_``, when it is a parameter of the target (``+trainer.limit_train_batches``,
    ``+model.scheduler``). The entries of ``callbacks`` and ``logger`` have free names.

    Returns:
        One line per unknown key, with the closest valid name
        (:func:`difflib.get_close_matches`).
    """
    problems: list[str] = []
    for group in CHECKED_GROUPS:
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            problems += _node_problems(node, group, deep=group not in SHALLOW_GROUPS)
    for group in ENTRY_GROUPS:
        for name, entry in (cfg.get(group) or {}).items():
            if isinstance(entry, DictConfig) and "_target_" in entry:
                problems += _node_problems(entry, f"{group}.{name}", deep=False)
    return problems


def check_output_folders(folders: Mapping[str, str | Path]) -> None:
    """Check that every output folder can be written to, before any work.

    Args:
        folders: config key (``hydra.run.dir``, ``store.dir``) -> folder; a folder that
            does not exist yet is checked on its nearest existing parent.

    Raises:
        ConfigError: (a ``ValueError``) a folder (or its parent) is read-only or not a
            folder; the message names the key, the folder and the fix.
    """
    problems = []
    for key, folder in folders.items():
        problem = not_writable(Path(folder))
        if problem:
            problems.append(f"{key}={folder}: {problem}")
    if problems:
        raise ConfigError(
            "cannot write the outputs:\n  " + "\n  ".join(problems)
            + "\nGive a folder you may write to (e.g. hydra.run.dir=..., store.dir=...) or "
            "make it writable (chmod u+w)"
        )


def resolve_seed(cfg: DictConfig) -> int:
    """``seed=null``: a fresh random seed, recorded so that the run can be repeated.

    The seed is drawn once per run folder and written to ``<run>/seed.txt``; a later
    stage run on that folder with ``seed=null`` reuses it, and ``train`` records it in
    ``summary.json``. ``cfg.seed`` is set to it, so that ``sampling.random_seed`` and
    ``sampling.selection_seed`` (``${seed}``, or null) follow.

    Args:
        cfg: the composed config; ``seed`` is replaced when null.

    Returns:
        The seed of the run.

    Raises:
        ConfigError: ``<run>/seed.txt`` exists but holds no seed.
    """
    if cfg.get("seed") is not None:
        seed = int(cfg.seed)
        _follow_seed(cfg)
        return seed
    path = Path(cfg.paths.output_dir) / DRAWN_SEED
    if path.is_file():
        text = path.read_text().strip()
        if not text.isdigit() or int(text) > MAX_SEED:
            raise ConfigError(
                f"{path} holds {text!r}, not a seed; delete it (seed=null draws a new one) "
                "or give seed=<integer>"
            )
        seed = int(text)
        log.info("seed=null: using seed %d drawn earlier for this run (%s)", seed, path)
    else:
        seed = secrets.randbelow(2**31)
        write_text_atomic(path, f"{seed}\n")
        log.info("seed=null: drew seed %d, recorded in %s; repeat this run with seed=%d",
                 seed, path, seed)
    with open_dict(cfg):
        cfg.seed = seed
    _follow_seed(cfg)
    return seed


def _follow_seed(cfg: DictConfig) -> None:
    """``sampling.random_seed`` / ``selection_seed`` given as null follow ``seed``."""
    sampling = cfg.get("sampling")
    if sampling is None:
        return
    with open_dict(sampling):
        for key in ("random_seed", "selection_seed"):
            if key in sampling and sampling.get(key) is None:
                sampling[key] = cfg.seed
