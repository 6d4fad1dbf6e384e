"""Two tiers: `make test-fast` (`pytest -m "not servers"`) runs what starts nothing, for the
edit-test loop; `make test` runs everything.

A test is marked `servers` when it uses, directly or through other fixtures, a fixture that
starts PostgreSQL, a Temporal server, an HTTP server or an agent process (`SERVER_FIXTURES`),
so a new test is classified by what it asks for. A test that starts one itself is marked by
hand (`pytestmark = pytest.mark.servers`). An unmarked test that starts a process or binds a
socket anyway fails, naming the marker: the fast tier cannot quietly start servers.
"""

import sys
from collections.abc import Generator
from typing import Any

import pytest

MARKER = "servers"
# Every fixture that starts something; the fixtures built on them (database_url, db, settings,
# api, plane, admin, dev_worker, ...) need not be listed.
SERVER_FIXTURES = frozenset(
    {
        "postgres_server",  # PostgreSQL, for every database fixture
        "time_skipping_env",  # the Temporal test server
        "dev_env",  # the Temporal dev server
        "agent_host",  # agent processes
        "fake_control_plane",  # an HTTP server (uvicorn) in the test's loop
    }
)
# Audit events (docs.python.org/3/library/audit_events.html) of starting a process or a server.
STARTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.fork", "os.system", "socket.bind"})

_unmarked: list[str] = []  # the node id of the unmarked test being set up or run, if any
_started: list[str] = []  # what it started


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _unmarked and event in STARTS:
        _started.append(event)
        raise RuntimeError(
            f"{_unmarked[0]} is not marked `{MARKER}` but starts a process or a server"
            f" ({event}): mark it with pytest.mark.{MARKER} (tests/tiers.py)"
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: starts PostgreSQL, Temporal, an HTTP server or a process (tests/tiers.py);"
        f' `pytest -m "not {MARKER}"` is the fast tier',
    )
    sys.addaudithook(_audit)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(MARKER)


def _guarded(item: pytest.Item) -> Generator[None, None, None]:
    """Run a phase of an unmarked test with the audit hook armed (not its teardown: the last
    test of a session also tears down the session's servers)."""
    if item.get_closest_marker(MARKER) is not None:
        yield
        return
    _unmarked.append(item.nodeid)
    _started.clear()
    try:
        yield
    finally:
        _unmarked.clear()
    if _started:  # even if the test caught the error
        pytest.fail(
            f"not marked `{MARKER}` but starts a process or a server ({', '.join(_started)})",
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    yield from _guarded(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield from _guarded(item)
