from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Credentials, Daemon, run_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One real daemon per test module; tests isolate themselves with their own district."""
    with run_daemon(tmp_path_factory.mktemp("daemon")) as running:
        yield running


@pytest.fixture
def district(daemon: Daemon) -> Credentials:
    return daemon.add_district()
