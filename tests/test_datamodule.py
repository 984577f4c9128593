"""The datamodule streams the store in chunk-aligned blocks, normalised as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

import datamodules.pixel_series as pixel_series
from datamodules import PixelSeriesDataModule, StoreBlockDataset
from i2dl.errors import ConfigError, StoreError
from i2dl.samples.extract import prepare
from i2dl.samples.store import (
    LEARN,
    VAL,
    open_store,
    read_array,
    read_info,
    store_array,
    write_store,
)


def _store(make_cfg, tiny_dataset, samples_per_chunk: int = 16):
    cfg = make_cfg(*tiny_dataset["overrides"], f"store.samples_per_chunk={samples_per_chunk}")
    return prepare(cfg)


def test_epoch_covers_each_learn_sample_once(make_cfg, tiny_dataset) -> None:
    path = _store(make_cfg, tiny_dataset)
    group = zarr.open_group(str(path), mode="r")
    learn_rows = set(np.flatnonzero(group["split"][:] == LEARN).tolist())
    assert group["X"].chunks[0] == 16 and len(learn_rows) > 3 * 16  # several chunks
    ds = StoreBlockDataset(path, split=LEARN, batch_size=10, shuffle=True, block_chunks=2)
    torch.manual_seed(0)
    epoch1 = torch.cat([b["index"] for b in ds]).tolist()
    epoch2 = torch.cat([b["index"] for b in ds]).tolist()
    for epoch in (epoch1, epoch2):
        assert sorted(epoch) == sorted(learn_rows)  # once each, no val sample
    assert epoch1 != epoch2  # reshuffled every epoch
    sizes = [len(b["y"]) for b in ds]
    assert all(s == 10 for s in sizes[:-1]) and len(sizes) == len(ds)


def test_batch_content_is_normalised_store_data(make_cfg, tiny_dataset) -> None:
    path = _store(make_cfg, tiny_dataset)
    group = zarr.open_group(str(path), mode="r")
    X, mask, code = group["X"][:], group["mask"][:], group["code"][:]
    mean = np.asarray(group.attrs["norm"]["mean"], dtype=np.float32)
    std = np.asarray(group.attrs["norm"]["std"], dtype=np.float32)
    codes = [c["code"] for c in group.attrs["classes"]]
    batch = next(iter(StoreBlockDataset(path, split=VAL, batch_size=32, shuffle=False)))
    idx = batch["index"].numpy()
    expected = (X[idx] - mean) / std
    expected[~mask[idx]] = 0.0
    np.testing.assert_allclose(batch["x"].numpy(), expected, rtol=1e-6)
    assert batch["x"].dtype == torch.float32 and batch["mask"].dtype == torch.bool
    assert batch["days"].shape == batch["mask"].shape == (32, 6)
    np.testing.assert_array_equal(batch["days"][0].numpy(), [0, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(batch["code"].numpy(), code[idx])
    np.testing.assert_array_equal(np.asarray(codes)[batch["y"].numpy()], code[idx])
    # the cloud mask of date 2 (left half) is in the mask
    assert not mask[group["col"][:] < 12][:, 2].any() and mask[group["col"][:] >= 12][:, 2].all()


def test_datamodule_loaders_and_class_weights(make_cfg, tiny_dataset) -> None:
    path = _store(make_cfg, tiny_dataset, samples_per_chunk=4096)
    dm = PixelSeriesDataModule(store_path=path, batch_size=64)
    assert dm.info.class_codes == [1, 2, 3] and dm.info.n_dates == 6 and dm.info.n_channels == 2
    n_val = sum(len(b["y"]) for b in dm.val_dataloader())
    group = zarr.open_group(str(path), mode="r")
    assert n_val == int((group["split"][:] == VAL).sum())
    split, code = group["split"][:], group["code"][:]
    n_k = np.array([((split == LEARN) & (code == c)).sum() for c in (1, 2, 3)])
    np.testing.assert_allclose(dm.class_weights(), n_k.sum() / (3 * n_k), rtol=1e-6)



def _epochs(ds: StoreBlockDataset, n: int, seed: int = 0) -> list[list[dict]]:
    """``n`` epochs of batches as numpy copies, then scribble on the yielded tensors."""
    torch.manual_seed(seed)
    out = []
    for _ in range(n):
        epoch = []
        for batch in ds:
            epoch.append({k: v.numpy().copy() for k, v in batch.items()})
            batch["x"].fill_(1e6)  # a model writing into its input must not reach the cache
        out.append(epoch)
    return out


@pytest.mark.parametrize("split,shuffle", [(LEARN, True), (VAL, False)])
def test_in_memory_cache_yields_the_streamed_batches(
    make_cfg, tiny_dataset, monkeypatch, split, shuffle
) -> None:
    path = _store(make_cfg, tiny_dataset)  # 16 samples a chunk: several chunks and blocks
    kwargs = {"split": split, "batch_size": 10, "shuffle": shuffle, "block_chunks": 2}
    streamed = StoreBlockDataset(path, **kwargs)
    cached = StoreBlockDataset(path, **kwargs, cache_mb=64)
    assert cached.cached and not streamed.cached
    opened = []
    real_open = pixel_series.open_store
    monkeypatch.setattr(pixel_series, "open_store", lambda p: opened.append(p) or real_open(p))
    expected = _epochs(streamed, 3)
    n_streamed = len(opened)
    got = _epochs(cached, 3)
    # same seed -> the same batches in the same order, every epoch
    assert [len(e) for e in got] == [len(e) for e in expected]
    for epoch_got, epoch_expected in zip(got, expected, strict=True):
        for b_got, b_exp in zip(epoch_got, epoch_expected, strict=True):
            assert b_got.keys() == b_exp.keys()
            for key in b_exp:
                np.testing.assert_array_equal(b_got[key], b_exp[key], err_msg=key)
    if shuffle:
        assert [b["index"].tolist() for b in got[0]] != [b["index"].tolist() for b in got[1]]
    # streaming opens the store every epoch, the cache only in the first one
    assert n_streamed == 3 and len(opened) - n_streamed == 1


def test_cache_size_limit_and_datamodule_default(make_cfg, tiny_dataset) -> None:
    path = _store(make_cfg, tiny_dataset)
    assert not StoreBlockDataset(path, LEARN, cache_mb=1e-6).cached  # larger than the limit
    assert not StoreBlockDataset(path, LEARN).cached  # one-pass readers stream
    with pytest.raises(ConfigError, match="cache_mb must be >= 0"):
        StoreBlockDataset(path, LEARN, cache_mb=-1)
    assert PixelSeriesDataModule(store_path=path).dataset(LEARN, shuffle=True).cached
    assert not PixelSeriesDataModule(store_path=path, cache_mb=0).dataset(LEARN).cached


def test_store_arrays_and_layout_version(tmp_path) -> None:
    n, t, c = 10, 3, 2
    arrays = {
        "X": np.ones((n, t, c), np.float32), "mask": np.ones((n, t), bool),
        "code": np.arange(n) % 2 + 1, "polygon_id": np.arange(n), "region": np.zeros(n),
        "tile": np.zeros(n), "split": np.arange(n) % 2, "row": np.arange(n), "col": np.arange(n),
    }
    attrs = {"dates": [], "days": [0, 5, 10], "band_names": ["b1", "b2"],
             "classes": [{"code": 1, "name": "a"}, {"code": 2, "name": "b"}],
             "norm": {"mean": [0, 0], "std": [1, 1]}, "transform": [1, 0, 0, 0, -1, 0],
             "width": 0, "height": 0}
    path = write_store(tmp_path / "s.zarr", arrays, attrs, samples_per_chunk=4)
    group = open_store(path)
    assert store_array(group, "X").chunks == (4, t, c)
    np.testing.assert_array_equal(read_array(group, "code", slice(2, 5)), [1, 2, 1])
    assert read_array(group, "split").dtype == np.int8
    with pytest.raises(StoreError, match="no array 'y'"):
        store_array(group, "y")
    with pytest.raises(StoreError, match="samples_per_chunk must be >= 1"):
        write_store(tmp_path / "t.zarr", arrays, {}, samples_per_chunk=0)
    del arrays["code"]
    with pytest.raises(StoreError, match=r"arrays \['code'\] missing"):
        write_store(tmp_path / "t.zarr", arrays, {})
    # a store of layout version 1 (class codes in "y"): attributes still read, arrays not
    old = zarr.open_group(str(path), mode="r+")
    old.attrs["version"] = 1
    old.create_array("y", shape=(n,), dtype="int64")
    del old["code"]
    assert read_info(path).n_samples == n
    with pytest.raises(StoreError, match=r"no array 'code': it has layout version 1.*prepare"):
        read_array(open_store(path), "code")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
