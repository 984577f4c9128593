"""Autocontext on Slovenia: superpixel class proportions fed back as channels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import zarr

from i2dl.builders.autocontext import class_proportions, out_of_fold_codes
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
    # learn pixels: counted with their out-of-fold class, or not counted at all
    rows, cols = np.nonzero(seg == 3)
    rows, cols = rows[:4], cols[:4]
    new = np.full(4, 9)
    over = class_proportions(tmp_path / "s.tif", tmp_path / "c.tif", [2, 5, 9],
                             tmp_path / "o.tif", chunk_size=8, override=(rows, cols, new))
    excl = class_proportions(tmp_path / "s.tif", tmp_path / "c.tif", [2, 5, 9],
                             tmp_path / "e.tif", chunk_size=8, exclude=(rows, cols))
    cls_o, cls_e = cls.copy(), cls.copy()
    cls_o[rows, cols] = 9
    cls_e[rows, cols] = 0
    for path, ref in ((over, cls_o), (excl, cls_e)):
        with rasterio.open(path) as src:
            got = src.read()
        mapped = ref[(seg == 3) & (ref > 0)]
        for k, code in enumerate((2, 5, 9)):
            np.testing.assert_allclose(got[k][seg == 3], (mapped == code).mean(), rtol=1e-6)


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
    assert summary["autocontext"]["learn_context"] == "out_of_fold"  # rf: auto -> out_of_fold


def test_out_of_fold_predictions_are_not_in_sample(make_cfg, slovenia_dir, tmp_path) -> None:
    """A forest memorises its learn pixels; out-of-fold predictions of them cannot."""
    from i2dl.samples.store import VAL, open_store, read_array, read_info
    from i2dl.stages import train
    from i2dl.training.build import DataDims, build_classifier

    cfg = make_cfg("+experiment=rf", *FAST)
    summary = train.run(cfg)
    store = summary["store"]
    rows, cols, oof = out_of_fold_codes(cfg.model, store, n_folds=3, seed=0)
    group, info = open_store(store), read_info(store)
    fitted = read_array(group, "split") != VAL
    truth = read_array(group, "code")[fitted]
    np.testing.assert_array_equal(rows, read_array(group, "row")[fitted])
    np.testing.assert_array_equal(cols, read_array(group, "col")[fitted])
    model = build_classifier(cfg.model, DataDims.of(info))
    mask = read_array(group, "mask")[fitted]
    x = info.normalise(read_array(group, "X")[fitted], mask)
    days = np.broadcast_to(info.days, mask.shape)
    model.fit(x, days, mask, np.searchsorted(info.class_codes, truth))
    in_sample = np.asarray(info.class_codes)[
        np.asarray(model.predict_proba(x, days, mask)).argmax(axis=1)]
    acc_in, acc_oof = (in_sample == truth).mean(), (oof == truth).mean()
    assert acc_in > 0.97
    assert acc_oof < acc_in - 0.1  # not in-sample
    assert acc_oof > 1.5 / info.n_classes  # but a real model, better than chance


def test_autocontext_with_a_deep_model(make_cfg, slovenia_dir, tmp_path) -> None:
    """Deep models: learn pixels left out of the counts, context as static channels."""
    import yaml

    from i2dl.stages import train
    from tests.conftest import SMALL_LTAE

    summary = train.run(make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE,
                                 "enable_autocontext=true", "autocontext.n_segments=150"))
    assert summary["autocontext"]["learn_context"] == "exclude"
    spec = yaml.safe_load((tmp_path / "run" / "iteration_2" / "model.yaml").read_text())
    k = summary["n_classes"]
    assert spec["static_channels"] == list(range(spec["in_channels"] - k, spec["in_channels"]))
    assert [h["iteration"] for h in summary["iterations"]] == [1, 2]
