"""Puts this folder on ``sys.path`` (pytest does so for every conftest's folder), so that test
modules in any subfolder can import the shared builders (``layer_patterns``, ``export_cases``)."""
from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from export_cases import CASES, NoisyCase, make_noisy


@pytest.fixture(params=sorted(CASES))
def noisy(request: pytest.FixtureRequest) -> NoisyCase:
    """Every noisy model of ``export_cases``, trained briefly and partly pruned."""
    return make_noisy(request.param)


@pytest.fixture
def importable_module(tmp_path, monkeypatch) -> Iterator[Callable[[str, str], str]]:
    """``write(source, prefix)``: ``source`` as a module in ``tmp_path`` under a name unique to the
    test (so user factories resolve as ``name:factory``); every such module is forgotten afterwards."""
    names: list[str] = []

    def write(source: str, prefix: str = "user_factories") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)
