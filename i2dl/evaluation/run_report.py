"""Classification accuracy report: confusion matrix, OA, kappa, per-class scores.

The report follows the conventions of iota2's validation step (iota2 documentation,
"Classification accuracy" outputs ``RESULTS.txt`` / ``Confusion_Matrix_*.png``):
rows of the confusion matrix are the reference (ground truth) classes, columns the
predicted classes, and classes are identified by their nomenclature CODE.

Metrics are computed by :mod:`i2dl.evaluation.metrics` (the one definition shared with checkpoint
selection and the multi-run aggregate) on class indices 0..K-1 obtained by mapping each
code to its position in ``class_codes``:

* OA (overall accuracy) = trace(C) / N;
* kappa = Cohen's kappa (Cohen 1960): (OA - p_e) / (1 - p_e) with
  p_e = sum_k rows_k * cols_k / N**2;
* per class k: precision = C[k,k] / sum_i C[i,k] (user's accuracy),
  recall = C[k,k] / sum_j C[k,j] (producer's accuracy),
  F1 = 2 precision recall / (precision + recall) = 2 TP / (2 TP + FP + FN).

Undefined values (zero denominators) and macro averages: see :func:`compute_metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from i2dl.errors import InputDataError
from i2dl.evaluation.metrics import confusion_matrix, scores
from i2dl.io import nomenclature as _nomenclature
from i2dl.io.files import write_bytes_atomic
from i2dl.io.layout import METRICS_JSON

log = logging.getLogger(__name__)

#: Decimals kept for the float metrics in reports.
METRIC_DECIMALS = 6

CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"


# --------------------------------------------------------------------------- inputs


def _as_code_array(values: Any, what: str) -> np.ndarray:
    """Validate a vector of class codes and return it as int64.

    Args:
        values: array-like (N,) of integer class codes (numpy array, list, CPU tensor).
            Float arrays are accepted when every value is a whole number.
        what: name of the argument, for the error messages.

    Returns:
        (N,) int64 array.

    Raises:
        InputDataError: not 1-D, not numeric, or holding non-integer values.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputDataError(
            f"{what} must be a 1-D array of class codes, got shape {arr.shape}; "
            "flatten it first (e.g. arr.ravel()) after removing no-data pixels"
        )
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise InputDataError(
            f"{what} must hold integer class codes, got dtype {arr.dtype}; convert "
            "it with .astype(int) (class names must first be mapped to their codes)"
        )
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputDataError(
                f"{what} holds {int(bad.sum())} non-integer value(s) (first: "
                f"{arr[first]!r} at position {first}); class codes must be whole "
                "numbers: drop NaN / no-data samples before computing the report"
            )
    return arr.astype(np.int64, copy=False)


def _check_class_codes(class_codes: Sequence[int]) -> list[int]:
    """Validate the ordered list of the K class codes of the model.

    Raises:
        InputDataError: empty, non-integer or duplicated codes.
    """
    try:
        codes = [int(c) for c in class_codes]
        whole = all(float(c) == int(c) for c in class_codes)
    except (TypeError, ValueError) as exc:
        raise InputDataError(
            f"class_codes must be a sequence of integer class codes, got "
            f"{class_codes!r} ({exc})"
        ) from None
    if not whole:
        raise InputDataError(
            f"class_codes must hold whole numbers, got {list(class_codes)!r}"
        )
    if not codes:
        raise InputDataError(
            "class_codes is empty; give the K class codes of the model's nomenclature"
        )
    dups = sorted({c for c in codes if codes.count(c) > 1})
    if dups:
        raise InputDataError(
            f"class_codes {codes} list code(s) {dups} more than once; each class "
            "of the model must appear once"
        )
    return codes


def _codes_to_indices(values: np.ndarray, codes: list[int], what: str) -> np.ndarray:
    """Map class codes to their index in ``codes``.

    Args:
        values: (N,) int64 class codes.
        codes: the K class codes; index k <-> codes[k].
        what: name of the argument, for the error messages.

    Returns:
        (N,) int64 indices in [0, K).

    Raises:
        InputDataError: a value is not one of ``codes`` (the message names the
            unknown codes and how many samples carry them).
    """
    table = np.asarray(codes, dtype=np.int64)
    order = np.argsort(table, kind="stable")
    sorted_codes = table[order]
    pos = np.searchsorted(sorted_codes, values)
    pos_clipped = np.minimum(pos, len(sorted_codes) - 1)
    known = sorted_codes[pos_clipped] == values
    if not known.all():
        unknown, counts = np.unique(values[~known], return_counts=True)
        listed = ", ".join(
            f"{int(c)} ({int(n)} samples)" for c, n in zip(unknown[:10], counts[:10], strict=True)
        )
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise InputDataError(
            f"{what} holds class code(s) not in class_codes {codes}: {listed}{more}; "
            "the model's nomenclature must list every code of the reference and of "
            "the predictions (remove no-data samples, or add the codes to the "
            "nomenclature and retrain)"
        )
    return order[pos_clipped]


def _resolve_names(
    codes: list[int], class_names: Sequence[str] | Mapping[int, str] | None
) -> list[str]:
    """Names of the K classes from a list of K names, a code->name mapping, or None.

    Raises:
        InputDataError: a list whose length is not K.
    """
    if class_names is None or isinstance(class_names, Mapping):
        return _nomenclature.class_names(codes, class_names)
    if isinstance(class_names, str):
        raise InputDataError(
            f"class_names must be a list of {len(codes)} names or a code->name "
            f"mapping, got the string {class_names!r}"
        )
    names = [str(n) for n in class_names]
    if len(names) != len(codes):
        raise InputDataError(
            f"class_names has {len(names)} names but class_codes has {len(codes)} "
            f"codes ({codes}); give one name per code, in the same order, or pass "
            "the code->name mapping from read_nomenclature"
        )
    return names


def _label(code: int, name: str) -> str:
    """Class label "code name" (just "code" when the name is the code)."""
    return str(code) if name == str(code) else f"{code} {name}"


def _round(x: float | None) -> float | None:
    """Python float rounded to METRIC_DECIMALS, None for None, NaN or inf."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return round(x, METRIC_DECIMALS)


# -------------------------------------------------------------------------- metrics


def _paired_codes(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and ``y_pred`` as (N,) int64 code arrays of one non-zero length.

    Raises:
        InputDataError: not integer codes, different lengths, or empty.
    """
    true_codes = _as_code_array(y_true, "y_true")
    pred_codes = _as_code_array(y_pred, "y_pred")
    if true_codes.shape != pred_codes.shape:
        raise InputDataError(
            f"y_true has {true_codes.shape[0]} samples but y_pred has "
            f"{pred_codes.shape[0]}; give one prediction per reference sample"
        )
    if true_codes.shape[0] == 0:
        raise InputDataError(
            "y_true and y_pred are empty; the accuracy report needs at least one "
            "validation sample (check the validation split and no-data masking)"
        )
    return true_codes, pred_codes


def compute_metrics(
    y_true: Any,
    y_pred: Any,
    class_codes: Sequence[int],
    class_names: Sequence[str] | Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Confusion matrix, OA, Cohen's kappa and per-class / macro scores.

    Computed by :func:`i2dl.evaluation.metrics.scores` on the indices of the codes in
    ``class_codes``; formulas in the module docstring. Float values are rounded to
    :data:`METRIC_DECIMALS` decimals.

    Conventions (decisions):

    * ``confusion_matrix[i][j]`` = number of samples of REFERENCE class
      ``class_codes[i]`` PREDICTED as ``class_codes[j]`` (rows = reference, columns =
      predicted, as iota2).
    * Per class, a value whose denominator is zero is undefined and reported as None,
      except precision of a class that has reference samples but is never predicted,
      which is 0.0 (the class is entirely missed). Thus: a class absent from both
      reference and prediction has precision, recall and F1 None; a class predicted
      but absent from the reference has precision 0.0, recall None and F1 0.0.
    * Macro averages (``precision_macro``, ``recall_macro``, ``f1_macro``) are the
      unweighted means over the classes PRESENT IN THE REFERENCE (support > 0) only,
      so classes of the nomenclature that the validation set does not contain do not
      change the score; wrong predictions of such classes are still counted, as
      errors of the reference classes (their recall). This differs from sklearn's
      default, which averages over all listed labels.
    * ``kappa`` is None when undefined (expected agreement p_e = 1, i.e. reference
      and prediction are both one single class).
    * A reference with a single class (e.g. the val split of a one-class table) gives
      ``kappa`` and the macro averages None (with one reference class kappa is 0 or
      undefined whatever the model, and a "macro" score is that class's alone), and an
      ``undefined`` entry that says why (also logged as a warning); ``oa`` is kept: it is
      the recall of that class.

    Args:
        y_true: (N,) reference class CODES (not indices), int array-like (numpy
            array, list, CPU tensor; floats holding whole numbers accepted).
        y_pred: (N,) predicted class CODES, same length.
        class_codes: the K class codes of the model's nomenclature, in model output
            order; fixes the order of the rows/columns and of ``classes``.
        class_names: K names in the order of ``class_codes``, or a code -> name
            mapping (e.g. from :func:`i2dl.io.nomenclature.read_nomenclature`), or
            None to name classes by their code.

    Returns:
        JSON-serialisable dict with keys ``n_samples`` (int), ``oa``, ``kappa``,
        ``precision_macro``, ``recall_macro``, ``f1_macro`` (float in [0, 1] or
        None; kappa in [-1, 1]), ``confusion_matrix`` (K lists of K ints) and
        ``classes``: K dicts ``{code, name, precision, recall, f1, support}``
        (support = number of reference samples, int); plus ``undefined`` (str) when the
        reference holds a single class.

    Raises:
        InputDataError: arrays not 1-D, of different lengths, empty, not integer
            codes; ``class_codes`` empty or duplicated; a code of ``y_true`` or
            ``y_pred`` not in ``class_codes``; ``class_names`` of the wrong length.
    """
    codes = _check_class_codes(class_codes)
    names = _resolve_names(codes, class_names)
    true_codes, pred_codes = _paired_codes(y_true, y_pred)
    n = int(true_codes.shape[0])
    k = len(codes)
    cm_np = confusion_matrix(
        _codes_to_indices(true_codes, codes, "y_true"),
        _codes_to_indices(pred_codes, codes, "y_pred"),
        k,
    )
    sc = scores(cm_np)
    classes: list[dict[str, Any]] = [
        {
            "code": code,
            "name": name,
            "precision": _round(sc.precision[i]),
            "recall": _round(sc.recall[i]),
            "f1": _round(sc.f1[i]),
            "support": sc.support[i],
        }
        for i, (code, name) in enumerate(zip(codes, names, strict=True))
    ]
    metrics: dict[str, Any] = {
        "n_samples": n,
        "oa": _round(sc.oa),
        "kappa": _round(sc.kappa),
        "precision_macro": _round(sc.precision_macro),
        "recall_macro": _round(sc.recall_macro),
        "f1_macro": _round(sc.f1_macro),
        "confusion_matrix": cm_np.tolist(),
        "classes": classes,
    }
    absent = [c["code"] for c in classes if c["support"] == 0]
    if absent:
        log.info(
            "classes %s have no reference sample: excluded from the macro averages",
            absent,
        )
    present = [c for c in classes if c["support"] > 0]
    if len(present) < 2:
        only = ", ".join(_label(c["code"], c["name"]) for c in present)
        metrics["undefined"] = (
            f"the reference holds a single class ({only}): kappa and the macro precision, "
            "recall and F1 are undefined (a one-class reference cannot measure agreement "
            "beyond chance), and OA is only that class's recall. Score on a validation set "
            "with at least two classes"
        )
        for key in ("kappa", "precision_macro", "recall_macro", "f1_macro"):
            metrics[key] = None
        log.warning("accuracy report: %s", metrics["undefined"])
    return metrics


# -------------------------------------------------------------------------- outputs


def confusion_csv(metrics: Mapping[str, Any]) -> bytes:
    """CSV text of the confusion matrix: header row and first column "code name"."""
    labels = [_label(c["code"], c["name"]) for c in metrics["classes"]]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["reference/predicted", *labels])
    for label, row in zip(labels, metrics["confusion_matrix"], strict=True):
        writer.writerow([label, *row])
    return buf.getvalue().encode("utf-8")


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _count_text(n: int) -> str:
    """Compact count for a heatmap cell (exact below 100 000)."""
    if n < 100_000:
        return str(n)
    if n < 10_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1e6:.0f}M"


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def confusion_png(metrics: Mapping[str, Any], title: str = "") -> bytes:
    """PNG heatmap of the row-normalised confusion matrix, raw counts annotated.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend
    change). Rows without reference samples are drawn light grey.
    """
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, cm / np.maximum(rows, 1), np.nan)
    labels = [_short(_label(c["code"], c["name"])) for c in metrics["classes"]]

    side = float(min(max(6.0, 0.6 * k + 3.5), 22.0))
    fig = Figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad="#e6e6e6")
    im = ax.imshow(norm, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cbar.set_label("fraction of the reference row (recall on the diagonal)")

    fontsize = 11 if k <= 6 else 9 if k <= 12 else 7
    for i in range(k):
        for j in range(k):
            v = norm[i, j]
            if cm[i, j] == 0:
                color = "#9a9a9a"
            else:
                color = "white" if (not np.isnan(v) and v > 0.55) else "black"
            ax.text(
                j, i, _count_text(int(cm[i, j])), ha="center", va="center",
                fontsize=fontsize, color=color,
            )
    ax.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels)
    ax.tick_params(labelsize=max(fontsize, 8))
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_xticks(np.arange(-0.5, k, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    summary = (
        f"OA = {_fmt(metrics['oa'])}   kappa = {_fmt(metrics['kappa'])}   "
        f"macro F1 = {_fmt(metrics['f1_macro'])}   (n = {metrics['n_samples']})"
    )
    ax.set_title(f"{title}\n{summary}" if title else summary)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(
    report_dir: str | Path,
    y_true: Any,
    y_pred: Any,
    class_codes: Sequence[int],
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    title: str = "",
) -> dict[str, Any]:
    """Compute the metrics and write the accuracy report files.

    Files written in ``report_dir`` (created with its parents if needed), each
    atomically (:func:`i2dl.io.files.write_bytes_atomic`); all
    contents are computed before the first file is written, so invalid inputs leave
    the directory untouched:

    * ``confusion_matrix.csv``: header row and first column hold the class labels
      ``"code name"``; integer counts, rows = reference, columns = predicted.
    * ``confusion_matrix.png``: heatmap of the row-normalised matrix (each cell =
      fraction of the reference row, recall on the diagonal), raw counts annotated,
      title with ``title``, OA, kappa and macro F1.
    * ``metrics.json``: the dict returned, indented by 2 (strict JSON: undefined
      values are null).

    Args:
        report_dir: output directory.
        y_true: (N,) reference class codes, as in :func:`compute_metrics`.
        y_pred: (N,) predicted class codes.
        class_codes: the K class codes of the model's nomenclature.
        class_names: K names, a code -> name mapping, or None.
        title: first line of the figure title (e.g. the run name); may be empty.

    Returns:
        The metrics dict of :func:`compute_metrics`.

    Raises:
        InputDataError: invalid inputs, see :func:`compute_metrics`.
        OSError: ``report_dir`` cannot be created or written.
    """
    metrics = compute_metrics(y_true, y_pred, class_codes, class_names)
    contents = {
        CONFUSION_CSV: confusion_csv(metrics),
        CONFUSION_PNG: confusion_png(metrics, title),
        METRICS_JSON: (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode(
            "utf-8"
        ),
    }
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        write_bytes_atomic(out / name, data)
    log.info("accuracy report written to %s:\n%s", out, format_metrics(metrics))
    return metrics


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Short multi-line text of a metrics dict, for logs.

    Args:
        metrics: dict from :func:`compute_metrics` (or ``metrics.json`` reloaded).

    Returns:
        Text: one summary line (OA, kappa, macro F1, n) then a per-class table
        (code, name, precision, recall, F1, support); undefined values shown as "-" (and
        "n/a" in the summary), with a last line saying why when ``undefined`` is set.
    """

    def num(x: float | None) -> str:
        return f"{'-':>9}" if x is None else f"{x:9.4f}"

    classes = metrics.get("classes", [])
    width = max([len("name"), *(len(str(c["name"])) for c in classes)])
    width = min(width, 30)
    lines = [
        f"OA {_fmt(metrics.get('oa'))}  kappa {_fmt(metrics.get('kappa'))}  "
        f"macro F1 {_fmt(metrics.get('f1_macro'))}  "
        f"(macro P {_fmt(metrics.get('precision_macro'))}, "
        f"macro R {_fmt(metrics.get('recall_macro'))}; "
        f"n = {metrics.get('n_samples')}, K = {len(classes)})",
        f"{'code':>6}  {'name':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} "
        f"{'support':>9}",
    ]
    for c in classes:
        lines.append(
            f"{c['code']:>6}  {_short(str(c['name']), width):<{width}} "
            f"{num(c['precision'])} {num(c['recall'])} {num(c['f1'])} "
            f"{c['support']:>9}"
        )
    if metrics.get("undefined"):
        lines.append(f"undefined: {metrics['undefined']}")
    return "\n".join(lines)
