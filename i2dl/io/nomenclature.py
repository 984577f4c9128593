"""Read iota2 nomenclature files (class code -> class name).

iota2 describes the classes of a land-cover nomenclature in a plain text file with one
``name:code`` entry per line, for example::

    # comments and blank lines are ignored
    cultivated land:1
    forest:2

This is the format iota2 passes as ``chain.nomenclature_path`` and uses to label the
confusion matrices and the colour table of its outputs (iota2 documentation, "Output
files" / ``nomenclature_path``). Names may contain spaces and even colons: the code is
what follows the **last** colon of the line.

Codes must be positive integers: iota2 writes 0 as the no-data value of its
classification maps, so a class 0 could not be told apart from "not classified".
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from i2dl.errors import InputDataError, InputFileNotFoundError

log = logging.getLogger(__name__)

_FORMAT_HINT = (
    "expected one 'name:code' entry per line, e.g. 'cultivated land:1' "
    "(a name, a colon, then a positive integer code; blank lines and lines starting "
    "with '#' are ignored)"
)


def read_nomenclature(path: str | Path) -> dict[int, str]:
    """Read an iota2 nomenclature file.

    Format (iota2 ``nomenclature_path``): one ``name:code`` entry per line; leading and
    trailing white space is stripped; blank lines and lines whose first non-blank
    character is ``#`` are ignored; the line is split on its LAST colon, so names may
    contain spaces and colons. The file is read as UTF-8 (a byte-order mark is
    accepted).

    Args:
        path: path of the nomenclature text file.

    Returns:
        Mapping class code (int > 0) -> class name (non-empty str), in file order.

    Raises:
        InputFileNotFoundError: the file does not exist or cannot be read.
        InputDataError: the file is not UTF-8 text, a line has no colon, an empty name,
            a code that is not a positive integer, a code already used on an earlier
            line, or the file has no entry at all. The message gives the file and the
            1-based line number.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise InputFileNotFoundError(
            f"nomenclature file {str(path)!r} does not exist; give the path of an "
            f"iota2 nomenclature text file ({_FORMAT_HINT})"
        ) from exc
    except IsADirectoryError as exc:
        raise InputFileNotFoundError(
            f"nomenclature path {str(path)!r} is a directory; give the path of the "
            "nomenclature text file itself"
        ) from exc
    except PermissionError as exc:
        raise InputFileNotFoundError(
            f"nomenclature file {str(path)!r} cannot be read (permission denied); "
            "fix its permissions or copy it somewhere readable"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InputDataError(
            f"nomenclature file {str(path)!r} is not UTF-8 text ({exc}); save it as "
            f"UTF-8 plain text ({_FORMAT_HINT})"
        ) from exc

    codes: dict[int, str] = {}
    first_line: dict[int, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {lineno}"
        name, colon, code_text = line.rpartition(":")
        if not colon:
            raise InputDataError(f"{where}: no ':' in {line!r}; {_FORMAT_HINT}")
        name = name.strip()
        code_text = code_text.strip()
        if not name:
            raise InputDataError(
                f"{where}: empty class name in {line!r}; {_FORMAT_HINT}"
            )
        try:
            code = int(code_text)
        except ValueError:
            raise InputDataError(
                f"{where}: class code {code_text!r} in {line!r} is not an integer; "
                f"{_FORMAT_HINT}"
            ) from None
        if code <= 0:
            raise InputDataError(
                f"{where}: class code {code} in {line!r} must be a positive integer "
                "(iota2 writes 0 as the no-data value of classification maps); "
                "renumber the class"
            )
        if code in codes:
            raise InputDataError(
                f"{where}: class code {code} ({name!r}) is already used by "
                f"{codes[code]!r} on line {first_line[code]}; each code must appear "
                "once, fix or remove one of the two lines"
            )
        codes[code] = name
        first_line[code] = lineno

    if not codes:
        raise InputDataError(
            f"nomenclature file {str(path)!r} has no class entry; {_FORMAT_HINT}"
        )
    dup_names = sorted(n for n, k in Counter(codes.values()).items() if k > 1)
    if dup_names:
        log.warning(
            "nomenclature %s: several codes share the name(s) %s; reports will not "
            "tell them apart by name",
            path,
            ", ".join(repr(n) for n in dup_names),
        )
    log.debug("read %d classes from nomenclature %s", len(codes), path)
    return codes


def class_names(
    codes: Sequence[int], nomenclature: Mapping[int, str] | None
) -> list[str]:
    """Names of class codes, falling back to the code itself.

    Args:
        codes: K class codes (ints, numpy integers accepted).
        nomenclature: code -> name, e.g. from :func:`read_nomenclature`, or None when
            no nomenclature is available (then every name is ``str(code)``, silently).

    Returns:
        K names, in the order of ``codes``; ``str(code)`` for the codes the
        nomenclature lacks. One warning listing all such codes is logged per call.
    """
    codes = [int(c) for c in codes]
    if nomenclature is None:
        return [str(c) for c in codes]
    names: list[str] = []
    missing: list[int] = []
    for code in codes:
        name = nomenclature.get(code)
        if name is None:
            missing.append(code)
            name = str(code)
        names.append(name)
    if missing:
        log.warning(
            "class code(s) %s are not in the nomenclature (which has codes %s); they "
            "are labelled by their code. Add them to the nomenclature file to name "
            "them",
            ", ".join(map(str, missing)),
            ", ".join(map(str, sorted(nomenclature))),
        )
    return names


def read_class_names(path: str | Path) -> dict[int, str]:
    """Class names from an iota2 nomenclature file or a CSV class map.

    A file whose first line is a CSV header starting with ``value,`` (e.g. the TempCNN
    ``class_map.txt``: ``value,class,colour``) is read as a class map (code in the first
    column, name in the second); so is a headerless ``code,name`` CSV (first line an
    integer, a comma and no colon, e.g. the ``class_map.txt`` of the UCR Crop and sits
    MOD13Q1 tables); anything else as an iota2 ``name:code`` nomenclature
    (:func:`read_nomenclature`).

    Raises:
        InputFileNotFoundError: the file does not exist.
        InputDataError: malformed content (file and line given).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"nomenclature file {path} does not exist (data.nomenclature)")
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    has_header = first.replace(" ", "").lower().startswith("value,")
    headerless = ":" not in first and first.split(",")[0].strip().isdigit() and "," in first
    if not (has_header or headerless):
        return read_nomenclature(path)
    names: dict[int, str] = {}
    start = next(i for i, ln in enumerate(lines) if ln.strip()) + (1 if has_header else 0)
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        try:
            code = int(cells[0])
            name = cells[1]
        except (ValueError, IndexError):
            raise InputDataError(
                f"{path}, line {lineno}: expected `code,name[,...]`, got {line!r}"
            ) from None
        if code in names:
            raise InputDataError(
                f"{path}, line {lineno}: class code {code} ({name!r}) is already used by "
                f"{names[code]!r}; each code must appear once"
            )
        names[code] = name
    return names
