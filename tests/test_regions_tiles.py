"""Eco-regions, several tiles and multi-run products on the Slovenia example."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import zarr
from rasterio.windows import Window
from shapely.geometry import box

from i2dl.maps.fusion import majority_vote
from i2dl.samples.store import VAL
from tests.conftest import FAST, SLOVENIA, SMALL_LTAE


def _halves(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Two regions, left and right half of the Slovenia grid, ids as strings "1", "2"."""
    with rasterio.open(SLOVENIA / "NDVI.tif") as src:
        left, bottom, right, top = src.bounds
        crs, transform, shape = src.crs, src.transform, src.shape
    mid = transform.c + transform.a * 50  # column 50
    gdf = gpd.GeoDataFrame(
        {"region": ["1", "2"]},
        geometry=[box(left, bottom, mid, top), box(mid, bottom, right, top)],
        crs=crs,
    )
    path = tmp_path / "regions.gpkg"
    gdf.to_file(path, driver="GPKG")
    expected = np.where(np.arange(shape[1])[None, :] < 50, 1, 2).repeat(shape[0], axis=0)
    return path, expected


def test_two_regions_two_models_merged_map(make_cfg, slovenia_dir: Path, tmp_path: Path) -> None:
    from i2dl.features.source import open_source
    from i2dl.maps.engine import classify_raster
    from i2dl.stages.train import run as run_train
    from i2dl.training.trained import load_models as load_run_models

    regions, region_of_pixel = _halves(tmp_path)
    cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, f"sampling.region_file={regions}",
                   "sampling.region_field=region")
    summary = run_train(cfg)
    run = tmp_path / "run"
    assert set(summary["best_checkpoint"]) == {"region_1", "region_2"}
    store = zarr.open_group(summary["store"], mode="r")
    pixel_region = region_of_pixel[store["row"][:], store["col"][:]]
    np.testing.assert_array_equal(store["region"][:], pixel_region)
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["n_samples"] == summary["n_val"]
    for r in (1, 2):
        sub = json.loads((run / "report" / f"region_{r}" / "metrics.json").read_text())
        in_val = (store["split"][:] == VAL) & (store["region"][:] == r)
        assert sub["n_samples"] == int(in_val.sum())
    # each model alone over the whole raster, then compare with the merged map
    models, info = load_run_models(run, "best")
    assert set(models) == {1, 2}
    alone = {}
    with open_source(cfg.data) as series:
        for r, model in models.items():
            res = classify_raster(series, info, model.predict_proba, tmp_path / f"alone_{r}",
                                  torch.device("cpu"), progress=False)
            with rasterio.open(res.classif) as src:
                alone[r] = src.read(1)
    with rasterio.open(run / "maps" / "classif.tif") as src:
        merged = src.read(1)
    for r in (1, 2):
        inside = region_of_pixel == r
        np.testing.assert_array_equal(merged[inside], alone[r][inside])
    differ = alone[1] != alone[2]
    assert differ.any(), (
        "the two region models predict the same map: the test cannot tell them apart"
    )

    # fusion at the boundary: within the buffer, the two models' probabilities averaged
    # with weights 1 - distance / buffer (distance in pixels to the other region)
    from omegaconf import open_dict

    from i2dl.stages import infer

    proba = {}
    with open_source(cfg.data) as series:
        pixel = abs(series.transform.a)
        for r, model in models.items():
            res = classify_raster(series, info, model.predict_proba, tmp_path / f"proba_{r}",
                                  torch.device("cpu"), write_proba=True, progress=False)
            with rasterio.open(res.proba) as src:
                proba[r] = src.read().astype(np.float64)  # (K, H, W)
    buffer_px = 4.5
    with open_dict(cfg):
        cfg.infer.boundary_fusion.enabled = True
        cfg.infer.boundary_fusion.buffer = buffer_px * pixel
        cfg.infer.chunk_size = 16  # windows cut the buffer: weights must not depend on it
    fused = infer.run(cfg)
    col = np.arange(region_of_pixel.shape[1])[None, :].repeat(region_of_pixel.shape[0], 0)
    w1 = np.where(col < 50, 1.0, np.clip(1 - (col - 49) / buffer_px, 0, 1))
    w2 = np.where(col >= 50, 1.0, np.clip(1 - (50 - col) / buffer_px, 0, 1))
    want = (w1 * proba[1] + w2 * proba[2]) / (w1 + w2)
    with rasterio.open(fused.classif) as src:
        got_classif = src.read(1)
    with rasterio.open(fused.confidence) as src:
        got_conf = src.read(1)
    has = got_classif > 0
    np.testing.assert_allclose(got_conf[has], want.max(axis=0)[has], rtol=1e-4, atol=1e-5)
    codes = np.asarray(info.class_codes)
    np.testing.assert_array_equal(got_classif[has], codes[want.argmax(axis=0)][has])
    far = (col < 50 - 5) | (col >= 50 + 5)
    np.testing.assert_array_equal(got_classif[far], merged[far])


def _cut_tiles(tmp_path: Path) -> Path:
    """The Slovenia stack cut into two adjacent tiles T1 (columns 0-49) and T2 (50-99)."""
    for tile, win in (("T1", Window(0, 0, 50, 101)), ("T2", Window(50, 0, 50, 101))):
        (tmp_path / tile).mkdir()
        for name in ("NDVI.tif", "CLM.tif", "IS_DATA.tif"):
            with rasterio.open(SLOVENIA / name) as src:
                profile = src.profile | {"width": 50, "height": 101,
                                         "transform": src.window_transform(win)}
                profile.pop("blockysize", None)
                profile.pop("blockxsize", None)
                profile["tiled"] = False
                with rasterio.open(tmp_path / tile / name, "w", **profile) as dst:
                    dst.write(src.read(window=win))
    return tmp_path


def _tile_overrides(root: Path) -> list[str]:
    return [
        f"data.raster='{root}/{{tile}}/NDVI.tif'",
        f"data.masks=[{{path:'{root}/{{tile}}/CLM.tif',invalid_values:[1]}},"
        f"{{path:'{root}/{{tile}}/IS_DATA.tif',valid_values:[1]}}]",
        "+data.list_tile=[T1,T2]",
    ]


def test_two_tiles_store_and_mosaic_equal_single_tile(make_cfg, slovenia_dir: Path,
                                                      tmp_path: Path) -> None:
    from i2dl.samples.extract import prepare
    from i2dl.stages.infer import run as run_infer
    from i2dl.stages.train import run as run_train

    (tmp_path / "tiles_src").mkdir()
    root = _cut_tiles(tmp_path / "tiles_src")
    single = run_train(make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, "infer.write_proba=true"))
    # the same model maps the two tiles: per-tile maps and a mosaic equal to the single map
    tiled_cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, *_tile_overrides(root),
                         "infer.write_proba=true")
    result = run_infer(tiled_cfg)
    run = tmp_path / "run"
    for tile in ("T1", "T2"):
        assert (run / "maps" / tile / "classif.tif").is_file(), tile
    assert result.classif == run / "final" / "Classif_Seed_0.tif"
    with rasterio.open(single["classif_map"]) as a, rasterio.open(result.classif) as b:
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
        np.testing.assert_array_equal(a.read(), b.read())
    with rasterio.open(single["confidence_map"]) as a, rasterio.open(result.confidence) as b:
        np.testing.assert_allclose(a.read(), b.read(), rtol=1e-6)
    # the probability map and PixelsValidity are mosaicked too
    assert result.proba == run / "final" / "Proba_Seed_0.tif"
    with rasterio.open(single["proba_map"]) as a, rasterio.open(result.proba) as b:
        np.testing.assert_allclose(a.read(), b.read(), rtol=1e-6)
    with rasterio.open(run / "maps" / "PixelsValidity.tif") as a, \
            rasterio.open(run / "final" / "PixelsValidity.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    # one store from both tiles holds the same pixels as the single-tile store
    store_t = zarr.open_group(str(prepare(tiled_cfg)), mode="r")
    store_s = zarr.open_group(single["store"], mode="r")
    assert set(np.unique(store_t["tile"][:])) == {0, 1}
    col_t = store_t["col"][:] + np.where(store_t["tile"][:] == 1, 50, 0)
    key_t = sorted(zip(store_t["row"][:].tolist(), col_t.tolist(), store_t["code"][:].tolist(),
                       strict=True))
    key_s = sorted(zip(store_s["row"][:].tolist(), store_s["col"][:].tolist(),
                       store_s["code"][:].tolist(), strict=True))
    assert key_t == key_s


def test_class_statistics_and_colour_products(make_cfg, slovenia_dir: Path, tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, "sampling.strategy=constant",
                   "sampling.per_class=50")
    summary = run_train(cfg)
    run = tmp_path / "run"
    stats = pd.read_csv(run / "class_statistics.csv")
    learn = stats[stats["split"] == "learn"]
    assert (learn["selected_pixels"] == np.minimum(50, learn["available_pixels"])).all()
    assert learn["selected_pixels"].sum() == summary["n_learn"]
    val = stats[stats["split"] == "val"]
    assert (val["selected_pixels"] == val["available_pixels"]).all()
    table = pd.read_csv(run / "maps" / "classif_table.csv")
    assert list(table["code"]) == [c["code"] for c in summary["classes"]]
    assert (run / "maps" / "classif.qml").is_file()
    with rasterio.open(run / "maps" / "classif_ColorIndexed.tif") as src, \
            rasterio.open(summary["classif_map"]) as ref:
        np.testing.assert_array_equal(src.read(), ref.read())
        cmap = src.colormap(1)
    for _, row in table.iterrows():
        assert cmap[int(row["code"])][:3] == (row["R"], row["G"], row["B"])


def test_majority_vote() -> None:
    maps = np.array([[[1, 2, 0, 3]], [[1, 3, 0, 2]], [[2, 3, 0, 0]]], dtype=np.uint8)  # (3,1,4)
    fused, agreement = majority_vote(maps, np.array([1, 2, 3]))
    np.testing.assert_array_equal(fused, [[1, 3, 0, 2]])  # last pixel: tie 2/3 -> smallest
    np.testing.assert_allclose(agreement, [[2 / 3, 2 / 3, 0.0, 0.5]])


def test_runs_with_fusion(make_cfg, tiny_dataset: dict, tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    run_train(make_cfg(*tiny_dataset["overrides"], *FAST, *SMALL_LTAE, "runs=3", "fusion=true"))
    run = tmp_path / "run"
    maps = []
    for i in range(3):
        with rasterio.open(run / f"seed_{i}" / "maps" / "classif.tif") as src:
            maps.append(src.read(1))
    maps = np.stack(maps)
    with rasterio.open(run / "final" / "Classif_Fusion.tif") as f, \
            rasterio.open(run / "final" / "Agreement_Fusion.tif") as a:
        fused, agreement = f.read(1), a.read(1)
    # independent vote count
    for r, c in [(0, 0), (5, 7), (12, 20), (19, 23)]:
        votes = pd.Series(maps[:, r, c][maps[:, r, c] != 0]).value_counts()
        if len(votes):
            top = votes.max()
            assert fused[r, c] == min(votes[votes == top].index)
            assert agreement[r, c] == pytest.approx(top / len(maps[:, r, c][maps[:, r, c] != 0]))
