"""Per-channel input scaling (``store.normalization``): z-score or sits' 2-98 % quantiles.

Expected statistics are computed here with plain numpy on the learn pixels read back from
the store, not with the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from i2dl.errors import ConfigError
from i2dl.samples.extract import learn_statistics, prepare, store_path
from i2dl.samples.store import LEARN, read_info


def _learn_obs(store) -> np.ndarray:
    g = zarr.open_group(str(store), mode="r")
    learn = g["split"][:] == LEARN
    return g["X"][:][learn][g["mask"][:][learn]]  # (M, C) valid learn observations


@pytest.mark.parametrize("method", ["standard", "quantile"])
def test_store_scales_with_learn_statistics(method: str, tiny_dataset, make_cfg) -> None:
    cfg = make_cfg(*tiny_dataset["overrides"], f"store.normalization={method}")
    store = prepare(cfg)
    info = read_info(store)
    obs = _learn_obs(store).astype(np.float64)
    if method == "standard":
        offset, scale = obs.mean(axis=0), obs.std(axis=0)
    else:
        offset = np.quantile(obs, 0.02, axis=0)
        scale = np.quantile(obs, 0.98, axis=0) - offset
    np.testing.assert_allclose(info.offset, offset, rtol=1e-5)
    np.testing.assert_allclose(info.scale, scale, rtol=1e-5)
    assert info.attrs["norm"]["method"] == method
    x = np.array([[[1.0, -2.0], [3.0, 5.0]]], dtype=np.float32)  # (1, T=2, C=2)
    valid = np.array([[True, False]])
    out = info.normalise(x, valid)
    np.testing.assert_allclose(out[0, 0], (x[0, 0] - offset) / scale, rtol=1e-5)
    assert (out[0, 1] == 0).all()  # invalid date -> 0


def test_quantile_scaling_ignores_an_outlier() -> None:
    """One huge value stretches the z-score but not the 2-98 % range."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (500, 4, 1)).astype(np.float32)
    x[0, 0, 0] = 1e4  # a missed cloud
    valid = np.ones((500, 4), dtype=bool)
    std = learn_statistics(x, valid, "standard")
    q = learn_statistics(x, valid, "quantile")
    assert std["scale"][0] > 100  # the outlier dominates the standard deviation
    assert 0.9 < q["scale"][0] < 1.0 and 0.0 <= q["offset"][0] < 0.05


def test_constant_channel_gets_scale_one() -> None:
    x = np.ones((10, 3, 2), dtype=np.float32)
    for method in ("standard", "quantile"):
        assert learn_statistics(x, np.ones((10, 3), bool), method)["scale"] == [1.0, 1.0]


def test_normalization_is_part_of_the_store_fingerprint(tiny_dataset, make_cfg) -> None:
    a = store_path(make_cfg(*tiny_dataset["overrides"]))
    b = store_path(make_cfg(*tiny_dataset["overrides"], "store.normalization=quantile"))
    assert a != b


def test_unknown_normalization(tiny_dataset, make_cfg) -> None:
    cfg = make_cfg(*tiny_dataset["overrides"], "store.normalization=minmax")
    with pytest.raises(ConfigError, match="store.normalization='minmax'"):
        prepare(cfg)
