"""Tests of i2dl.evaluation.run_report and i2dl.io.nomenclature.

Expected values are computed by hand (fractions written out below) or with
scikit-learn as an independent implementation, never with the code under test.
"""

from __future__ import annotations

import json
import logging
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from i2dl.errors import InputDataError, InputFileNotFoundError
from i2dl.evaluation.run_report import compute_metrics, format_metrics, write_report
from i2dl.io.nomenclature import class_names, read_nomenclature

DATA = Path(
    os.environ.get(
        "I2DL_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
    )
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Hand-made case: codes 2, 5, 8; 10 samples.
CODES = [2, 5, 8]
NAMES = ["wheat", "forest", "urban area"]
Y_TRUE = [2, 2, 2, 2, 5, 5, 5, 8, 8, 8]
Y_PRED = [2, 2, 5, 8, 5, 5, 2, 8, 8, 5]
# rows = reference 2, 5, 8; columns = predicted 2, 5, 8 (counted by hand)
HAND_CM = [
    [2, 1, 1],
    [1, 2, 0],
    [0, 1, 2],
]
# OA = 6 / 10; row sums 4, 3, 3; column sums 3, 4, 3
# p_e = (4*3 + 3*4 + 3*3) / 100 = 33 / 100; kappa = (0.6 - 0.33) / (1 - 0.33) = 27 / 67
HAND_OA = Fraction(6, 10)
HAND_KAPPA = Fraction(27, 67)
HAND_PRECISION = [Fraction(2, 3), Fraction(2, 4), Fraction(2, 3)]  # TP / column sum
HAND_RECALL = [Fraction(2, 4), Fraction(2, 3), Fraction(2, 3)]  # TP / row sum
HAND_F1 = [Fraction(4, 7), Fraction(4, 7), Fraction(4, 6)]  # 2TP / (2TP + FP + FN)
TOL = 1e-6


def approx(x):
    return pytest.approx(float(x), abs=TOL)


# ----------------------------------------------------------------- compute_metrics


def test_hand_made_case():
    m = compute_metrics(np.array(Y_TRUE), np.array(Y_PRED), CODES, NAMES)
    assert m["n_samples"] == 10
    assert m["confusion_matrix"] == HAND_CM
    assert m["oa"] == approx(HAND_OA)
    assert m["kappa"] == approx(HAND_KAPPA)
    assert [c["code"] for c in m["classes"]] == CODES
    assert [c["name"] for c in m["classes"]] == NAMES
    assert [c["support"] for c in m["classes"]] == [4, 3, 3]
    for c, p, r, f in zip(m["classes"], HAND_PRECISION, HAND_RECALL, HAND_F1, strict=True):
        assert c["precision"] == approx(p)
        assert c["recall"] == approx(r)
        assert c["f1"] == approx(f)
    assert m["precision_macro"] == approx(sum(HAND_PRECISION) / 3)
    assert m["recall_macro"] == approx(sum(HAND_RECALL) / 3)
    assert m["f1_macro"] == approx(sum(HAND_F1) / 3)
    # strict JSON round trip
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_hand_made_case_against_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    m = compute_metrics(Y_TRUE, Y_PRED, CODES)
    assert m["kappa"] == approx(skm.cohen_kappa_score(Y_TRUE, Y_PRED))
    assert m["oa"] == approx(skm.accuracy_score(Y_TRUE, Y_PRED))
    assert m["f1_macro"] == approx(skm.f1_score(Y_TRUE, Y_PRED, average="macro"))
    np.testing.assert_array_equal(
        m["confusion_matrix"], skm.confusion_matrix(Y_TRUE, Y_PRED, labels=CODES)
    )


def test_class_order_follows_class_codes():
    """Rows/columns follow class_codes, not sorted codes; rows are the reference."""
    order = [8, 2, 5]
    m = compute_metrics(Y_TRUE, Y_PRED, order)
    perm = [CODES.index(c) for c in order]
    expected = np.asarray(HAND_CM)[np.ix_(perm, perm)]
    assert m["confusion_matrix"] == expected.tolist()
    assert [c["code"] for c in m["classes"]] == order
    assert [c["support"] for c in m["classes"]] == [3, 4, 3]
    # asymmetric probe: one sample of reference 8 predicted 2 -> row 8, column 2
    m2 = compute_metrics([8], [2], order)
    assert m2["confusion_matrix"] == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_random_case_against_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    codes = [11, 3, 7, 21, 4]
    y_true = rng.choice(codes, size=2000, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    noise = rng.random(2000) < 0.3
    y_pred = np.where(noise, rng.choice(codes, size=2000), y_true)
    m = compute_metrics(y_true, y_pred, codes)
    cm = np.asarray(m["confusion_matrix"])
    assert cm.sum() == m["n_samples"] == 2000
    np.testing.assert_array_equal(cm.sum(axis=1), [np.sum(y_true == c) for c in codes])
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y_true, y_pred, labels=codes))
    assert m["kappa"] == approx(skm.cohen_kappa_score(y_true, y_pred))
    assert m["oa"] == approx(np.mean(y_true == y_pred))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=codes)
    for i, c in enumerate(m["classes"]):
        assert c["precision"] == approx(p[i])
        assert c["recall"] == approx(r[i])
        assert c["f1"] == approx(f[i])
        assert c["support"] == s[i]
    assert m["f1_macro"] == approx(f.mean())


def test_absent_and_missed_classes():
    """Undefined values are None; macro averages use classes with support only."""
    codes = [1, 2, 3, 4]
    # 1: reference only, never predicted -> precision 0.0
    # 3: predicted but absent from the reference -> recall None, precision/F1 0.0
    # 4: absent from both -> all None
    y_true = [1, 1, 2, 2, 2]
    y_pred = [2, 3, 2, 2, 2]
    m = compute_metrics(y_true, y_pred, codes)
    assert m["confusion_matrix"] == [
        [0, 1, 1, 0],
        [0, 3, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
    c1, c2, c3, c4 = m["classes"]
    assert (c1["precision"], c1["recall"], c1["f1"], c1["support"]) == (0.0, 0.0, 0.0, 2)
    assert c2["precision"] == approx(Fraction(3, 4))
    assert c2["recall"] == approx(1)
    assert c2["f1"] == approx(Fraction(6, 7))
    assert (c3["precision"], c3["recall"], c3["f1"], c3["support"]) == (0.0, None, 0.0, 0)
    assert (c4["precision"], c4["recall"], c4["f1"], c4["support"]) == (None, None, None, 0)
    # macro over classes 1 and 2 only
    assert m["precision_macro"] == approx(Fraction(3, 8))
    assert m["recall_macro"] == approx(Fraction(1, 2))
    assert m["f1_macro"] == approx(Fraction(3, 7))
    assert m["oa"] == approx(Fraction(3, 5))
    json.dumps(m, allow_nan=False)


def test_single_class_perfect_kappa_undefined():
    m = compute_metrics([4, 4, 4], [4, 4, 4], [4])
    assert m["confusion_matrix"] == [[3]]
    assert m["oa"] == 1.0
    assert m["kappa"] is None
    # a one-class reference: the macro scores are undefined, not a perfect 1.0 (issue 21)
    assert m["f1_macro"] is None and "single class" in m["undefined"]
    json.dumps(m, allow_nan=False)


def test_unknown_code_raises_naming_it():
    with pytest.raises(InputDataError, match=r"y_pred.*\b9\b \(2 samples\)"):
        compute_metrics([2, 5, 8], [2, 9, 9], CODES)
    with pytest.raises(InputDataError, match=r"y_true.*\b0\b \(1 samples\)"):
        compute_metrics([0, 5, 8], [2, 5, 8], CODES)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "codes", "pattern"),
    [
        ([2, 5], [2], CODES, "samples"),
        ([], [], CODES, "empty"),
        ([[2, 5]], [[2, 5]], CODES, "1-D"),
        ([2.5, 5], [2, 5], CODES, "non-integer"),
        ([2, 5], [2, 5], [2, 5, 5], "more than once"),
        ([2, 5], [2, 5], [], "empty"),
    ],
)
def test_invalid_inputs(y_true, y_pred, codes, pattern):
    with pytest.raises(InputDataError, match=pattern):
        compute_metrics(y_true, y_pred, codes)


def test_names_from_mapping_and_wrong_length():
    m = compute_metrics(Y_TRUE, Y_PRED, CODES, {2: "wheat", 5: "forest"})
    assert [c["name"] for c in m["classes"]] == ["wheat", "forest", "8"]
    with pytest.raises(InputDataError, match="2 names but class_codes has 3"):
        compute_metrics(Y_TRUE, Y_PRED, CODES, ["a", "b"])


def test_float_codes_with_whole_values_accepted():
    m = compute_metrics(np.array(Y_TRUE, dtype=float), np.array(Y_PRED), CODES)
    assert m["confusion_matrix"] == HAND_CM


def test_format_metrics():
    names = ["a", "bb", "c", "d"]
    m = compute_metrics([1, 1, 2, 2, 2], [2, 3, 2, 2, 2], [1, 2, 3, 4], names)
    text = format_metrics(m)
    lines = text.splitlines()
    assert len(lines) == 2 + 4
    assert "OA 0.6000" in lines[0] and "kappa" in lines[0] and "macro F1 0.4286" in lines[0]
    assert lines[2].split()[:2] == ["1", "a"]
    # class 4 is absent from both: all values shown as "-", support 0
    assert lines[5].split() == ["4", "d", "-", "-", "-", "0"]


# -------------------------------------------------------------------- write_report


def test_write_report(tmp_path):
    out = tmp_path / "report" / "nested"
    m = write_report(out, Y_TRUE, Y_PRED, CODES, NAMES, title="unit test")
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "metrics.json",
    ]  # no temporary file left behind

    df = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    labels = ["2 wheat", "5 forest", "8 urban area"]
    assert list(df.index) == labels
    assert list(df.columns) == labels
    assert df.to_numpy().tolist() == HAND_CM
    assert np.issubdtype(df.to_numpy().dtype, np.integer)

    raw = (out / "confusion_matrix.png").read_bytes()
    assert raw.startswith(PNG_SIGNATURE)
    import matplotlib.image

    img = matplotlib.image.imread(out / "confusion_matrix.png")
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    assert img[..., :3].std() > 0  # not a blank image

    loaded = json.loads((out / "metrics.json").read_text())
    assert loaded == m
    assert loaded["confusion_matrix"] == HAND_CM


def test_write_report_overwrites_and_invalid_input_writes_nothing(tmp_path):
    write_report(tmp_path, Y_TRUE, Y_PRED, CODES)
    m = write_report(tmp_path, [2, 2], [2, 2], CODES)
    assert json.loads((tmp_path / "metrics.json").read_text())["n_samples"] == 2
    assert pd.read_csv(tmp_path / "confusion_matrix.csv", index_col=0).to_numpy().sum() == 2
    assert m["n_samples"] == 2

    empty = tmp_path / "bad"
    with pytest.raises(InputDataError):
        write_report(empty, [2, 3], [2, 2], CODES)
    assert not empty.exists() or not any(empty.iterdir())


def test_write_report_twenty_classes(tmp_path):
    rng = np.random.default_rng(1)
    codes = list(range(1, 21))
    y_true = rng.choice(codes, size=5000)
    y_pred = np.where(rng.random(5000) < 0.7, y_true, rng.choice(codes, size=5000))
    names = [f"land cover class number {c}" for c in codes]
    m = write_report(tmp_path, y_true, y_pred, codes, names)
    assert np.asarray(m["confusion_matrix"]).shape == (20, 20)
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(PNG_SIGNATURE)


# -------------------------------------------------------------------- nomenclature


def test_read_real_slovenia_nomenclature():
    path = DATA / "slovenia_s2_ndvi" / "nomenclature.txt"
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (set I2DL_DATA)")
    nom = read_nomenclature(path)
    assert nom == {
        1: "cultivated land",
        2: "forest",
        3: "grassland",
        4: "shrubland",
        5: "water",
        6: "wetlands",
        7: "tundra",
        8: "artificial surface",
        9: "bareland",
        10: "snow and ice",
    }


def test_read_nomenclature_comments_blank_lines_last_colon(tmp_path):
    path = tmp_path / "nom.txt"
    path.write_text(
        "# iota2 nomenclature\n\n  cultivated land : 11 \nurban: dense:42\n"
        "   \n# x:3\nwater:5\n",
        encoding="utf-8",
    )
    expected = {11: "cultivated land", 42: "urban: dense", 5: "water"}
    assert read_nomenclature(path) == expected


@pytest.mark.parametrize(
    ("content", "lineno", "pattern"),
    [
        ("forest:2\n# c\nwater\n", 3, "no ':'"),
        ("forest:2\nwater:five\n", 2, "not an integer"),
        ("\n:4\n", 2, "empty class name"),
        ("forest:-1\n", 1, "positive integer"),
    ],
)
def test_read_nomenclature_malformed_line(tmp_path, content, lineno, pattern):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputDataError) as err:
        read_nomenclature(path)
    msg = str(err.value)
    assert f"line {lineno}" in msg
    assert str(path) in msg
    assert pattern in msg
    assert "name:code" in msg or "renumber" in msg


def test_read_nomenclature_duplicate_code(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("forest:2\nwater:5\nconifers:2\n", encoding="utf-8")
    with pytest.raises(InputDataError, match=r"line 3.*code 2.*'forest' on line 1"):
        read_nomenclature(path)


def test_read_nomenclature_missing_and_empty(tmp_path):
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        read_nomenclature(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(InputDataError, match="no class entry"):
        read_nomenclature(empty)


def test_class_names_fallback_warns_once(caplog):
    nom = {1: "forest", 2: "water"}
    with caplog.at_level(logging.WARNING, logger="i2dl.io.nomenclature"):
        names = class_names(np.array([2, 7, 1, 9]), nom)
    assert names == ["water", "7", "forest", "9"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "7, 9" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="i2dl.io.nomenclature"):
        assert class_names([1, 3], None) == ["1", "3"]
        assert class_names([1], nom) == ["forest"]
    assert not caplog.records
