"""Diagnosis of the LTAE (issue 20): learn vs selection curves, attention, reference L-TAE.

For each data config, on the sample store of seed 0 (the same learn / selection / val split
for every variant), trains with the project's own Lightning loop
(:func:`i2dl.training.loops.fit_network`: checkpoint selection and early stopping on the
selection split):

- ``ltae``: i2dl's LTAE as configured (``configs/model/ltae.yaml``), plus any overrides;
- ``ltae+mlp``: the same with the per-date input MLP ``[32, 64, 128]`` (sits' pixel encoder);
- ``reference``: the L-TAE written after Garnot & Landrieu's code
  (``scripts/bench/bench_fit.py``: ``Conv1d`` projection, ``LayerNorm((d_model, T))`` over
  the whole series, same heads, keys, MLP and LayerNorm), as the encoder of the same
  :class:`models.SITSClassifier` with the same head and optimiser.

Prints one JSON line per variant (best epoch, learn and selection OA at that epoch, val OA /
kappa / macro F1, epochs run, seconds) and writes ``OUT/<data>/curves.png`` (learn and
selection OA per epoch) and ``OUT/<data>/attention.png`` (mean attention over dates per
class, i2dl's LTAE on the val pixels).

Usage: python scripts/diagnose_ltae.py [--data ucr_crop campo_verde_mod13q1 slovenia_s2_ndvi]
    [--epochs 100] [--out outputs/diagnose] [hydra overrides for every variant ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor, nn

from i2dl.config import CONFIG_DIR, CONFIG_NAME, register_resolvers
from i2dl.evaluation.metrics import confusion_matrix, scores
from i2dl.samples.extract import prepare
from i2dl.samples.store import VAL, read_info
from i2dl.stages.evaluate import predict_split
from i2dl.training.build import DataDims, build_classifier
from i2dl.training.loops import fit_network
from models import LTAE, SITSClassifier

ROOT = Path(__file__).resolve().parents[1]
BATCH = {"ucr_crop": 256, "campo_verde_mod13q1": 128, "sits_matogrosso_mod13q1": 64,
         "formosat2_crops": 32}


def _reference_class() -> type[nn.Module]:
    spec = importlib.util.spec_from_file_location("bench_fit", ROOT / "scripts/bench/bench_fit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReferenceLTAE


class ReferenceEncoder(nn.Module):
    """The reference L-TAE up to its output LayerNorm: ``(B, T, C) -> (B, 128)``."""

    def __init__(self, in_channels: int, n_dates: int) -> None:
        super().__init__()
        self.ref = _reference_class()(in_channels, n_dates, n_classes=2)
        self.ref.decoder = nn.Identity()
        self.out_dim = 128

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, C), days (B, T), mask (B, T) bool -> (B, 128)."""
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype))
        return self.ref(x, days, mask)


def _cfg(data: str, out: Path, epochs: int, extra: list[str]) -> DictConfig:
    overrides = ["+experiment=ltae", f"data={data}", f"trainer.max_epochs={epochs}",
                 f"paths.output_dir={out}", f"paths.store_dir={out.parent / 'stores'}",
                 "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                 "cpu_threads=1", "seed=0"]
    if data in BATCH:
        overrides.append(f"datamodule.batch_size={BATCH[data]}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME, overrides=[*overrides, *extra])
    GlobalHydra.instance().clear()
    return cfg


def _curves(tb: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    return {t: [e.value for e in acc.Scalars(t)] for t in ("learn/oa", "selection/oa") if t in tags}


def _attention(model: SITSClassifier, store: Path) -> tuple[np.ndarray, list[str]]:
    """Mean attention (heads averaged) over dates per class on the val pixels: (K, T)."""
    from datamodules.pixel_series import StoreBlockDataset

    info = read_info(store)
    sums = np.zeros((info.n_classes, info.n_dates))
    counts = np.zeros(info.n_classes)
    codes = np.asarray(info.class_codes)
    model.eval()
    for batch in StoreBlockDataset(store, VAL, batch_size=4096):
        with torch.no_grad():
            model(batch["x"], batch["days"], batch["mask"])
        enc = model.encoder
        assert isinstance(enc, LTAE) and enc.attention_weights is not None
        att = enc.attention_weights.mean(1).numpy()  # (B, T)
        k = np.searchsorted(codes, batch["code"].numpy())
        np.add.at(sums, k, att)
        np.add.at(counts, k, 1)
    return sums / np.maximum(counts, 1)[:, None], list(info.class_names)


def _plot(out: Path, curves: dict[str, dict[str, list[float]]], att: np.ndarray,
          names: list[str], title: str) -> None:
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    for variant, c in curves.items():
        for tag, style in (("learn/oa", "-"), ("selection/oa", "--")):
            if tag in c:
                ax.plot(c[tag], style, label=f"{variant} {tag.split('/')[0]}")
    ax.set(xlabel="epoch", ylabel="OA", title=f"{title}: learn (-) vs selection (--)")
    ax.legend(fontsize=6)
    ax2 = fig.add_subplot(1, 2, 2)
    im = ax2.imshow(att, aspect="auto", cmap="viridis")
    ax2.set(xlabel="date index", ylabel="class", title="LTAE attention (val, heads mean)")
    ax2.set_yticks(range(len(names)), [n[:14] for n in names], fontsize=5)
    fig.colorbar(im, ax=ax2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def _score(model: Any, store: Path) -> dict[str, float]:
    info = read_info(store)
    t, p = predict_split(model, store, VAL)
    codes = np.asarray(info.class_codes)
    s = scores(confusion_matrix(np.searchsorted(codes, t), np.searchsorted(codes, p), len(codes)))
    return {"oa": float(s.oa or 0), "kappa": float(s.kappa or 0),
            "f1_macro": float(s.f1_macro or 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+",
                        default=["ucr_crop", "campo_verde_mod13q1", "slovenia_s2_ndvi"])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("outputs/diagnose"))
    args, extra = parser.parse_known_args()
    register_resolvers()
    torch.set_num_threads(1)
    for data in args.data:
        curves: dict[str, dict[str, list[float]]] = {}
        att, names = np.zeros((1, 1)), [""]
        for variant in ("ltae", "ltae+mlp", "reference"):
            out = args.out / data / variant
            more = ["+model.encoder.input_mlp=[32,64,128]"] if variant == "ltae+mlp" else []
            cfg = _cfg(data, out, args.epochs, [*extra, *more])
            store = prepare(cfg)
            info = read_info(store)
            dims = DataDims.of(info)
            L.seed_everything(0, workers=True)
            model = build_classifier(cfg.model, dims)
            assert isinstance(model, SITSClassifier)
            if variant == "reference":
                enc = ReferenceEncoder(info.n_channels, info.n_dates)
                model = SITSClassifier(
                    enc, instantiate(cfg.model.head)(in_features=128, n_classes=info.n_classes),
                    info.n_classes, optimizer=instantiate(cfg.model.optimizer),
                    model_selection_criterion=cfg.model.model_selection_criterion)
            dm = instantiate(cfg.datamodule, store_path=str(store))
            start = time.perf_counter()
            best = fit_network(cfg, model, dm, out, None, own_folder=True)
            seconds = time.perf_counter() - start
            model.load_weights(best)
            epoch = int(torch.load(best, weights_only=True)["epoch"])
            c = _curves(out / "tb")
            curves[variant] = c
            row = {"data": data, "variant": variant, "best_epoch": epoch + 1,
                   "epochs_run": len(c.get("learn/oa", [])), "seconds": round(seconds, 1),
                   "learn_oa_at_best": round(c["learn/oa"][epoch], 4),
                   "selection_oa_at_best": round(c["selection/oa"][epoch], 4),
                   **{f"val_{k}": round(v, 4) for k, v in _score(model, store).items()}}
            print(json.dumps(row), flush=True)
            if variant == "ltae":
                att, names = _attention(model, store)
        _plot(args.out / data / "diagnosis.png", curves, att, names, data)


if __name__ == "__main__":
    main()
