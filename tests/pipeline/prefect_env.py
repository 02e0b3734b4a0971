"""The environment every `bmrs` subprocess in these tests runs under."""
from __future__ import annotations

import os
from pathlib import Path


def prefect_environment(home: Path) -> dict[str, str]:
    """The test process's environment with a private Prefect home and cache under ``home``."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        BMRS_CACHE_DIR=str(home / "cache"),
        BMRS_COMPILE="0",  # a tiny model: compiling the noise kernels costs more than it saves
    )
    env.pop("PREFECT_API_URL", None)
    return env
