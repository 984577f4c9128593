"""Stage ``report``: aggregate runs (``python -m i2dl report DIR [DIR ...] [--out OUT]``).

Statistics and outputs are those of :mod:`i2dl.evaluation.aggregate` (iota2's ``RESULTS.txt``:
mean +- std and 95 % Student t interval of OA, kappa, macro F1 and per-class F1; confusion
matrix summed over runs); several DIRs are compared side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from i2dl.errors import I2dlError
from i2dl.evaluation.aggregate import aggregate, find_runs
from i2dl.evaluation.results_files import (
    COMPARISON_MD,
    RESULTS_TXT,
    write_comparison,
    write_results,
)
from i2dl.io.layout import SUMMARY_JSON


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m i2dl report``."""
    p = argparse.ArgumentParser(
        prog="python -m i2dl report",
        description=(
            "Aggregate i2dl runs (mean +- std and 95% Student t CI of OA, kappa, "
            "macro F1 and per-class F1; confusion matrix summed over runs), as "
            "iota2's RESULTS.txt. One DIR: report of its runs. Several DIRs: one "
            "report per DIR (each DIR = one experiment group) plus a comparison."
        ),
    )
    p.add_argument(
        "dirs", nargs="+", metavar="DIR",
        help="run folder, or folder with run folders up to 2 levels below "
        "(e.g. a Hydra multirun directory)",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, default=None,
        help="output folder: with one DIR, where the report goes (default: DIR); "
        "with several, where comparison.md/.csv go (default: the deepest folder "
        "containing every DIR, i.e. their common parent)",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m i2dl report DIR [DIR ...] [--out OUT]``.

    One DIR: aggregate its runs, write the report files
    (:func:`i2dl.evaluation.results_files.write_results`) into OUT (default DIR itself, or the
    run's folder when DIR is a summary.json),
    print RESULTS.txt. Several DIRs: aggregate each DIR as one experiment group,
    write each group's report into that DIR, write comparison.md / comparison.csv
    into OUT (default: the common parent folder of the DIRs, ``os.path.commonpath``
    of their absolute paths) and print the comparison. A DIR given twice is used
    once.

    Args:
        argv: arguments after ``report``; None reads ``sys.argv[1:]``.

    Returns:
        0 on success; 2 on a usage error or an i2dl error (message on stderr,
        e.g. no run folder in DIR); 1 when an output cannot be written (OSError).
    """
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or usage error (2)
        return int(exc.code or 0)
    try:
        dirs = list(dict.fromkeys(Path(d).resolve() for d in args.dirs))
        dirs = [d.parent if d.is_file() and d.name == SUMMARY_JSON else d for d in dirs]
        if len(dirs) == 1:
            agg = aggregate(find_runs(dirs[0]))
            agg["root"] = str(dirs[0])
            out = args.out if args.out is not None else dirs[0]
            written = write_results(out, agg)
            print(written[RESULTS_TXT].read_text(encoding="utf-8"), end="")
            print(f"\nreport written to {Path(out)}")
            return 0
        groups = []
        for d in dirs:
            agg = aggregate(find_runs(d))
            agg["root"] = str(d)
            write_results(d, agg)
            groups.append(agg)
        out = args.out if args.out is not None else Path(os.path.commonpath(dirs))
        written = write_comparison(out, groups)
        print(written[COMPARISON_MD].read_text(encoding="utf-8"), end="")
        print(
            f"\nper-group reports written to {', '.join(map(str, dirs))}; "
            f"comparison written to {Path(out)}"
        )
        return 0
    except I2dlError as exc:
        print(f"i2dl report: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"i2dl report: cannot write the report: {exc}", file=sys.stderr)
        return 1
