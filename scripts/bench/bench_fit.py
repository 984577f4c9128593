"""Benchmark: LTAE training throughput of i2dl against a plain reference LTAE.

Both models get the same random batches (``--batch`` pixels, ``--dates`` x ``--bands``,
10 classes, ~20 % of the observations masked) on ``--device`` and run ``--steps`` full
training steps (forward, cross-entropy, backward, AdamW step) after ``--warmup`` steps:

- ``i2dl``: :class:`models.SITSClassifier` built from ``configs/model/ltae.yaml`` (the
  default LTAE, d_model 256, 16 heads, and its classifier head); the batches are already
  on the device for both (the store's streaming cost is measured separately: 2 % of an
  epoch, docs/benchmarks.md);
- ``reference``: the L-TAE of Garnot & Landrieu (2020), "Lightweight Temporal
  Self-Attention for Classifying Satellite Images Time Series" (AALTD, arXiv:2007.00586),
  written plainly below after the paper and its public code: a 1x1 convolution and a
  LayerNorm over (d_model, T), a sinusoidal encoding of the day of year (period 1000)
  repeated over the heads, one learnt master query per head, keys from a linear layer,
  values = the input split over the heads, an MLP (256 -> 128) with BatchNorm, a
  LayerNorm, and the paper's decoder MLP to the classes; masked dates get no attention.

Prints JSON lines: samples per second of each and the ratio i2dl / reference (issue 11
asks for >= 2 on a GPU with the loader defaults). With ``--profile DIR``, after the timed
steps, ``--warmup`` more steps of each model run under :mod:`torch.profiler` (CPU and, on
CUDA, device activity): ``DIR/<model>_ops.txt`` lists the operators by self time on the
device (CPU time on the CPU) and ``DIR/<model>_trace.json`` is the Chrome / Perfetto trace
(issue 23: where the 0.90x training step of the GPU goes).

Usage: python scripts/bench/bench_fit.py [--device cpu|cuda] [--batch 256] [--dates 24]
    [--bands 10] [--steps 30] [--warmup 5] [--threads N] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from i2dl.training.build import DataDims, build_classifier

ROOT = Path(__file__).resolve().parents[2]


class ReferenceLTAE(nn.Module):
    """The L-TAE encoder + decoder as in Garnot & Landrieu (2020), for comparison only."""

    def __init__(self, in_channels: int, n_dates: int, n_classes: int, d_model: int = 256,
                 n_head: int = 16, d_k: int = 8, mlp: tuple[int, int] = (256, 128),
                 dropout: float = 0.2, period: float = 1000.0) -> None:
        super().__init__()
        self.n_head, self.d_k, self.d_model, self.period = n_head, d_k, d_model, period
        self.inconv = nn.Conv1d(in_channels, d_model, 1)
        self.in_norm = nn.LayerNorm((d_model, n_dates))
        self.query = nn.Parameter(torch.randn(n_head, d_k) * math.sqrt(2.0 / d_k))
        self.fc_k = nn.Linear(d_model, n_head * d_k)
        self.mlp = nn.Sequential(nn.Linear(mlp[0], mlp[1]), nn.BatchNorm1d(mlp[1]), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(mlp[1])
        self.decoder = nn.Sequential(
            nn.Linear(mlp[1], 64), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, n_classes))

    def positions(self, days: Tensor) -> Tensor:
        """(B, T) days -> (B, T, d_model) sinusoids, d_model // n_head per head, repeated."""
        d = self.d_model // self.n_head
        i = torch.arange(d, device=days.device)
        angle = days.float()[..., None] / self.period ** (2 * (i // 2) / d)
        table = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
        return table.repeat(1, 1, self.n_head)

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, C), days (B, T), mask (B, T) bool -> logits (B, K)."""
        b, t, _ = x.shape
        e = self.in_norm(self.inconv(x.transpose(1, 2))).transpose(1, 2)  # (B, T, D)
        e = e + self.positions(days)
        k = self.fc_k(e).view(b, t, self.n_head, self.d_k).permute(2, 0, 1, 3)  # (H, B, T, dk)
        scores = (k @ self.query[:, None, :, None]).squeeze(-1) / math.sqrt(self.d_k)
        scores = scores.masked_fill(~mask[None], float("-inf"))
        attn = torch.softmax(scores, dim=-1)  # (H, B, T)
        v = e.view(b, t, self.n_head, -1).permute(2, 0, 1, 3)  # (H, B, T, D/H)
        out = (attn[..., None] * v).sum(dim=2).permute(1, 0, 2).reshape(b, -1)
        return self.decoder(self.out_norm(self.dropout(self.mlp(out))))


def _batches(n: int, batch: int, dates: int, bands: int, k: int, device: torch.device,
             ) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        mask = torch.rand(batch, dates, generator=g) > 0.2
        mask[:, 0] = True
        out.append({
            "x": torch.randn(batch, dates, bands, generator=g).to(device),
            "days": (torch.arange(dates) * 5).expand(batch, -1).contiguous().to(device),
            "mask": mask.to(device),
            "y": torch.randint(0, k, (batch,), generator=g).to(device),
        })
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Run the benchmark and print JSON lines."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--bands", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="also profile --warmup steps of each model into DIR")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    k = 10
    torch.manual_seed(0)
    cfg = OmegaConf.load(ROOT / "configs/model/ltae.yaml")
    assert isinstance(cfg, DictConfig)
    ours = build_classifier(cfg, DataDims(args.bands, args.dates, k)).to(device)
    ref = ReferenceLTAE(args.bands, args.dates, k).to(device)
    batches = _batches(args.warmup + args.steps, args.batch, args.dates, args.bands, k, device)
    use_amp = device.type == "cuda"
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
               platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "batch": args.batch, "dates": args.dates,
               "bands": args.bands, "amp_bf16": use_amp}

    def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, Tensor],
                   ) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = ce(model(batch["x"], batch["days"], batch["mask"]), batch["y"])
        loss.backward()
        opt.step()

    def run(name: str, model: nn.Module) -> float:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        model.train()
        for i, batch in enumerate(batches):
            if i == args.warmup:
                _sync(device)
                t0 = time.perf_counter()
            train_step(model, opt, batch)
        _sync(device)
        rate = args.steps * args.batch / (time.perf_counter() - t0)
        if args.profile is not None:
            profile(name, model, opt)
        return rate

    def profile(name: str, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for batch in batches[:args.warmup]:
                train_step(model, opt, batch)
            _sync(device)
        args.profile.mkdir(parents=True, exist_ok=True)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        (args.profile / f"{name}_ops.txt").write_text(
            prof.key_averages().table(sort_by=key, row_limit=40))
        prof.export_chrome_trace(str(args.profile / f"{name}_trace.json"))

    ce = nn.CrossEntropyLoss()
    rates = {"reference": run("reference", ref), "i2dl": run("i2dl", ours)}
    for name, rate in rates.items():
        print(json.dumps({"model": name, "samples_per_s": round(rate),
                          "ratio_to_reference": round(rate / rates["reference"], 3), **machine}))


if __name__ == "__main__":
    main()
