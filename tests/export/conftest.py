from __future__ import annotations

import pytest

from export_cases import CASES, NoisyCase, make_noisy


@pytest.fixture(params=sorted(CASES))
def noisy(request: pytest.FixtureRequest) -> NoisyCase:
    return make_noisy(request.param)
