"""``bmrs compare``: several methods of one flow on the same data split and dense reference, in one
directory and one report. ``methods`` parses the method specs, ``plan`` lays out and reuses the run
directories and shares the dense baseline, ``runs`` makes (or reuses) one run, serially or on a
Dask worker (``pipeline.sweep_flow``), ``command`` is the subcommand. Importing this package
is light (no torch, no Prefect), so the CLI can build its parser from it."""
from pipeline.compare.command import add_compare_parser, compare

__all__ = ["add_compare_parser", "compare"]
