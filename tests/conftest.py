"""Puts this folder on ``sys.path`` (pytest does so for every conftest's folder), so that test
modules in any subfolder can import the shared builders (``layer_patterns``, ``export_cases``)."""
from __future__ import annotations

import pytest

from export_cases import CASES, NoisyCase, make_noisy


@pytest.fixture(params=sorted(CASES))
def noisy(request: pytest.FixtureRequest) -> NoisyCase:
    """Every noisy model of ``export_cases``, trained briefly and partly pruned."""
    return make_noisy(request.param)
