"""``python -m pipeline.compare ARGS`` is ``bmrs compare ARGS``."""
import sys

from pipeline.compare.command import main

sys.exit(main())
