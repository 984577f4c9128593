"""``python -m i2dl <stage> [hydra overrides]`` (also the ``i2dl`` console script)."""

from __future__ import annotations

import sys

from i2dl.cli import STAGES

USAGE = (
    "usage: python -m i2dl {" + "|".join(STAGES) + "} [hydra overrides]\n"
    "       python -m i2dl report RUN_OR_MULTIRUN_DIR [DIR ...] [--out DIR]\n"
    "  train    the main job: prepare -> fit -> evaluate -> infer "
    "(e.g. python -m i2dl train +experiment=ltae)\n"
    "  prepare  rasters + reference polygons -> Zarr sample store\n"
    "  fit      train the model on the store\n"
    "  evaluate best checkpoint on the val split -> report/\n"
    "  infer    chunked classification of the raster -> maps/\n"
    "  features-map  feature time series (bands, indices, gap-filled dates, user and\n"
    "           external features) per chunk, per tile, and their mosaic -> final/\n"
    "  report   aggregate runs (mean +- std, 95% interval, summed confusion matrix) and\n"
    "           compare experiments side by side\n"
    "A stage run alone on an existing run folder: add hydra.run.dir=<run folder>."
)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a stage; print the usage for an unknown one.

    Args:
        argv: ``[stage, *overrides]``; None reads ``sys.argv[1:]``.

    Returns:
        Exit status (0 success, 2 usage error).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "report":
        from i2dl.aggregate import main as report_main

        return report_main(args[1:])
    if not args or args[0] not in STAGES:
        if args and args[0] not in ("-h", "--help"):
            print(f"unknown stage {args[0]!r}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    from i2dl.cli import run_stage

    run_stage(args[0], args[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
