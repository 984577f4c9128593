"""Model construction: one way to build any classifier, and to rebuild a trained one.

Every model config (``configs/model/*.yaml``) is instantiated by
``hydra.utils.instantiate``: deep networks (``_target_: models.SITSClassifier`` with an
``encoder:`` and a ``head:`` node) and scikit-learn estimators (``_target_:
models.SklearnClassifier`` with an ``estimator:`` node) alike. What only the data knows
(channels C, dates T, classes K, balanced class weights) is passed in here. ``fit`` saves
the resolved model config with these dimensions as ``<model dir>/model.yaml``; evaluation
and inference rebuild the model from it and load its checkpoint, so no second build path
exists.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from i2dl.errors import ConfigError, StoreError, UnsafeModelSpecError
from i2dl.io.files import write_text_atomic
from i2dl.io.layout import (
    FIT_STATE,
    MODEL_SPEC,
    checkpoint_path,
    checkpoint_problem,
    read_fit_state,
)
from i2dl.samples.store import StoreInfo, check_manifest, read_info, store_digest
from models.base import Classifier, SITSClassifier
from models.ensemble import DeepEnsemble

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataDims:
    """Dimensions of the samples a model is built for.

    Attributes:
        n_channels: C, channels per date.
        n_dates: T, dates per series.
        n_classes: K, classes of the nomenclature (outputs of the model).
        static_channels: indices of the date-independent channels among the C (user and
            external features): models take each once, not once per date.
    """

    n_channels: int
    n_dates: int
    n_classes: int
    static_channels: tuple[int, ...] = ()

    @classmethod
    def of(cls, info: StoreInfo) -> DataDims:
        """The dimensions of a sample store."""
        return cls(int(info.n_channels), int(info.n_dates), int(info.n_classes),
                   tuple(info.static_channels))


def build_classifier(
    model_cfg: DictConfig | dict[str, Any],
    dims: DataDims,
    class_weights: Sequence[float] | None = None,
) -> Classifier:
    """Instantiate the classifier of a model config for data of the given dimensions.

    Args:
        model_cfg: the ``model`` config node (``_target_`` and its arguments).
        dims: C, T and K. ``n_classes`` is passed to the classifier; ``in_channels`` to
            its ``encoder`` node, and ``n_dates`` too when the encoder takes it (MLP,
            ANN, TempCNN need T; attention encoders do not). With static channels, the
            encoder gets the C - S dated channels and the classifier ``static_channels``
            (it feeds each static channel once, next to the encoder's features).
        class_weights: (K,) cross-entropy weights for a config with
            ``class_weights: balanced``; None otherwise.

    Returns:
        The classifier (:class:`models.SITSClassifier` or
        :class:`models.SklearnClassifier`), unfitted.

    Raises:
        ConfigError: the config has no ``_target_``, a target or argument is unknown, or
            the built object does not implement :class:`models.base.Classifier`.
    """
    cfg = OmegaConf.create(model_cfg) if isinstance(model_cfg, dict) else model_cfg
    if "_target_" not in cfg:
        raise ConfigError(
            "model config has no _target_; use models.SITSClassifier (deep networks) or "
            "models.SklearnClassifier (scikit-learn estimators), see configs/model/"
        )
    kwargs: dict[str, Any] = {"n_classes": dims.n_classes}
    if dims.static_channels:
        kwargs["static_channels"] = list(dims.static_channels)
    encoder = cfg.get("encoder")
    if encoder is not None:
        if dims.n_channels - len(dims.static_channels) < 1:
            raise ConfigError(
                f"model {cfg.get('name', '?')!r} has a temporal encoder but every channel of "
                "the store is date-independent (external_features.concat_mode=false keeps "
                "only the external features): use a scikit-learn model (rf, svm) or "
                "concat_mode=true")
        enc: dict[str, Any] = {"in_channels": dims.n_channels - len(dims.static_channels)}
        try:
            target = get_class(str(encoder["_target_"]))
        except Exception as exc:  # hydra raises several types for a bad path
            raise ConfigError(f"model.encoder._target_: {exc}") from None
        if "n_dates" in inspect.signature(target).parameters:
            enc["n_dates"] = dims.n_dates
        kwargs["encoder"] = enc
    if "class_weights" in cfg:
        kwargs["class_weights"] = None if class_weights is None else list(class_weights)
    try:
        classifier = instantiate(cfg, **kwargs)
    except InstantiationException as exc:
        raise ConfigError(
            f"cannot build the model of config {cfg.get('name', '?')!r}: {exc}"
        ) from None
    if not isinstance(classifier, Classifier):
        raise ConfigError(
            f"model._target_ {cfg['_target_']} built a {type(classifier).__name__}, which has "
            "no predict_proba(x, days, mask) / load_weights(path); use models.SITSClassifier "
            "or models.SklearnClassifier"
        )
    return classifier


def save_model_spec(
    model_dir: Path,
    model_cfg: DictConfig,
    dims: DataDims,
    store: Path,
    region: int | None,
    n_parameters: int | None = None,
    ensemble_size: int = 1,
    digest: str | None = None,
) -> Path:
    """Write ``<model_dir>/model.yaml``: the resolved model config and the data dimensions.

    ``ensemble_size`` > 1: the checkpoint holds that many networks of this config
    (:class:`models.DeepEnsemble`), which :func:`load_classifier` rebuilds. ``digest``:
    the store's content digest (:func:`i2dl.samples.store.store_digest`), for the reader.

    Returns:
        The written path.
    """
    spec = {
        "name": model_cfg.get("name"),
        "model": OmegaConf.to_container(model_cfg, resolve=True),
        "in_channels": dims.n_channels,
        "n_dates": dims.n_dates,
        "n_classes": dims.n_classes,
        "static_channels": list(dims.static_channels),
        "n_parameters": n_parameters,
        "ensemble_size": int(ensemble_size),
        "store": str(store),
        "store_digest": digest,
        "region": region,
    }
    return write_text_atomic(model_dir / MODEL_SPEC, OmegaConf.to_yaml(OmegaConf.create(spec)))


def load_classifier(model_dir: Path, which: str = "best") -> tuple[Classifier, StoreInfo]:
    """Rebuild a trained classifier from ``<model_dir>/model.yaml`` and load its checkpoint.

    Args:
        model_dir: a model folder written by ``fit`` (the run, or ``regions/region_<r>``).
        which: ``best``, ``last`` or a checkpoint path (:func:`i2dl.io.layout.checkpoint_path`).

    Returns:
        The classifier on the CPU, ready to predict, and the attributes of its store.

    Raises:
        StoreError: no ``model.yaml`` or checkpoint (``fit`` has not run in ``model_dir``),
            an unreadable ``model.yaml``, or a checkpoint that does not fit the config.
        UnsafeModelSpecError: ``model.yaml`` names a ``_target_`` outside the allowed
            model classes (:func:`check_model_targets`): a run folder is data, not code.
    """
    spec_path = model_dir / MODEL_SPEC
    if not spec_path.is_file():
        raise StoreError(f"{spec_path} not found (written by fit): cannot rebuild the model")
    try:
        spec = OmegaConf.load(spec_path)
        model = OmegaConf.to_container(spec.model, resolve=True) if "model" in spec else None
    except Exception as exc:  # YAML and interpolation errors of several types
        raise StoreError(f"{spec_path} is not a readable model spec ({exc})") from None
    if not isinstance(model, dict):
        raise StoreError(
            f"{spec_path} was written by an older i2dl (no `model` node); fit the model again"
        )
    check_model_targets(model, spec_path)
    ckpt = checkpoint_path(model_dir, which)
    state = read_fit_state(model_dir)
    check_binding(model_dir, ckpt, Path(str(spec.store)), state)
    info = read_info(spec.store)
    static = spec.get("static_channels") if isinstance(spec, DictConfig) else None
    dims = DataDims(int(spec.in_channels), int(spec.n_dates), int(spec.n_classes),
                    tuple(int(c) for c in static or []))
    model_cfg = {str(k): v for k, v in model.items()}
    n_members = int(spec.get("ensemble_size") or 1) if isinstance(spec, DictConfig) else 1
    classifier: Classifier
    if n_members > 1:
        members = [build_classifier(model_cfg, dims) for _ in range(n_members)]
        classifier = DeepEnsemble([m for m in members if isinstance(m, SITSClassifier)])
    else:
        classifier = build_classifier(model_cfg, dims)
    classifier.load_weights(ckpt)
    codes = (state or {}).get("class_codes")
    meta = getattr(classifier, "meta", None)
    if codes is None and isinstance(meta, dict):
        codes = meta.get("class_codes")  # a scikit-learn model records its own
    if codes is not None and [int(c) for c in codes] != list(info.class_codes):
        raise StoreError(
            f"{ckpt} was fitted for the class codes {list(codes)}, but its store "
            f"{info.path} has {info.class_codes}: its predictions would be mapped to the "
            f"wrong classes. Refit in {model_dir} (`python -m i2dl train` with the run's "
            "overrides and resume=never)"
        )
    return classifier, info


def check_binding(
    model_dir: Path, ckpt: Path, store: Path, state: dict[str, Any] | None
) -> None:
    """Check that a checkpoint and a store are the ones ``fit`` recorded in ``fit_state.json``.

    Done before anything is loaded (a joblib file is a pickle): the checkpoint's SHA-256
    (:func:`i2dl.io.layout.checkpoint_problem`), the store named by ``model.yaml`` against
    the store digest recorded at fit time, and the store's metadata (attributes:
    normalisation statistics, class codes and names) against its manifest.

    Raises:
        StoreError: the checkpoint was replaced after the fit; ``model.yaml`` names
            another store than the one the model was fitted on; the store's attributes
            were edited. The message names the files, expected and found, and the fix.
    """
    if state is None:
        log.warning("%s has no %s: cannot check that %s and the store %s are the fit's",
                    model_dir, FIT_STATE, ckpt, store)
        return
    problem = checkpoint_problem(model_dir, ckpt, state)
    if problem:
        raise StoreError(
            f"checkpoint {ckpt} is not the one fit wrote in {model_dir}: {problem}. Delete "
            f"{model_dir}/checkpoints (and {FIT_STATE}) and rerun `python -m i2dl train` "
            "with the run's overrides, or rerun it with resume=never to refit"
        )
    recorded = state.get("store_digest")
    if recorded is not None:
        found = store_digest(store)  # raises a StoreError naming the store if it has none
        if found != recorded:
            raise StoreError(
                f"{model_dir / MODEL_SPEC} names the sample store {store} (digest {found}), "
                f"but the model was fitted on the store {state.get('store')} (digest "
                f"{recorded}, in {model_dir / FIT_STATE}): scoring or mapping with another "
                "store's pixels, statistics or classes would be wrong. Set `store:` in "
                f"{MODEL_SPEC} back to {state.get('store')}, or refit with "
                "`python -m i2dl train` and the run's overrides"
            )
    try:
        check_manifest(store, data=False)  # quick: the attributes, not the chunks
    except StoreError as exc:
        raise StoreError(
            f"{exc}. Rebuild it with `python -m i2dl prepare` (the run's overrides and "
            "store.rebuild=true), then refit"
        ) from None


#: First module name a ``_target_`` of a saved ``model.yaml`` may start with; checked on
#: the text, before anything is imported.
ALLOWED_TARGET_ROOTS = ("models", "sklearn", "torch")


def _allowed(obj: Any) -> bool:
    """True for what a saved model may build.

    That is: this project's model classes (and its LR schedule factories), scikit-learn
    estimators, torch optimisers and LR schedulers.
    """
    import sklearn.base
    import torch

    module = str(getattr(obj, "__module__", "") or "")
    if inspect.isclass(obj):
        if module == "models" or module.startswith("models."):
            return True
        if module.startswith("sklearn."):
            return issubclass(obj, sklearn.base.BaseEstimator)
        if module.startswith("torch.optim"):
            return issubclass(obj, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler))
        return False
    return inspect.isfunction(obj) and module == "models.schedule"


def _locate(target: str) -> Any:
    """The object a dotted ``_target_`` names (longest importable module, then attributes).

    Raises:
        ImportError, AttributeError: nothing of that name.
    """
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module {parts[0]!r}")


def check_model_targets(node: Any, source: str | Path, where: str = "model") -> None:
    """Refuse a model spec that would build anything but a model: a run folder is data.

    Every ``_target_`` at any depth (``_recursive_`` or not, in lists too) must name a
    class of this project's ``models`` package (``models.SITSClassifier``,
    ``models.SklearnClassifier``, encoders, heads, augmentation), a scikit-learn
    estimator (``sklearn.*``, a ``BaseEstimator``), a torch optimiser or LR scheduler
    (``torch.optim.*``), or an LR schedule factory of ``models.schedule``. The dotted
    name is checked before anything is imported, and the object it names after.

    Args:
        node: the ``model`` node of ``model.yaml``, resolved to plain dicts and lists.
        source: the file, named in errors.
        where: the node's path, named in errors.

    Raises:
        UnsafeModelSpecError: a ``_target_`` outside that list (file, node and target
            named), or a ``_target_`` that is not a dotted name.
    """
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            text = str(target)
            root = text.split(".")[0]
            obj: Any = None
            if root in ALLOWED_TARGET_ROOTS and all(p.isidentifier() for p in text.split(".")):
                try:
                    obj = _locate(text)
                except (ImportError, AttributeError):
                    obj = None
            if obj is None or not _allowed(obj):
                raise UnsafeModelSpecError(
                    f"{source}: {where}._target_ = {text!r} is not allowed; a saved model may "
                    "only build i2dl model classes (models.*), scikit-learn estimators "
                    "(sklearn.*) and torch optimisers / LR schedulers (torch.optim.*). A run "
                    "folder is data, not code: refit the model, and load only run folders "
                    "you trust"
                )
        for key, value in node.items():
            check_model_targets(value, source, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_model_targets(value, source, f"{where}[{i}]")
