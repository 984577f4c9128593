"""iota2's built-in external features by name, concat_mode and no_data_value."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from i2dl.errors import ConfigError
from i2dl.features.builtin import BUILTINS
from i2dl.features.external import ChunkData, apply_external, load_functions
from i2dl.samples.extract import prepare
from i2dl.samples.store import open_store, read_array, read_info
from i2dl.training.build import DataDims, build_classifier

BANDS = ["B2", "B3", "B4", "B5", "B8", "B11"]
DATES = [dt.date(2021, 1, 1) + dt.timedelta(days=10 * i) for i in range(3)]


@pytest.fixture
def chunk() -> np.ndarray:
    rng = np.random.default_rng(4)
    return rng.uniform(0.02, 0.5, (4, 5, 3, len(BANDS))).astype(np.float32)


def _b(x: np.ndarray, name: str) -> np.ndarray:
    return x[..., BANDS.index(name)].astype(np.float64)


def test_builtins_equal_their_formulas(chunk: np.ndarray) -> None:
    fns = load_functions(None, "get_soi get_ndsi get_ndvi get_cari get_cumulative_productivity "
                               "get_minimum_productivity get_maximum_productivity "
                               "get_seasonal_variation")
    feats, names = apply_external(chunk, BANDS, DATES, fns)
    assert names[:3] == ["SOI_20210101", "SOI_20210111", "SOI_20210121"]
    assert names[-4:] == ["cumulative_productivity", "minimum_productivity",
                          "maximum_productivity", "seasonal_variation"]
    g, r, e, n, s = (_b(chunk, k) for k in ("B3", "B4", "B5", "B8", "B11"))
    ndvi = (n - r) / (n + r)
    a = (e - g) / 150.0
    cari = (e / r) * np.abs(a * 670 + r + (g - a * 550)) / np.sqrt(a**2 + 1)
    want = np.concatenate([(s - n) / (s + n), (g - s) / (g + s), ndvi, cari,
                           ndvi.sum(-1, keepdims=True), ndvi.min(-1, keepdims=True),
                           ndvi.max(-1, keepdims=True),
                           (ndvi.std(-1) / ndvi.mean(-1))[..., None]], axis=-1)
    np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-6)


def test_builtins_find_prefixed_bands_and_take_band_names(chunk: np.ndarray) -> None:
    prefixed = [f"sentinel2_theia_{b}" for b in BANDS]
    (soi, _), = [fn(ChunkData(chunk, prefixed, DATES)) for fn, _ in load_functions(None, "get_soi")]
    n, s = _b(chunk, "B8"), _b(chunk, "B11")
    np.testing.assert_allclose(soi, (s - n) / (s + n), rtol=1e-5)
    # Landsat-8 roles by keyword: NIR = B5, SWIR = B11 here
    fns = load_functions(None, [{"get_soi": {"nir": "B5", "swir": "B11"}}])
    feats, _ = apply_external(chunk, BANDS, DATES, fns)
    e = _b(chunk, "B5")
    np.testing.assert_allclose(feats, (s - e) / (s + e), rtol=1e-5)
    with pytest.raises(ConfigError, match="no single band 'B8'"):
        apply_external(chunk[..., :3], BANDS[:3], DATES, load_functions(None, "get_ndvi"))


def test_user_function_wins_and_unknown_names_list_the_builtins(tmp_path) -> None:
    module = tmp_path / "mine.py"
    module.write_text("def get_soi(data):\n    return data.get('B2')[..., 0], ['mine']\n")
    ((fn, _),) = load_functions(module, ["get_soi"])
    assert fn.__module__ != "i2dl.features.builtin"
    ((fn, _),) = load_functions(module, ["get_ndsi"])  # not in the module: the built-in
    assert fn.__module__ == "i2dl.features.builtin"
    with pytest.raises(ConfigError, match="get_cumulative_productivity"):
        load_functions(None, ["get_nothing"])


MODULE = '''
def mean_b1(data):
    """Mean of b1 over the dates; iota2's no-data value where it is below 1.5."""
    m = data.get("b1").mean(axis=-1)
    return data.xp.where(m < 1.5, -10000.0, m), ["mean_b1"]
'''


def test_concat_mode_and_no_data_value(make_cfg, tiny_dataset, tmp_path) -> None:
    module = tmp_path / "my_features.py"
    module.write_text(MODULE)
    overrides = [o for o in tiny_dataset["overrides"] if not o.startswith("data.masks")]
    ext = f"{{module:{module},functions:[mean_b1],concat_mode:false,no_data_value:-10000}}"
    # class 1 gets no sample (below): allowed explicitly (prepare refuses it by default)
    store = prepare(make_cfg(*overrides, "data.masks=[]", f"+data.external_features={ext}",
                             "sampling.allow_missing_classes=true"))
    info = read_info(store)
    assert info.band_names == ["mean_b1"] and info.static_channels == (0,)
    group = open_store(store)
    x, mask = read_array(group, "X"), read_array(group, "mask")
    row, col = read_array(group, "row"), read_array(group, "col")
    mean_b1 = tiny_dataset["series"][:, 0].mean(axis=0)[row, col]
    # class 1 (b1 about 1) is no-data everywhere: invalid at every date, so not sampled
    assert sorted(np.unique(read_array(group, "code"))) == [2, 3]
    assert (mean_b1 >= 1.5).all() and mask.all()
    np.testing.assert_allclose(x[:, 0, 0], mean_b1, rtol=1e-5)
    # no dated channel left: a temporal encoder is refused, a forest is fine
    cfg = make_cfg("+experiment=ltae")
    with pytest.raises(ConfigError, match="concat_mode"):
        build_classifier(cfg.model, DataDims.of(info))
    build_classifier(make_cfg("+experiment=rf").model, DataDims.of(info))


@pytest.mark.gpu
def test_builtins_on_cupy_equal_numpy(chunk: np.ndarray) -> None:
    cupy = pytest.importorskip("cupy")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from i2dl.features import backend

    fns = load_functions(None, list(BUILTINS))
    cpu, names = apply_external(chunk, BANDS, DATES, fns)
    gpu, names_gpu = apply_external(cupy.asarray(chunk), BANDS, DATES, fns)
    assert backend.is_cupy(gpu) and names_gpu == names
    np.testing.assert_allclose(backend.to_numpy(gpu), cpu, rtol=1e-5, atol=1e-6)
