"""Uncertainty maps and Olofsson et al. (2014) area-adjusted accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from i2dl.errors import ConfigError, InputDataError
from i2dl.maps.quality import (
    area_adjusted_accuracy,
    bayes_smooth,
    map_class_pixels,
    uncertainty,
    write_smoothed,
    write_uncertainty,
)

# Olofsson et al. (2014), section 5 example: strata = map classes deforestation, forest
# gain, stable forest, stable non-forest; rows = map class, columns = reference class
PAPER_COUNTS = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
PAPER_PIXELS = np.array([200_000, 150_000, 3_200_000, 6_450_000])


def test_uncertainty_known_answers() -> None:
    proba = np.array([[1.0, 1 / 3, 0.5], [0.0, 1 / 3, 0.3], [0.0, 1 / 3, 0.2]])  # (K=3, 3 px)
    ent = uncertainty(proba, "entropy")
    np.testing.assert_allclose(ent, [0.0, math.log(3),
                                     -(0.5 * math.log(0.5) + 0.3 * math.log(0.3)
                                       + 0.2 * math.log(0.2))], rtol=1e-6)
    np.testing.assert_allclose(uncertainty(proba, "margin"), [0.0, 1.0, 0.8], rtol=1e-6)
    np.testing.assert_allclose(uncertainty(proba, "least"), [0.0, 2 / 3, 0.5], rtol=1e-6)
    with pytest.raises(ConfigError, match="entropy"):
        uncertainty(proba, "variance")


def test_uncertainty_maps_by_windows_equal_the_whole(tmp_path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.random((4, 19, 23)).astype(np.float32)
    proba = raw / raw.sum(axis=0)
    proba[:, 0, :5] = 0  # nodata
    path = tmp_path / "proba.tif"
    with rasterio.open(path, "w", driver="GTiff", width=23, height=19, count=4,
                       dtype="float32", crs="EPSG:32633",
                       transform=from_origin(0, 190, 10, 10)) as dst:
        dst.write(proba)
    small = write_uncertainty(path, tmp_path / "a", ["entropy", "margin"], chunk_size=4)
    whole = write_uncertainty(path, tmp_path / "b", ["entropy", "margin"], chunk_size=1024)
    for kind in ("entropy", "margin"):
        with rasterio.open(small[kind]) as a, rasterio.open(whole[kind]) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            got = a.read(1)
        want = uncertainty(proba, kind)
        want[0, :5] = -1
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_olofsson_worked_example() -> None:
    table, overall = area_adjusted_accuracy(PAPER_COUNTS, PAPER_PIXELS)
    # the paper's figures (rounded as printed): OA 0.95, deforestation user's 0.88 and
    # producer's 0.75, deforestation area 235,086 pixels
    assert round(overall["oa"], 2) == 0.95
    assert round(table["users_accuracy"][0], 2) == 0.88
    assert round(table["producers_accuracy"][0], 2) == 0.75
    assert round(table["area"][0]) == 235_086
    # the same estimators worked by hand, one scalar at a time (eq. 1-10)
    total = PAPER_PIXELS.sum()
    w = PAPER_PIXELS / total
    n_i = PAPER_COUNTS.sum(axis=1)
    for j in range(4):
        p_j = sum(w[i] * PAPER_COUNTS[i, j] / n_i[i] for i in range(4))
        var = sum(w[i] ** 2 * (PAPER_COUNTS[i, j] / n_i[i]) * (1 - PAPER_COUNTS[i, j] / n_i[i])
                  / (n_i[i] - 1) for i in range(4))
        assert table["area"][j] == pytest.approx(p_j * total)
        assert table["area_ci95"][j] == pytest.approx(1.96 * math.sqrt(var) * total)
        assert table["producers_accuracy"][j] == pytest.approx(
            w[j] * PAPER_COUNTS[j, j] / n_i[j] / p_j)
    oa = sum(w[i] * PAPER_COUNTS[i, i] / n_i[i] for i in range(4))
    assert overall["oa"] == pytest.approx(oa)
    u = PAPER_COUNTS.diagonal() / n_i
    assert overall["oa_se"] == pytest.approx(math.sqrt(sum(w**2 * u * (1 - u) / (n_i - 1))))
    assert table["area"].sum() == pytest.approx(total)  # adjusted areas add up to the map


def test_olofsson_refuses_undersampled_classes() -> None:
    counts = PAPER_COUNTS.copy()
    counts[1] = [0, 1, 0, 0]
    with pytest.raises(InputDataError, match="fewer than 2"):
        area_adjusted_accuracy(counts, PAPER_PIXELS)


def test_map_class_pixels_by_windows(tmp_path) -> None:
    rng = np.random.default_rng(1)
    classif = rng.choice([0, 1, 3, 7], size=(33, 41)).astype(np.uint8)
    path = tmp_path / "classif.tif"
    with rasterio.open(path, "w", driver="GTiff", width=41, height=33, count=1, dtype="uint8",
                       nodata=0) as dst:
        dst.write(classif[None])
    got = map_class_pixels(path, [1, 3, 5, 7], chunk_size=8)
    assert got.tolist() == [int((classif == c).sum()) for c in (1, 3, 5, 7)]


def test_train_writes_area_adjusted_report_and_uncertainty(make_cfg, tiny_dataset, tmp_path):
    import json

    import pandas as pd

    from i2dl.stages import train
    from tests.conftest import FAST

    cfg = make_cfg(*tiny_dataset["overrides"], *FAST, "+experiment=rf", "infer.write_proba=true",
                   "infer.uncertainty=[entropy,least]", "infer.smoothing.enabled=true",
                   "infer.smoothing.window_size=3", "infer.chunk_size=8")
    summary = train.run(cfg)
    run = tmp_path / "run"
    table = pd.read_csv(run / "report" / "area_adjusted.csv")
    with rasterio.open(run / "maps" / "classif.tif") as src:
        classif = src.read(1)
    mapped_ha = (classif > 0).sum() * 10 * 10 / 1e4  # 10 m pixels
    assert set(table["area_unit"]) == {"ha"}
    assert table["map_area"].sum() == pytest.approx(mapped_ha)
    assert table["area"].sum() == pytest.approx(mapped_ha)
    # counts = val confusion matrix transposed (rows = map class)
    cm = pd.read_csv(run / "report" / "confusion_matrix.csv", index_col=0).to_numpy()
    assert table["n_samples"].tolist() == cm.sum(axis=0).tolist()
    assert json.loads((run / "summary.json").read_text())["area_adjusted"]["oa"] == \
        pytest.approx(summary["area_adjusted"]["oa"])
    with rasterio.open(run / "maps" / "proba.tif") as src:
        proba = src.read()
    for kind in ("entropy", "least"):
        with rasterio.open(run / "maps" / f"uncertainty_{kind}.tif") as src:
            got = src.read(1)
        has = classif > 0
        np.testing.assert_allclose(got[has], uncertainty(proba, kind)[has], rtol=1e-5)
    with rasterio.open(run / "maps" / "proba_smooth.tif") as src:
        np.testing.assert_array_equal(src.read(), bayes_smooth(proba, 3, 20.0))


def test_uncertainty_needs_the_probability_map(make_cfg, tiny_dataset):
    from i2dl.stages import infer

    cfg = make_cfg(*tiny_dataset["overrides"], "infer.uncertainty=[margin]")
    with pytest.raises(ConfigError, match="write_proba"):
        infer.run(cfg)


def test_smoothing_of_a_constant_cube_is_the_identity() -> None:
    proba = np.empty((3, 12, 15))
    proba[:] = np.array([0.6, 0.3, 0.1])[:, None, None]
    np.testing.assert_allclose(bayes_smooth(proba, 5, 20.0), proba, rtol=1e-6)


def test_smoothing_corrects_an_isolated_pixel() -> None:
    proba = np.empty((2, 15, 15))
    proba[0], proba[1] = 0.8, 0.2
    proba[:, 7, 7] = [0.3, 0.7]  # one noisy pixel in a uniform field of class 0
    out = bayes_smooth(proba, 5, 20.0)
    assert out[:, 7, 7].argmax() == 0 and proba[:, 7, 7].argmax() == 1
    assert out[:, 0, 0].argmax() == 0  # the field keeps its class
    np.testing.assert_allclose(out.sum(axis=0), 1, rtol=1e-5)
    # a small smoothness keeps the pixel's own evidence
    assert bayes_smooth(proba, 5, 1e-3)[:, 7, 7].argmax() == 1
    with pytest.raises(ConfigError, match="odd"):
        bayes_smooth(proba, 4)


def test_smoothing_by_windows_equals_the_whole_map(tmp_path) -> None:
    rng = np.random.default_rng(2)
    raw = rng.random((3, 29, 31)).astype(np.float32)
    proba = raw / raw.sum(axis=0)
    proba[:, 3:6, 4:9] = 0  # nodata: left out of the neighbourhoods
    path = tmp_path / "proba.tif"
    with rasterio.open(path, "w", driver="GTiff", width=31, height=29, count=3,
                       dtype="float32", crs="EPSG:32633",
                       transform=from_origin(0, 290, 10, 10)) as dst:
        dst.write(proba)
    chunked = write_smoothed(path, tmp_path / "a", [2, 5, 9], 5, 10.0, chunk_size=8)
    whole = bayes_smooth(proba, 5, 10.0)
    with rasterio.open(chunked["proba"]) as src:
        got = src.read()
    np.testing.assert_array_equal(got, whole)  # no seam: bit-identical
    with rasterio.open(chunked["classif"]) as src:
        labels = src.read(1)
    want = np.where((whole > 0).any(axis=0), np.array([2, 5, 9])[whole.argmax(axis=0)], 0)
    np.testing.assert_array_equal(labels, want)
    assert labels[4, 5] == 0
