"""The datamodule streams the store in chunk-aligned blocks, normalised as documented."""

from __future__ import annotations

import numpy as np
import torch
import zarr

from datamodules import PixelSeriesDataModule, StoreBlockDataset
from i2dl.prepare import prepare


def _store(make_cfg, tiny_dataset, chunk_size: int = 16):
    cfg = make_cfg(*tiny_dataset["overrides"], f"store.chunk_size={chunk_size}")
    return prepare(cfg)


def test_epoch_covers_each_learn_sample_once(make_cfg, tiny_dataset) -> None:
    path = _store(make_cfg, tiny_dataset)
    group = zarr.open_group(str(path), mode="r")
    learn_rows = set(np.flatnonzero(group["split"][:] == 0).tolist())
    assert group["X"].chunks[0] == 16 and len(learn_rows) > 3 * 16  # several chunks
    ds = StoreBlockDataset(path, split=0, batch_size=10, shuffle=True, block_chunks=2)
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
    X, mask, y = group["X"][:], group["mask"][:], group["y"][:]
    mean = np.asarray(group.attrs["norm"]["mean"], dtype=np.float32)
    std = np.asarray(group.attrs["norm"]["std"], dtype=np.float32)
    codes = [c["code"] for c in group.attrs["classes"]]
    batch = next(iter(StoreBlockDataset(path, split=1, batch_size=32, shuffle=False)))
    idx = batch["index"].numpy()
    expected = (X[idx] - mean) / std
    expected[~mask[idx]] = 0.0
    np.testing.assert_allclose(batch["x"].numpy(), expected, rtol=1e-6)
    assert batch["x"].dtype == torch.float32 and batch["mask"].dtype == torch.bool
    assert batch["days"].shape == batch["mask"].shape == (32, 6)
    np.testing.assert_array_equal(batch["days"][0].numpy(), [0, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(batch["code"].numpy(), y[idx])
    np.testing.assert_array_equal(np.asarray(codes)[batch["y"].numpy()], y[idx])
    # the cloud mask of date 2 (left half) is in the mask
    assert not mask[group["col"][:] < 12][:, 2].any() and mask[group["col"][:] >= 12][:, 2].all()


def test_datamodule_loaders_and_class_weights(make_cfg, tiny_dataset) -> None:
    path = _store(make_cfg, tiny_dataset, chunk_size=4096)
    dm = PixelSeriesDataModule(store_path=path, batch_size=64)
    assert dm.info.class_codes == [1, 2, 3] and dm.info.n_dates == 6 and dm.info.n_channels == 2
    n_val = sum(len(b["y"]) for b in dm.val_dataloader())
    group = zarr.open_group(str(path), mode="r")
    assert n_val == int((group["split"][:] == 1).sum())
    split, y = group["split"][:], group["y"][:]
    n_k = np.array([((split == 0) & (y == c)).sum() for c in (1, 2, 3)])
    np.testing.assert_allclose(dm.class_weights(), n_k.sum() / (3 * n_k), rtol=1e-6)
