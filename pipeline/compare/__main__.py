"""``python -m pipeline.compare ARGS`` is ``bmrs compare ARGS``."""
import sys

from pipeline.compare.command import main

# Guarded: a local Dask cluster's worker processes start by importing this module again (spawn),
# and must not run the command a second time.
if __name__ == "__main__":
    sys.exit(main())
