"""Date-independent channels (user / external features) are one feature, not one per date."""

from __future__ import annotations

import numpy as np
import torch

from i2dl.samples.extract import prepare
from i2dl.samples.store import read_info
from i2dl.stages import fit
from i2dl.training.build import DataDims, build_classifier
from models.sklearn_backends import features
from tests.conftest import FAST

MODULE = '''
def mean_b1(data):
    """Mean of channel b1 over the dates: one date-independent feature."""
    return data.get("b1").mean(axis=-1), ["mean_b1"]
'''


def test_sklearn_features_take_a_static_channel_once() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 3)).astype(np.float32)
    x[:, :, 1] = rng.normal(size=(5, 1))  # channel 1: the same value at every date
    mask = np.ones((5, 4), bool)
    mask[0, 0] = False  # an invalid first date: gap-filled from the next one
    days = np.tile(np.arange(4) * 10, (5, 1))
    got = features(x, days, mask, static_channels=[1])
    assert got.shape == (5, 4 * 2 + 1)
    np.testing.assert_allclose(got[:, -1], x[:, 0, 1])
    # the dated channels 0 and 2, date-major, as without static channels
    np.testing.assert_allclose(got[1:, :-1], x[1:][:, :, [0, 2]].reshape(4, 8))
    assert features(x, days, mask).shape == (5, 12)


def test_deep_model_reads_a_static_channel_once(make_cfg) -> None:
    cfg = make_cfg("+experiment=mlp")
    plain = build_classifier(cfg.model, DataDims(3, 4, 2))
    model = build_classifier(cfg.model, DataDims(3, 4, 2, static_channels=(2,)))
    # the encoder reads the 2 dated channels; the head gets its D features + 1 static
    enc_in = [p for p in model.encoder.parameters() if p.dim() == 2][0].shape[1]
    plain_in = [p for p in plain.encoder.parameters() if p.dim() == 2][0].shape[1]
    assert (enc_in, plain_in) == (4 * 2, 4 * 3)
    x = torch.randn(6, 4, 3)
    days = torch.arange(4).repeat(6, 1) * 10
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[:, 3] = False
    x[:, :, 2] = 1.5
    base = model.predict_proba(x, days, mask)
    assert base.shape == (6, 2)
    changed = x.clone()
    changed[:, 3, 2] = -40.0  # only at an invalid date: ignored
    torch.testing.assert_close(model.predict_proba(changed, days, mask), base)
    changed[:, :, 2] = -1.5  # the static value itself: the output moves
    assert not torch.allclose(model.predict_proba(changed, days, mask), base)


def test_static_channels_recorded_and_used_by_the_forest(make_cfg, tiny_dataset, tmp_path):
    module = tmp_path / "my_features.py"
    module.write_text(MODULE)
    overrides = [o for o in tiny_dataset["overrides"] if not o.startswith("data.masks")]
    cfg = make_cfg(*overrides, "data.masks=[]", "+experiment=rf", *FAST,
                   f"+data.external_features={{module:{module},functions:[mean_b1]}}")
    info = read_info(prepare(cfg))
    assert info.attrs["static_channels"] == ["mean_b1"]
    assert info.static_channels == (2,)
    fit.run(cfg)
    import joblib
    import yaml

    run = tmp_path / "run"
    spec = yaml.safe_load((run / "model.yaml").read_text())
    assert spec["static_channels"] == [2]
    payload = joblib.load(run / "checkpoints" / "model.joblib")
    n_features = payload["estimator"].n_features_in_
    assert n_features == info.n_dates * 2 + 1
