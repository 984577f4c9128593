"""Sample augmentation of the learn split (issue 22, iota2 arg_train.sample_augmentation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from i2dl.errors import ConfigError
from i2dl.samples.augmentation import AugmentationConfig, augment


def _data(counts: dict[int, int], t: int = 6, c: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, code) for code, n in counts.items()]).astype(np.int64)
    x = (rng.normal(size=(len(y), t, c)) + y[:, None, None]).astype(np.float32)
    mask = rng.random((len(y), t)) > 0.2
    return x, mask, y


def test_balance_by_replication_copies_each_sample_before_any_twice() -> None:
    x, mask, y = _data({1: 20, 2: 7, 3: 3})
    nx, nm, ny, src = augment(x, mask, y, AugmentationConfig("replicate", "balance"))
    assert {int(c): int((ny == c).sum()) for c in (1, 2, 3)} == {1: 0, 2: 13, 3: 17}
    np.testing.assert_array_equal(nx, x[src])
    np.testing.assert_array_equal(nm, mask[src])
    assert (y[src] == ny).all()
    uses = np.bincount(src[ny == 3], minlength=len(y))[y == 3]  # 17 copies of 3 samples
    assert uses.max() - uses.min() <= 1


def test_min_number_raises_small_classes_only_and_by_class_reads_a_table(
        tmp_path: Path) -> None:
    x, mask, y = _data({1: 20, 2: 7, 3: 3})
    _, _, ny, _ = augment(x, mask, y, AugmentationConfig("jitter", "minNumber", min_number=10))
    assert {int(c): int((ny == c).sum()) for c in (1, 2, 3)} == {1: 0, 2: 3, 3: 7}
    table = tmp_path / "by_class.csv"
    table.write_text("code,count\n2,9\n3,2\n7,50\n")  # 3 is never reduced, 7 is unknown
    _, _, ny, _ = augment(x, mask, y, AugmentationConfig(
        "replicate", "byClass", by_class=str(table)))
    assert {int(c): int((ny == c).sum()) for c in (1, 2, 3)} == {1: 0, 2: 2, 3: 0}


def test_jitter_noise_is_the_feature_std_over_the_factor_on_valid_dates_only() -> None:
    x, mask, y = _data({1: 400, 2: 40}, t=4, c=1)
    cfg = AugmentationConfig("jitter", "balance", std_factor=4.0, seed=1)
    nx, nm, ny, src = augment(x, mask, y, cfg)
    noise = nx - x[src]
    np.testing.assert_array_equal(nm, mask[src])
    assert (noise[~nm] == 0).all()  # invalid dates untouched
    cls = x[y == 2]
    want = np.array([cls[mask[y == 2][:, t], t, 0].std() for t in range(4)]) / 4.0
    got = np.array([noise[nm[:, t], t, 0].std() for t in range(4)])
    np.testing.assert_allclose(got, want, rtol=0.15)  # 360 draws per date
    again = augment(x, mask, y, cfg)[0]
    np.testing.assert_array_equal(again, nx)  # reproducible for a seed


def test_smote_interpolates_between_a_sample_and_a_near_neighbour() -> None:
    x, mask, y = _data({1: 30, 2: 12}, t=5, c=2)
    mask[:] = True
    k = 3
    nx, nm, ny, src = augment(x, mask, y, AugmentationConfig("smote", "balance", neighbors=k))
    assert len(nx) == 18 and (ny == 2).all() and nm.all()
    rows = np.flatnonzero(y == 2)
    flat = x[rows].reshape(len(rows), -1)
    for new, a in zip(nx.reshape(len(nx), -1), src, strict=True):
        ia = int(np.flatnonzero(rows == a)[0])
        d = ((flat - flat[ia]) ** 2).sum(1)
        d[ia] = np.inf
        near = np.argsort(d)[:k]
        ok = False
        for b in near:  # new = a + u (b - a) with u in [0, 1]
            step = flat[b] - flat[ia]
            u = float((new - flat[ia]) @ step / (step @ step))
            ok |= -1e-5 <= u <= 1 + 1e-5 and np.allclose(flat[ia] + u * step, new, atol=1e-4)
        assert ok


def test_smote_on_one_sample_falls_back_to_jitter_and_bad_settings() -> None:
    x, mask, y = _data({1: 5, 2: 1})
    with pytest.warns(UserWarning, match="jitter instead"):
        nx, _, ny, _ = augment(x, mask, y, AugmentationConfig("smote", "balance"))
    assert (ny == 2).sum() == 4
    for bad, match in [(AugmentationConfig("mixup"), "strategy"),
                       (AugmentationConfig(samples_strategy="minNumber"), "min_number"),
                       (AugmentationConfig(samples_strategy="byClass", by_class="/no.csv"),
                        "by_class"),
                       (AugmentationConfig("jitter", std_factor=0), "std_factor")]:
        with pytest.raises(ConfigError, match=match):
            augment(x, mask, y, bad)


def test_prepare_augments_the_learn_split_only_and_records_it(make_cfg, tiny_dataset,
                                                             tmp_path: Path) -> None:
    import pandas as pd

    from i2dl.samples.store import LEARN, SELECTION, VAL, open_store, read_array
    from i2dl.stages.prepare import run as run_prepare
    from i2dl.stages.train import run as run_train
    from tests.conftest import FAST

    base = ("+experiment=rf", *FAST, *tiny_dataset["overrides"], "sampling.strategy=constant",
            "sampling.per_class=5", "model.estimator.n_estimators=5", "infer.chunk_size=16")
    plain = run_prepare(make_cfg(*base))
    aug = ("sampling.augmentation.enabled=true", "sampling.augmentation.strategy=jitter",
           "sampling.augmentation.samples_strategy=minNumber",
           "sampling.augmentation.min_number=12")
    cfg = make_cfg(*base, *aug)
    store = run_prepare(cfg)
    assert store != plain  # another store (the sampling config is in its fingerprint)
    g0, g1 = open_store(plain), open_store(store)
    split0, split1 = read_array(g0, "split"), read_array(g1, "split")
    code0, code1 = read_array(g0, "code"), read_array(g1, "code")
    for s in (SELECTION, VAL):  # untouched
        np.testing.assert_array_equal(np.sort(code0[split0 == s]), np.sort(code1[split1 == s]))
    learn0 = {int(c): int((code0[split0 == LEARN] == c).sum()) for c in (1, 2, 3)}
    learn1 = {int(c): int((code1[split1 == LEARN] == c).sum()) for c in (1, 2, 3)}
    assert learn1 == {c: max(n, 12) for c, n in learn0.items()}
    n = len(code0)
    np.testing.assert_array_equal(read_array(g1, "X")[:n], read_array(g0, "X"))
    assert g1.attrs["augmentation"]["added"] == {
        str(c): learn1[c] - learn0[c] for c in (1, 2, 3) if learn1[c] > learn0[c]}
    stats = pd.read_csv(store.with_name(store.name.removesuffix(".zarr")
                                        + ".class_statistics.csv"))
    learn_rows = stats[stats["split"] == "learn"]
    assert dict(zip(learn_rows["class"], learn_rows["augmented_pixels"], strict=True)) == {
        c: learn1[c] - learn0[c] for c in (1, 2, 3)}
    # a whole run trains on it and scores val as usual
    summary = run_train(make_cfg(*base, *aug))
    assert summary["n_learn"] == sum(learn1.values()) and 0 <= summary["oa"] <= 1
