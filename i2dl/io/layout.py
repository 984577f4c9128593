"""The run folder: its layout, its file names, stage logging and ``summary.json``.

One run (a Hydra run dir, ``paths.output_dir``) holds, as in README's output tree::

    <run>/
    ├── model.yaml, checkpoints/, tb/     one model (or regions/region_<r>/ per eco-region)
    ├── fit_state.json                    its fit: config fingerprint, running or done
    ├── report/                           confusion matrix, metrics.json, learning curves
    ├── maps/ (maps/<tile>/), final/      maps, mosaics, fusion
    ├── logs/<stage>.log                  one log per stage
    ├── class_statistics.csv              iota2's per class/region/run/split sample counts
    ├── seed.txt                          the seed drawn for seed=null
    └── summary.json                      metrics, paths, timings, versions

Every stage names these paths through this module, never by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from i2dl.errors import StoreError
from i2dl.io.files import write_text_atomic

log = logging.getLogger(__name__)

#: What is needed to rebuild a trained model (its config and the data dimensions).
MODEL_SPEC = "model.yaml"
#: Checkpoints of a model folder: ``best.ckpt``/``last.ckpt`` or ``model.joblib``.
CHECKPOINT_DIR = "checkpoints"
#: A fitted scikit-learn model, with its preprocessing, in ``checkpoints/``.
SKLEARN_MODEL = "model.joblib"
#: The selection score of every epoch of a fit, beside its checkpoints (``checkpoints/``):
#: ``{"monitor", "mode", "epochs", "values"}``, read to choose the refit's epoch count.
SELECTION_CURVE = "selection_curve.json"
#: Sub-folder of a model folder holding the members of a deep ensemble
#: (``members/member_<i>/checkpoints/``).
MEMBERS_DIR = "members"
#: State of the fit of a model folder, beside ``checkpoints/``: the config fingerprint,
#: whether the fit is ``running`` (or was killed) or ``done``, the best checkpoint's name.
FIT_STATE = "fit_state.json"
#: Outputs of a run derived from its model(s), removed when a model is fitted anew.
DERIVED_OUTPUTS = ("report", "maps", "final", "summary.json")
#: TensorBoard events of a model folder.
TB_DIR = "tb"
#: Accuracy report of a run (``report/region_<r>/``, ``report/test/`` below it).
REPORT_DIR = "report"
#: The report's metrics file.
METRICS_JSON = "metrics.json"
#: Maps of one tile (``maps/<tile>/`` with several tiles).
MAPS_DIR = "maps"
#: Mosaics and fused maps (iota2's ``final/``).
FINAL_DIR = "final"
#: One log file per stage.
LOGS_DIR = "logs"
#: One model per eco-region: ``regions/region_<r>/``.
REGIONS_DIR = "regions"
#: Summary of a run written by ``train``.
SUMMARY_JSON = "summary.json"
#: The seed drawn for ``seed=null`` (:func:`i2dl.config.resolve_seed`).
DRAWN_SEED = "seed.txt"
#: iota2's class statistics of the sample selection.
CLASS_STATISTICS = "class_statistics.csv"
#: Learning curves picture of a model folder.
LEARNING_CURVES = Path(REPORT_DIR) / "learning_curves.png"

#: Packages whose versions are recorded in ``summary.json``.
VERSIONED = (
    "i2dl", "torch", "lightning", "torchmetrics", "zarr", "rasterio", "geopandas", "numpy",
    "hydra-core",
)  # fmt: skip


def run_dir(cfg: DictConfig) -> Path:
    """The run folder ``cfg.paths.output_dir``, created if needed."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def stage_logging(run: str | Path, stage: str) -> Iterator[Path]:
    """Copy every log record of a stage (INFO and above) to ``<run>/logs/<stage>.log``.

    Args:
        run: the run folder.
        stage: stage name, the file's stem.

    Yields:
        The log file path.
    """
    log_dir = Path(run) / LOGS_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{stage}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    )
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


def region_dir(run: Path, region: int) -> Path:
    """Model folder of one eco-region: ``<run>/regions/region_<r>``."""
    return run / REGIONS_DIR / f"region_{int(region)}"


def model_dirs(run: Path, regions: list[int] | None) -> dict[int | None, Path]:
    """Folder of each model of a run: ``{None: run}``, or ``{r: regions/region_<r>}``.

    Args:
        run: the run folder.
        regions: the store's eco-region codes, or None/empty for one model.
    """
    if not regions:
        return {None: run}
    return {int(r): region_dir(run, int(r)) for r in regions}


def trained_model_dirs(run: Path) -> dict[int | None, Path]:
    """The model folders that ``fit`` wrote in a run (per-region folders if any)."""
    root = run / REGIONS_DIR
    found = sorted(root.glob("region_*")) if root.is_dir() else []
    if not found:
        return {None: run}
    return {int(d.name.split("_")[-1]): d for d in found}


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file holding one object, or None (absent, unreadable, not an object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_fit_state(model_dir: Path) -> dict[str, Any] | None:
    """``<model_dir>/fit_state.json``, or None (no fit, or an older i2dl's)."""
    return read_json_object(model_dir / FIT_STATE)


def write_fit_state(model_dir: Path, state: Mapping[str, Any]) -> Path:
    """Write ``<model_dir>/fit_state.json`` atomically."""
    return write_json(model_dir / FIT_STATE, state)


def checkpoint_path(model_dir: Path, which: str) -> Path:
    """The checkpoint ``which`` of a model folder: the one place that names it.

    ``best`` is the file that ``fit`` recorded in ``fit_state.json`` (always
    ``best.ckpt``: checkpoint names carry no ``-v1`` version). A model folder whose fit
    was interrupted (state ``running``) has no usable checkpoint: evaluating it would
    silently score a half-trained or older model.

    Args:
        model_dir: a model folder (the run, or a region's folder).
        which: ``best`` or ``last`` (``checkpoints/<which>.ckpt``, or the one
            ``checkpoints/model.joblib`` of a scikit-learn model), or a path.

    Returns:
        An existing file.

    Raises:
        StoreError: the checkpoint does not exist, or the fit of ``model_dir`` did not
            finish.
    """
    if which in ("best", "last"):
        state = read_fit_state(model_dir)
        if state is not None and state.get("status") != "done":
            raise StoreError(
                f"the fit in {model_dir} did not finish (interrupted?): run the same "
                "`python -m i2dl train` (or `fit`) command again to resume it"
            )
        name = f"{which}.ckpt"
        if which == "best" and state is not None and state.get("best"):
            name = str(state["best"])
        sk = model_dir / CHECKPOINT_DIR / SKLEARN_MODEL
        path = sk if sk.is_file() else model_dir / CHECKPOINT_DIR / name
    else:
        path = Path(which)
    if not path.is_file():
        raise StoreError(
            f"checkpoint {path} not found; run `python -m i2dl fit` first, or point "
            "hydra.run.dir at the run folder that holds checkpoints/"
        )
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (64 hexadecimal characters)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The files a fit leaves to be loaded: ``checkpoints/*`` and the ensemble members'."""
    folders = [model_dir / CHECKPOINT_DIR,
               *sorted((model_dir / MEMBERS_DIR).glob(f"member_*/{CHECKPOINT_DIR}"))]
    return [p for d in folders if d.is_dir() for p in sorted(d.iterdir())
            if p.is_file() and not p.name.startswith(".")]


def checkpoint_hashes(model_dir: Path) -> dict[str, str]:
    """``{path relative to model_dir: sha256}`` of :func:`checkpoint_files`.

    Recorded in ``fit_state.json`` (``checkpoints``) when the fit is done, so that a
    checkpoint replaced afterwards (copied from another run, another seed, other class
    codes) is recognised by :func:`checkpoint_problem`.
    """
    return {p.relative_to(model_dir).as_posix(): file_sha256(p)
            for p in checkpoint_files(model_dir)}


def checkpoint_problem(model_dir: Path, path: Path, state: Mapping[str, Any] | None) -> str | None:
    """Why ``path`` is not a checkpoint this model folder's fit wrote, or None.

    Args:
        model_dir: the model folder.
        path: the checkpoint about to be loaded or reused.
        state: the folder's ``fit_state.json`` (:func:`read_fit_state`).

    Returns:
        None when ``fit_state.json`` records ``path`` with the file's SHA-256, or when
        ``path`` lies outside ``model_dir/checkpoints`` and ``members/`` (a checkpoint the
        user named); else the reason in words (expected and found hashes).
    """
    try:
        rel = Path(path).resolve().relative_to(model_dir.resolve()).as_posix()
    except ValueError:
        return None  # a checkpoint chosen by path, outside the run's model folder
    if not rel.startswith((f"{CHECKPOINT_DIR}/", f"{MEMBERS_DIR}/")):
        return None
    recorded = (state or {}).get("checkpoints")
    if not isinstance(recorded, dict):
        return (f"{model_dir / FIT_STATE} records no checkpoint hash (no finished fit, or "
                "one of an older i2dl), so the file cannot be tied to this run")
    if rel not in recorded:
        return f"{model_dir / FIT_STATE} does not list {rel}: fit did not write it"
    found = file_sha256(Path(path))
    if found != recorded[rel]:
        return (f"its sha256 is {found[:16]}..., {model_dir / FIT_STATE} records "
                f"{str(recorded[rel])[:16]}... written by the fit: the file changed after "
                "the fit (replaced by another run's or seed's, truncated or damaged)")
    return None


def versions() -> dict[str, str]:
    """Python and package versions, for ``summary.json``."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (temporary file, then rename)."""
    return write_text_atomic(path, json.dumps(data, indent=2))


def read_summary(run: Path) -> dict[str, Any]:
    """``<run>/summary.json`` as a dict.

    Raises:
        StoreError: the run has no summary (``train`` did not finish there).
    """
    path = run / SUMMARY_JSON
    if not path.is_file():
        raise StoreError(f"{path} not found: `python -m i2dl train` has not finished in {run}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
