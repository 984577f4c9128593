"""Feature options on a plain stack are applied (or refused), never silently dropped."""

from __future__ import annotations

import numpy as np
import pytest

from i2dl.errors import ConfigError
from i2dl.samples.extract import prepare
from i2dl.samples.store import open_store, read_array, read_info

MODULE = '''
def mean_b1(data):
    """Mean of channel b1 over the dates: one date-independent feature."""
    return data.get("b1").mean(axis=-1), ["mean_b1"]
'''


def test_external_features_on_a_stack_are_applied(make_cfg, tiny_dataset, tmp_path) -> None:
    module = tmp_path / "my_features.py"
    module.write_text(MODULE)
    overrides = [o for o in tiny_dataset["overrides"] if not o.startswith("data.masks")]
    store = prepare(make_cfg(*overrides, "data.masks=[]",
                             f"+data.external_features={{module:{module},functions:[mean_b1]}}"))
    info = read_info(store)
    assert info.band_names[-1] == "mean_b1" and info.n_channels == 3
    group = open_store(store)
    x, row, col = read_array(group, "X"), read_array(group, "row"), read_array(group, "col")
    series = tiny_dataset["series"]  # (T, C, H, W)
    want = series[:, 0].mean(axis=0)[row, col]
    for t in range(x.shape[1]):  # one feature, the same at every date
        np.testing.assert_allclose(x[:, t, 2], want, rtol=1e-5)
    np.testing.assert_allclose(x[:, :, 0], series[:, 0][:, row, col].T, rtol=1e-6)


def test_indices_on_a_stack_are_computed_or_refused(make_cfg, tiny_dataset) -> None:
    # the tiny stack has bands b1, b2: NDVI needs red and NIR, so it is refused, not dropped
    with pytest.raises(ConfigError, match="NDVI"):
        prepare(make_cfg(*tiny_dataset["overrides"], "+data.indices=[NDVI]"))


def test_feature_options_on_a_table_are_refused(make_cfg, tmp_path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("1,0.1,0.2\n2,0.3,0.4\n")
    with pytest.raises(ConfigError, match="indices compute features from rasters"):
        prepare(make_cfg("data.name=t", f"+data.table={table}", "+data.n_dates=2",
                         "data.raster=null", "+data.indices=[NDVI]"))
