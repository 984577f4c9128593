"""Pictures a user looks at first: the map preview and the learning curves.

Both are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
backend change) and written atomically.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from rasterio.enums import Resampling
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from i2dl.io.files import write_bytes_atomic

log = logging.getLogger(__name__)


def _png(fig) -> bytes:  # noqa: ANN001 - a matplotlib Figure
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_map_preview(
    classif_path: str | Path,
    png_path: str | Path,
    class_codes: Sequence[int],
    class_names: Sequence[str],
    max_side: int = 1200,
) -> Path:
    """Draw a classification map with a legend.

    Args:
        classif_path: single-band GeoTIFF of class codes, nodata 0.
        png_path: output PNG (written atomically; its folder is created).
        class_codes: the K class codes, legend order.
        class_names: their K names, same order.
        max_side: the map is read decimated (nearest neighbour) so that its longer side
            is at most this many pixels.

    Returns:
        ``png_path``.
    """
    with rasterio.open(classif_path) as src:
        scale = max(1.0, max(src.width, src.height) / max_side)
        shape = (max(1, int(src.height / scale)), max(1, int(src.width / scale)))
        codes_img = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    k = len(class_codes)
    palette = colormaps["tab20" if k > 10 else "tab10"].colors  # type: ignore[attr-defined]
    colours = [palette[i % len(palette)] for i in range(k)]
    index = np.full(codes_img.shape, -1, dtype=np.int64)
    for i, code in enumerate(class_codes):
        index[codes_img == code] = i
    masked = np.ma.masked_less(index, 0)
    cmap = ListedColormap(colours).with_extremes(bad="white")
    aspect = shape[1] / shape[0]
    fig = Figure(figsize=(min(6.0 * aspect, 12.0) + 3.0, 6.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(masked, cmap=cmap, vmin=0, vmax=max(k - 1, 1), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(Path(classif_path).name)
    handles = [Patch(color=c, label=f"{code} {name}") for c, code, name in
               zip(colours, class_codes, class_names, strict=True)]
    handles.append(Patch(facecolor="white", edgecolor="grey", label="0 nodata"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return write_bytes_atomic(png_path, _png(fig))


def write_learning_curves(tb_dir: str | Path, png_path: str | Path) -> Path | None:
    """Plot the per-epoch curves of a TensorBoard run: loss, OA, kappa, macro F1.

    Args:
        tb_dir: folder of the TensorBoard event files (``<run>/tb``).
        png_path: output PNG (written atomically; its folder is created).

    Returns:
        ``png_path``, or None when the folder holds no epoch scalars (nothing written).
    """
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    if "epoch" not in tags:
        return None
    # Lightning logs the epoch number at every logging step: map step -> epoch
    step_epoch = {e.step: int(e.value) for e in acc.Scalars("epoch")}
    metrics = ("loss", "oa", "kappa", "fscore")
    fig = Figure(figsize=(11, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    drawn = False
    for ax, metric in zip(axes, metrics, strict=True):
        for split, style in (("learn", "-"), ("selection", "-o")):
            tag = f"{split}/{metric}"
            if tag not in tags:
                continue
            events = acc.Scalars(tag)
            epochs = [step_epoch.get(e.step, e.step) for e in events]
            ax.plot(epochs, [e.value for e in events], style, markersize=3, label=split)
            drawn = True
        ax.set_title({"fscore": "macro F1", "oa": "overall accuracy"}.get(metric, metric))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if not drawn:
        return None
    return write_bytes_atomic(png_path, _png(fig))
