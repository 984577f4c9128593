"""Unit tests of the raster and vector readers (``i2dl.io.raster``, ``i2dl.io.vector``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.windows import Window
from shapely.geometry import box

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.geotiff import block_windows
from i2dl.io.raster import (
    as_date,
    open_time_series,
    parse_date,
    read_dates_file,
)
from i2dl.io.sensors.base import RasterReader, TimeSeriesSource
from i2dl.io.sensors.common import normalize_tile
from i2dl.io.vector import burn_polygons, rasterize_polygons, read_reference
from tests.conftest import write_stack

# ---------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2015-07-11", dt.date(2015, 7, 11)),
        ("2015-07-11T10:00:08", dt.date(2015, 7, 11)),
        ("2015-12-31T23:59:59Z", dt.date(2015, 12, 31)),
        ("20150711", dt.date(2015, 7, 11)),
        ("  20200229\n", dt.date(2020, 2, 29)),
        ("NDVI_20150731", dt.date(2015, 7, 31)),
        ("SENTINEL2A_20180105-104516-862_L2A_T31TCJ", dt.date(2018, 1, 5)),
    ],
)
def test_parse_date_formats(text: str, expected: dt.date) -> None:
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    "text", ["", "NDVI", "July 11th 2015", "2015-7-11", "20151341", "20190229"]
)
def test_parse_date_rejects_non_dates(text: str) -> None:
    with pytest.raises(ValueError):
        parse_date(text)


def test_as_date_reads_dates_datetimes_text_and_none() -> None:
    day = dt.date(2020, 1, 11)
    assert as_date(day) == day
    assert as_date(dt.datetime(2020, 1, 11, 23, 59)) == day
    assert as_date("20200111") == day and as_date("2020-01-11T10:00:00Z") == day
    assert as_date(None) is None and as_date("") is None
    with pytest.raises(ConfigError, match=r"data.start_date='2020-13-01' is not a date"):
        as_date("2020-13-01", "data.start_date")


@pytest.mark.parametrize("tile", ["T31TCJ", "31TCJ", "t31tcj", " 31tcj "])
def test_normalize_tile_gives_t_prefix_and_capitals(tile: str) -> None:
    assert normalize_tile(tile) == "T31TCJ"


@pytest.mark.parametrize("tile", ["D0005H0002", "T31TC", "TT31TCJ", ""])
def test_normalize_tile_rejects_non_mgrs_ids(tile: str) -> None:
    with pytest.raises(ConfigError, match="not an MGRS tile id"):
        normalize_tile(tile)


def test_read_dates_file_skips_blank_lines_and_rejects_unsorted(tmp_path: Path) -> None:
    path = tmp_path / "dates.txt"
    path.write_text("20200101\n\n2020-01-11T10:00:00\n   \n2020-01-11\n")
    jan1, jan11 = dt.date(2020, 1, 1), dt.date(2020, 1, 11)
    assert read_dates_file(path) == [jan1, jan11, jan11]
    path.write_text("20200111\n20200101\n")
    with pytest.raises(InputDataError, match=r"date 2 \(2020-01-01\) follows 2020-01-11"):
        read_dates_file(path)


# ---------------------------------------------------------------- real Slovenia stack


def _slovenia_series(slovenia_dir: Path, dates_file: bool = True):
    return open_time_series(
        slovenia_dir / "NDVI.tif",
        dates_file=slovenia_dir / "dates.txt" if dates_file else None,
        band_names=["NDVI"],
        masks=[
            {"path": str(slovenia_dir / "CLM.tif"), "invalid_values": [1]},
            {"path": str(slovenia_dir / "IS_DATA.tif"), "valid_values": [1]},
        ],
    )


def test_slovenia_dates_and_grid(slovenia_dir: Path) -> None:
    lines = [ln for ln in (slovenia_dir / "dates.txt").read_text().splitlines() if ln.strip()]
    expected = [dt.datetime.fromisoformat(ln.strip()).date() for ln in lines]
    with rasterio.open(slovenia_dir / "NDVI.tif") as src:
        count, width, height, crs = src.count, src.width, src.height, src.crs
        transform = src.transform
    with _slovenia_series(slovenia_dir) as series:
        assert series.n_dates == 68 == len(expected)
        assert series.dates == expected
        assert series.dates[0] == dt.date(2015, 7, 11)
        assert series.n_channels == 1 and series.band_names == ["NDVI"]
        assert series.n_dates * series.n_channels == count
        assert (series.width, series.height) == (width, height) == (100, 101)
        assert series.crs == crs and series.transform == transform


def test_slovenia_read_window_matches_rasterio(slovenia_dir: Path) -> None:
    window = Window(col_off=13, row_off=7, width=37, height=29)
    with rasterio.open(slovenia_dir / "NDVI.tif") as src:
        raw = src.read(window=window).astype("float32")  # (T*C, H, W)
    with rasterio.open(slovenia_dir / "CLM.tif") as src:
        clm = src.read(window=window)
    with rasterio.open(slovenia_dir / "IS_DATA.tif") as src:
        is_data = src.read(window=window)
    expected_valid = ((clm == 0) & (is_data == 1)).transpose(1, 2, 0)  # (H, W, T)
    with _slovenia_series(slovenia_dir) as series:
        x, valid = series.read(window)
    assert x.shape == (29, 37, 68, 1) and x.dtype == np.float32
    assert valid.shape == (29, 37, 68) and valid.dtype == bool
    for t in (0, 1, 33, 67):
        np.testing.assert_array_equal(x[:, :, t, 0], raw[t])
    np.testing.assert_array_equal(x[..., 0], raw.transpose(1, 2, 0))
    # the data is not NaN: validity is exactly the masks' verdict
    assert not np.isnan(raw).any()
    np.testing.assert_array_equal(valid, expected_valid)
    # clouds mask part of the window; IS_DATA is all 1 here, so reading it with the
    # invalid_values convention would mask everything
    assert 0 < expected_valid.sum() < expected_valid.size


def test_slovenia_dates_from_band_descriptions(slovenia_dir: Path) -> None:
    with rasterio.open(slovenia_dir / "NDVI.tif") as src:
        descriptions = src.descriptions
    assert descriptions[0] == "NDVI_20150711"
    expected = [dt.datetime.strptime(d.split("_")[-1], "%Y%m%d").date() for d in descriptions]
    with _slovenia_series(slovenia_dir, dates_file=False) as series:
        assert series.dates == expected
        assert series.n_dates == 68
        with_file = read_dates_file(slovenia_dir / "dates.txt")
        assert series.dates == with_file


# ---------------------------------------------------------------- synthetic stack, C = 2


def test_read_is_date_major(tiny_dataset: dict) -> None:
    """Band t*C + c is channel c of date t: x[..., t, c] is the fixture's series[t, c]."""
    series_tc = tiny_dataset["series"].astype("float32")  # (T, C, H, W)
    with open_time_series(
        tiny_dataset["raster"],
        dates_file=tiny_dataset["dates_file"],
        band_names=["b1", "b2"],
        masks=[{"path": str(tiny_dataset["cloud"]), "invalid_values": [1]}],
    ) as series:
        assert series.dates == tiny_dataset["dates"]
        x, valid = series.read(Window(3, 2, 10, 9))
    assert x.shape == (9, 10, 6, 2)
    for t in range(6):
        for c in range(2):
            np.testing.assert_array_equal(x[:, :, t, c], series_tc[t, c, 2:11, 3:13])
    # date 2 is clouded on the left half (columns < 12), i.e. window columns 0..8
    expected = np.ones((9, 10, 6), dtype=bool)
    expected[:, :9, 2] = False
    np.testing.assert_array_equal(valid, expected)


def test_nodata_and_nan_are_invalid(tmp_path: Path) -> None:
    data = np.ones((4, 3, 5), dtype="float32")  # T=2, C=2
    data[1, 0, 0] = -9999.0  # date 0, channel 1
    data[2, 2, 4] = np.nan  # date 1, channel 0
    path = tmp_path / "nd.tif"
    profile = {
        "driver": "GTiff",
        "width": 5,
        "height": 3,
        "count": 4,
        "dtype": "float32",
        "crs": "EPSG:32633",
        "transform": rasterio.Affine(10, 0, 0, 0, -10, 30),
        "nodata": -9999.0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    dates = tmp_path / "d.txt"
    dates.write_text("2020-01-01\n2020-01-02\n")
    with open_time_series(path, dates, ["a", "b"]) as series:
        _, valid = series.read()
    expected = np.ones((3, 5, 2), dtype=bool)
    expected[0, 0, 0] = False
    expected[2, 4, 1] = False
    np.testing.assert_array_equal(valid, expected)


def test_single_band_mask_applies_to_every_date(tiny_dataset: dict, tmp_path: Path) -> None:
    one = np.zeros((1, 20, 24))
    one[0, 5, 7] = 1
    mask = write_stack(tmp_path / "one.tif", one, tiny_dataset["transform"], dtype="uint8")
    masks = [{"path": str(mask), "invalid_values": [1]}]
    with open_time_series(
        tiny_dataset["raster"], tiny_dataset["dates_file"], ["b1", "b2"], masks=masks
    ) as series:
        _, valid = series.read()
    assert (~valid[5, 7]).all()
    assert valid.sum() == valid.size - 6


def test_valid_values_mask_and_cloud_mask_combine(tiny_dataset: dict, tmp_path: Path) -> None:
    data = np.ones((6, 20, 24))
    data[4, 10:12, 20:22] = 0  # no data at date 4 in a 2 x 2 block
    data[2, 0, 23] = 2  # any value other than the valid ones is invalid
    is_data = write_stack(tmp_path / "is_data.tif", data, tiny_dataset["transform"], dtype="uint8")
    masks = [
        {"path": str(tiny_dataset["cloud"]), "invalid_values": [1]},
        {"path": str(is_data), "valid_values": [1]},
    ]
    with open_time_series(
        tiny_dataset["raster"], tiny_dataset["dates_file"], ["b1", "b2"], masks=masks
    ) as series:
        _, valid = series.read()
    expected = np.ones((20, 24, 6), dtype=bool)
    expected[:, :12, 2] = False  # the fixture's clouds
    expected[10:12, 20:22, 4] = False
    expected[0, 23, 2] = False
    np.testing.assert_array_equal(valid, expected)


def test_mask_config_needs_exactly_one_convention(tiny_dataset: dict) -> None:
    cloud = str(tiny_dataset["cloud"])
    for spec in ({"path": cloud}, {"path": cloud, "invalid_values": [1], "valid_values": [0]}):
        with pytest.raises(ConfigError, match="exactly one of invalid_values"):
            open_time_series(
                tiny_dataset["raster"], tiny_dataset["dates_file"], ["b1", "b2"], masks=[spec]
            )


# ---------------------------------------------------------------- block windows


@pytest.mark.parametrize(
    ("width", "height", "chunk"), [(24, 20, 8), (23, 17, 5), (7, 3, 100), (1, 1, 1), (10, 4, 1)]
)
def test_block_windows_cover_grid_exactly_once(width: int, height: int, chunk: int) -> None:
    windows = block_windows(width, height, chunk)
    cover = np.zeros((height, width), dtype=int)
    for w in windows:
        assert 0 < w.width <= chunk and 0 < w.height <= chunk
        assert w.col_off >= 0 and w.row_off >= 0
        assert w.col_off + w.width <= width and w.row_off + w.height <= height
        cover[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert sum(w.width * w.height for w in windows) == width * height
    assert (cover == 1).all()
    assert len(windows) == -(-width // chunk) * -(-height // chunk)


def test_block_windows_rejects_non_positive_size() -> None:
    with pytest.raises(ConfigError, match="chunk_size"):
        block_windows(10, 10, 0)


# ---------------------------------------------------------------- reference polygons


def _grid_bounds(ds: dict) -> tuple[float, float, float, float]:
    tr = ds["transform"]
    return (tr.c, tr.f + tr.e * 20, tr.c + tr.a * 24, tr.f)


def test_string_labels_map_to_sorted_codes(tiny_dataset: dict, tmp_path: Path) -> None:
    gdf = tiny_dataset["gdf"].copy()
    labels = ["wheat", "barley", "maize", "barley", "", "wheat", "0", "maize", None]
    gdf["crop"] = labels
    path = tmp_path / "strings.gpkg"
    gdf.to_file(path, driver="GPKG")
    fids = pyogrio.read_dataframe(path, fid_as_index=True).index.to_numpy()
    ref = read_reference(path, "crop", "EPSG:32633", _grid_bounds(tiny_dataset))
    assert ref.string_labels
    assert ref.class_names == {1: "barley", 2: "maize", 3: "wheat"}
    got = dict(zip(ref.polygons["polygon_id"].tolist(), ref.polygons["code"].tolist(), strict=True))
    code_of = {"barley": 1, "maize": 2, "wheat": 3}
    expected = {int(fids[i]): code_of[lab] for i, lab in enumerate(labels) if lab in code_of}
    assert got == expected  # "", "0" and missing labels are dropped


def test_label_zero_polygons_are_dropped(tiny_dataset: dict, tmp_path: Path) -> None:
    gdf = tiny_dataset["gdf"].copy()
    gdf.loc[[0, 4], "code"] = 0
    path = tmp_path / "zeros.gpkg"
    gdf.to_file(path, driver="GPKG")
    fids = pyogrio.read_dataframe(path, fid_as_index=True).index.to_numpy()
    ref = read_reference(path, "code", "EPSG:32633", _grid_bounds(tiny_dataset))
    assert not ref.string_labels
    assert sorted(ref.polygons["polygon_id"]) == sorted(np.delete(fids, [0, 4]).tolist())
    assert (ref.polygons["code"] > 0).all()
    assert ref.polygons["code"].dtype == np.int64 and ref.polygons["polygon_id"].dtype == np.int64
    assert ref.class_names == {1: "1", 2: "2", 3: "3"}


def test_polygons_outside_raster_are_ignored(tiny_dataset: dict, tmp_path: Path) -> None:
    gdf = tiny_dataset["gdf"].copy()
    gdf.loc[len(gdf)] = {"code": 1, "name": "far", "geometry": box(0, 0, 10, 10)}
    path = tmp_path / "one_far.gpkg"
    gdf.to_file(path, driver="GPKG")
    ref = read_reference(path, "code", "EPSG:32633", _grid_bounds(tiny_dataset))
    assert len(ref.polygons) == 9


def test_non_polygon_geometry_is_rejected(tiny_dataset: dict, tmp_path: Path) -> None:
    gdf = tiny_dataset["gdf"].copy()
    gdf.loc[3, "geometry"] = gdf.geometry[3].centroid
    path = tmp_path / "point.gpkg"
    gdf.to_file(path, driver="GPKG", engine="pyogrio", promote_to_multi=False)
    fid = int(pyogrio.read_dataframe(path, fid_as_index=True).index[3])
    with pytest.raises(InputDataError, match=rf"not polygons.*\({fid}, 'Point'\)"):
        read_reference(path, "code", "EPSG:32633", _grid_bounds(tiny_dataset))


def test_rasterize_matches_fixture_labels(tiny_dataset: dict) -> None:
    gdf = tiny_dataset["gdf"]
    burnt = rasterize_polygons(gdf, tiny_dataset["transform"], 24, 20)
    assert burnt.shape == (20, 24) and burnt.dtype == np.int64
    codes = np.append(gdf["code"].to_numpy(), 0)  # row -1 -> no label
    np.testing.assert_array_equal(codes[burnt], tiny_dataset["label"])
    assert (np.bincount(burnt[burnt >= 0], minlength=9) == 24).all()
    empty = rasterize_polygons(gdf.iloc[:0], tiny_dataset["transform"], 24, 20)
    assert (empty == -1).all()


def test_polygons_in_another_crs_are_reprojected(tiny_dataset: dict, tmp_path: Path) -> None:
    gdf = tiny_dataset["gdf"]
    geographic = gdf.to_crs("EPSG:4326")
    path = tmp_path / "wgs84.gpkg"
    geographic.to_file(path, driver="GPKG")
    # the file really is in degrees: its bounds are nowhere near the UTM ones
    assert pyogrio.read_info(path)["crs"] == "EPSG:4326"
    assert abs(pyogrio.read_info(path)["total_bounds"][0]) < 180

    with rasterio.open(tiny_dataset["raster"]) as src:
        raster_crs, bounds = src.crs, tuple(src.bounds)
    ref = read_reference(path, "code", raster_crs, bounds)
    assert ref.polygons.crs == raster_crs
    got = rasterize_polygons(ref.polygons, tiny_dataset["transform"], 24, 20)
    orig = read_reference(tiny_dataset["reference"], "code", raster_crs, bounds)
    want = rasterize_polygons(orig.polygons, tiny_dataset["transform"], 24, 20)
    np.testing.assert_array_equal(got, want)
    codes = np.append(ref.polygons["code"].to_numpy(), 0)
    np.testing.assert_array_equal(codes[got], tiny_dataset["label"])


def test_burn_polygons_values_last_wins_and_empty() -> None:
    from affine import Affine

    transform = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 4.0)  # 4 x 4 px, 1 unit a pixel
    big, small = box(0, 0, 4, 4), box(0, 0, 2, 2)  # small covers the bottom-left 2 x 2
    burnt = burn_polygons([big, small], [7, 0], transform, 4, 4)
    assert burnt.dtype == np.int64 and burnt.shape == (4, 4)
    assert (burnt[2:, :2] == 0).all() and (burnt[:2] == 7).all() and (burnt[:, 2:] == 7).all()
    assert (burn_polygons([], [], transform, 4, 3) == -1).all()
    with pytest.raises(ValueError):
        burn_polygons([big], [1, 2], transform, 4, 4)


def test_readers_share_the_base_members(tiny_dataset: dict) -> None:
    with open_time_series(tiny_dataset["raster"], tiny_dataset["dates_file"], ["a", "b"]) as ts:
        assert isinstance(ts, RasterReader) and isinstance(ts, TimeSeriesSource)
        assert (ts.n_dates, ts.n_channels) == (6, 2)
        assert ts.profile() == {
            "driver": "GTiff", "crs": ts.crs, "transform": ts.transform, "width": 24,
            "height": 20,
        }
        text = repr(ts)
        assert text.startswith("TimeSeriesRaster(") and "dates=6" in text and "24x20 px" in text
        ts.read(Window(0, 0, 2, 2))
        assert ts._handles
    assert not ts._handles  # closed by the context manager


def test_io_does_not_import_features() -> None:
    """Layering: readers (i2dl.io) never import the feature pipeline (i2dl.features)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "i2dl" / "io"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("i2dl.features")]
    assert not offenders


def test_integer_stack_reads_like_the_same_values_stored_as_float(tmp_path: Path) -> None:
    """The integer read path (native read, nodata on integers, one cast) and the float path
    (NaN/inf scan) give the same values and validity, tiled and compressed, in a window."""
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    t, c, h, w = 4, 3, 50, 60
    a = rng.integers(-5, 100, (t * c, h, w)).astype(np.int16)
    a[a < 0] = -9999
    dates = tmp_path / "dates.txt"
    dates.write_text("".join(f"{dt.date(2020, 1, 1 + i).isoformat()}\n" for i in range(t)))
    out = {}
    for dtype in ("int16", "float32"):
        path = tmp_path / f"stack_{dtype}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=t * c,
                           dtype=dtype, nodata=-9999, crs="EPSG:32631",
                           transform=from_origin(0, 0, 10, 10), tiled=True, blockxsize=16,
                           blockysize=16, compress="deflate") as dst:
            dst.write(a.astype(dtype))
        with open_time_series(path, dates, ["a", "b", "c"]) as series:
            out[dtype] = series.read(Window(3, 5, 40, 30))
    (xi, vi), (xf, vf) = out["int16"], out["float32"]
    assert xi.dtype == np.float32 and xi.shape == (30, 40, t, c)
    np.testing.assert_array_equal(vi, vf)
    np.testing.assert_array_equal(xi, xf)
    expected = a.reshape(t, c, h, w)[:, :, 5:35, 3:43].transpose(2, 3, 0, 1)
    np.testing.assert_array_equal(vi, (expected != -9999).all(axis=-1))
