"""Autocontext on Slovenia: superpixel class proportions fed back as channels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import zarr

from i2dl.autocontext import class_proportions
from tests.conftest import FAST


def test_class_proportions_equal_a_direct_count(tmp_path) -> None:
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 6, (23, 29)).astype(np.uint32)
    cls = rng.choice([0, 2, 5, 9], size=seg.shape).astype(np.uint8)
    prof = {"driver": "GTiff", "width": 29, "height": 23, "count": 1, "crs": "EPSG:32633",
            "transform": rasterio.transform.from_origin(0, 230, 10, 10)}
    with rasterio.open(tmp_path / "s.tif", "w", dtype="uint32", **prof) as d:
        d.write(seg[None])
    with rasterio.open(tmp_path / "c.tif", "w", dtype="uint8", nodata=0, **prof) as d:
        d.write(cls[None])
    out = class_proportions(tmp_path / "s.tif", tmp_path / "c.tif", [2, 5, 9],
                            tmp_path / "ctx.tif", chunk_size=8)
    with rasterio.open(out) as src:
        got = src.read()
    for s in range(1, 6):
        mapped = cls[(seg == s) & (cls > 0)]
        for k, code in enumerate((2, 5, 9)):
            want = (mapped == code).mean() if len(mapped) else 0.0
            np.testing.assert_allclose(got[k][seg == s], want, rtol=1e-6)
    assert (got[:, seg == 0] == 0).all()


def test_autocontext_on_slovenia(make_cfg, slovenia_dir, tmp_path) -> None:
    from i2dl.stages import train

    summary = train.run(make_cfg("+experiment=rf", *FAST, "enable_autocontext=true",
                                 "autocontext_iterations=2", "autocontext.n_segments=150"))
    run = tmp_path / "run"
    history = json.loads((run / "autocontext.json").read_text())
    assert [h["iteration"] for h in history] == [1, 2]
    assert summary["iterations"] == history
    for h in history:
        assert 0 <= h["oa"] <= 1
    s1 = json.loads((run / "iteration_1" / "summary.json").read_text())
    s2 = json.loads((run / "iteration_2" / "summary.json").read_text())
    k = s1["n_classes"]
    g1, g2 = (zarr.open_group(s["store"], mode="r") for s in (s1, s2))
    # the same samples and split; iteration 2 has K more channels, the context
    np.testing.assert_array_equal(g1["split"][:], g2["split"][:])
    np.testing.assert_array_equal(g1["row"][:], g2["row"][:])
    assert g2["X"].shape[2] == g1["X"].shape[2] + k
    assert s2["n_val"] == s1["n_val"] and s2["oa"] == pytest.approx(history[1]["oa"])
    with rasterio.open(run / "context" / "iteration_2" / "ctx" / "context.tif") as src:
        assert src.count == k
        total = src.read().sum(axis=0)
    assert np.allclose(total[total > 0], 1.0, atol=1e-5)  # proportions sum to 1
    assert (run / "iteration_2" / "maps" / "classif.tif").is_file()
