"""Read class colour tables and make default colours for classification maps.

iota2 colours its final map from a colour table file (``chain.color_table``): a plain
text file with one ``code R G B`` line per class, for example::

    # code  R   G   B
    1     255   0   0
    2       0 255   0
    3       0   0 255

where R, G and B are 0-255 integers (iota2 documentation, "Color table"). i2dl reads that
format with a little more freedom: values may be separated by white space or commas, blank
lines and lines starting with ``#`` are ignored, and code 0 (the no-data value of the
maps) may be given to choose the colour of no-data pixels.

It also reads the colours of a CSV class map such as the TempCNN/Formosat-2
``class_map.txt`` (header ``value,class,colour``, colours written ``#rrggbb``);
:func:`read_colour_table` recognises such a file by its ``value,`` header.

Classes without a colour table get :func:`default_colours`: a qualitative matplotlib
palette (``tab10`` up to 10 classes, ``tab20`` up to 20, the same choice as the map preview
of :mod:`i2dl.maps.preview`), assigned in increasing code order.
"""

from __future__ import annotations

import colorsys
import csv
import logging
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from matplotlib import colormaps

from i2dl.errors import InputDataError, InputFileNotFoundError

log = logging.getLogger(__name__)

#: An RGB colour, each component an int in 0..255.
RGB = tuple[int, int, int]

#: Largest class code a colour table may hold: GeoTIFF palettes exist for uint8 and
#: uint16 rasters only.
MAX_CODE = 65535

_TABLE_HINT = (
    "expected one 'code R G B' entry per line, e.g. '1 255 0 0' (an integer class code "
    "0-65535 then three integers 0-255, separated by spaces or commas; blank lines and "
    "lines starting with '#' are ignored)"
)
_CLASS_MAP_HINT = (
    "expected a CSV class map with a header such as 'value,class,colour' and rows such "
    "as '1,wheat,#ffff00' (integer code in the 'value' column, colour as #rrggbb)"
)
_HEX = re.compile(r"#?([0-9a-fA-F]{6})")
_SEP = re.compile(r"[\s,;]+")
_COLOUR_COLUMNS = ("colour", "color", "hex", "rgb")
_CODE_COLUMNS = ("value", "code")


def _read_text(path: Path, what: str, hint: str) -> str:
    """Read a UTF-8 text file (BOM accepted), turning OS errors into i2dl errors."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise InputFileNotFoundError(f"{what} {str(path)!r} does not exist; {hint}") from exc
    except IsADirectoryError as exc:
        raise InputFileNotFoundError(
            f"{what} path {str(path)!r} is a directory; give the path of the file itself"
        ) from exc
    except PermissionError as exc:
        raise InputFileNotFoundError(
            f"{what} {str(path)!r} cannot be read (permission denied); fix its permissions"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InputDataError(
            f"{what} {str(path)!r} is not UTF-8 text ({exc}); save it as UTF-8 plain text "
            f"({hint})"
        ) from exc


def _is_class_map(text: str) -> bool:
    """True when the first non-blank line is a CSV header starting with ``value,``."""
    for line in text.splitlines():
        if line.strip():
            return line.replace(" ", "").lower().startswith("value,")
    return False


def parse_hex_colour(text: str) -> RGB:
    """``'#rrggbb'`` (case-insensitive, ``#`` optional) -> ``(R, G, B)`` ints 0-255.

    Raises:
        ValueError: ``text`` is not six hexadecimal digits.
    """
    m = _HEX.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a #rrggbb hexadecimal colour")
    digits = m.group(1)
    return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))


def rgb_to_hex(rgb: Iterable[int]) -> str:
    """``(R, G, B)`` -> ``'#rrggbb'`` (lower case)."""
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _int_in(text: str, low: int, high: int, what: str, where: str, line: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InputDataError(
            f"{where}: {what} {text!r} in {line!r} is not an integer; {_TABLE_HINT}"
        ) from None
    if not low <= value <= high:
        raise InputDataError(
            f"{where}: {what} {value} in {line!r} is out of range, expected {low}-{high}; "
            f"{_TABLE_HINT}"
        )
    return value


def read_colour_table(path: str | Path) -> dict[int, RGB]:
    """Read an iota2 colour table (``code R G B`` lines) or the colours of a CSV class map.

    Format (iota2 ``color_table``): one ``code R G B`` entry per line, separated by white
    space or commas; blank lines and lines whose first non-blank character is ``#`` are
    ignored; code 0 (no-data) is allowed. A file whose first line starts with ``value,``
    is read as a CSV class map instead (:func:`read_class_map_colours`).

    Args:
        path: the colour table file.

    Returns:
        Mapping class code (0-65535) -> ``(R, G, B)`` (ints 0-255), in file order.

    Raises:
        InputFileNotFoundError: the file does not exist or cannot be read.
        InputDataError: not UTF-8, a line without exactly four values, a code or colour
            value that is not an integer or is out of range, a code given twice, or no
            entry at all. The message gives the file and the 1-based line number.
    """
    path = Path(path)
    text = _read_text(path, "colour table", _TABLE_HINT)
    if _is_class_map(text):
        return read_class_map_colours(path)
    colours: dict[int, RGB] = {}
    first_line: dict[int, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {lineno}"
        fields = [f for f in _SEP.split(line) if f]
        if len(fields) != 4:
            raise InputDataError(
                f"{where}: {len(fields)} value(s) in {line!r}, expected 4 (code R G B); "
                f"{_TABLE_HINT}"
            )
        code = _int_in(fields[0], 0, MAX_CODE, "class code", where, line)
        rgb = tuple(
            _int_in(v, 0, 255, f"{name} value", where, line)
            for name, v in zip("RGB", fields[1:], strict=True)
        )
        if code in colours:
            raise InputDataError(
                f"{where}: class code {code} already has a colour on line "
                f"{first_line[code]}; each code must appear once, remove one of the two lines"
            )
        colours[code] = rgb  # type: ignore[assignment]
        first_line[code] = lineno
    if not colours:
        raise InputDataError(f"colour table {str(path)!r} has no entry; {_TABLE_HINT}")
    log.debug("read %d colours from %s", len(colours), path)
    return colours


def read_class_map_colours(path: str | Path) -> dict[int, RGB]:
    """Read the colours of a CSV class map (e.g. Formosat-2 ``class_map.txt``).

    The file is a CSV with a header row. The code column is the one named ``value`` (or
    ``code``), else the first; the colour column is the one named ``colour`` (or
    ``color``, ``hex``, ``rgb``), holding ``#rrggbb`` hexadecimal colours.

    Args:
        path: the class map file.

    Returns:
        Mapping class code -> ``(R, G, B)`` (ints 0-255), in file order.

    Raises:
        InputFileNotFoundError: the file does not exist or cannot be read.
        InputDataError: no colour column, a row with a bad code or colour, a code given
            twice, or no row at all (file and line given).
    """
    path = Path(path)
    text = _read_text(path, "class map", _CLASS_MAP_HINT)
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    colours: dict[int, RGB] = {}
    first_line: dict[int, int] = {}
    code_col = colour_col = -1
    for row in reader:
        lineno = reader.line_num
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue  # blank or comment row
        where = f"{path}, line {lineno}"
        if header is None:
            header = [c.lower() for c in cells]
            colour_col = next((header.index(n) for n in _COLOUR_COLUMNS if n in header), -1)
            code_col = next((header.index(n) for n in _CODE_COLUMNS if n in header), 0)
            if colour_col < 0:
                raise InputDataError(
                    f"{where}: header {row!r} has no colour column (one of "
                    f"{', '.join(_COLOUR_COLUMNS)}); {_CLASS_MAP_HINT}"
                )
            continue
        if len(cells) <= max(code_col, colour_col):
            raise InputDataError(
                f"{where}: {len(cells)} column(s) in {','.join(row)!r}, the header has "
                f"{len(header)}; {_CLASS_MAP_HINT}"
            )
        try:
            code = int(cells[code_col])
        except ValueError:
            raise InputDataError(
                f"{where}: class code {cells[code_col]!r} is not an integer; {_CLASS_MAP_HINT}"
            ) from None
        if not 0 <= code <= MAX_CODE:
            raise InputDataError(
                f"{where}: class code {code} is out of range, expected 0-{MAX_CODE}"
            )
        try:
            rgb = parse_hex_colour(cells[colour_col])
        except ValueError:
            raise InputDataError(
                f"{where}: colour {cells[colour_col]!r} of class {code} is not a #rrggbb "
                f"hexadecimal colour; {_CLASS_MAP_HINT}"
            ) from None
        if code in colours:
            raise InputDataError(
                f"{where}: class code {code} already has a colour on line "
                f"{first_line[code]}; each code must appear once, remove one of the two rows"
            )
        colours[code] = rgb
        first_line[code] = lineno
    if not colours:
        raise InputDataError(f"class map {str(path)!r} has no class row; {_CLASS_MAP_HINT}")
    log.debug("read %d colours from class map %s", len(colours), path)
    return colours


def _rgb(values: Sequence[float]) -> RGB:
    """The first three values as an ``(R, G, B)`` tuple of ints."""
    return int(values[0]), int(values[1]), int(values[2])


def _palette(n: int) -> list[RGB]:
    """``n`` distinct qualitative colours: tab10 / tab20 / tab20+tab20b+tab20c, then hues."""
    names = ["tab10"] if n <= 10 else ["tab20"] if n <= 20 else ["tab20", "tab20b", "tab20c"]
    colours = [
        _rgb([round(v * 255) for v in colormaps[name](i)[:3]])
        for name in names
        for i in range(colormaps[name].N)  # the listed colours, in order
    ]
    i = 0
    while len(colours) < n:  # golden-ratio hue steps: distinct, deterministic
        h = (i * 0.618033988749895) % 1.0
        s, v = (0.65, 0.85) if i % 2 == 0 else (0.45, 0.65)
        colours.append(_rgb([round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v)]))
        i += 1
    return colours[:n]


def default_colours(codes: Iterable[int], exclude: Collection[RGB] = ()) -> dict[int, RGB]:
    """A stable qualitative colour for every class code.

    The codes are sorted and given the colours of matplotlib's ``tab10`` (up to 10
    codes) or ``tab20`` (up to 20) palette in order, as the map preview does; above 20,
    ``tab20b`` and ``tab20c`` follow, then golden-ratio hue steps. The result depends on
    the set of codes only, never on their order or on a random state.

    Args:
        codes: class codes (ints; duplicates and order ignored).
        exclude: colours not to use (e.g. those a colour table already gives other
            classes); palette colours in it are skipped.

    Returns:
        Mapping code -> ``(R, G, B)``, codes in increasing order.
    """
    unique = sorted({int(c) for c in codes})
    avoid = {_rgb(c) for c in exclude}
    n = len(unique)
    palette: list[RGB] = []
    size = n
    while len(palette) < n:
        palette = [c for c in _palette(size) if c not in avoid]
        size += max(1, n - len(palette))
    return dict(zip(unique, palette[:n], strict=True))


def resolve_colours(
    class_codes: Iterable[int], colour_table: dict[int, RGB] | None = None
) -> dict[int, RGB]:
    """Colours of the classes: from the colour table, default colours for the rest.

    Args:
        class_codes: the K class codes of the map.
        colour_table: code -> ``(R, G, B)`` (e.g. :func:`read_colour_table`), or None.

    Returns:
        Mapping code -> ``(R, G, B)`` for every class code, in the order given. Codes
        missing from the table get :func:`default_colours` (avoiding the table's
        colours); one warning lists them.
    """
    codes = [int(c) for c in class_codes]
    if colour_table is None:
        palette = default_colours(codes)
        return {c: palette[c] for c in codes}
    missing = [c for c in codes if c not in colour_table]
    defaults: dict[int, RGB] = {}
    if missing:
        used = {_rgb(colour_table[c]) for c in codes if c in colour_table}
        defaults = default_colours(missing, exclude=used)
        log.warning(
            "class code(s) %s have no colour in the colour table (which has codes %s); "
            "they get default colours %s. Add them to the colour table to choose",
            ", ".join(map(str, missing)),
            ", ".join(map(str, sorted(colour_table))),
            ", ".join(f"{c}={rgb_to_hex(defaults[c])}" for c in missing),
        )
    extra = sorted(set(colour_table) - set(codes) - {0})
    if extra:
        log.debug("colour table codes %s are not classes of the map; ignored", extra)
    return {
        c: _rgb(colour_table[c]) if c in colour_table else defaults[c]
        for c in codes
    }
