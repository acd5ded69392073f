import secrets
import socket

import pytest
import pytest_twisted
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.support import Daemon


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_log_errors: the test expects errors in the daemon's log")


@pytest.fixture(autouse=True)
def no_tracebacks(request):
    """Every test fails if the daemon logged a traceback or an error: bad input must not do that."""
    seen = []

    def observe(event):
        if "log_failure" in event or event.get("log_level", LogLevel.info) >= LogLevel.error:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield
    globalLogPublisher.removeObserver(observe)
    if seen and not request.node.get_closest_marker("allow_log_errors"):
        details = []
        for event in seen:
            failure = event.get("log_failure")
            details.append(formatEvent(event) + ("\n" + failure.getTraceback() if failure else ""))
        pytest.fail("the daemon logged errors:\n" + "\n".join(details))


@pytest.fixture(params=["memory", "sqlite"])
def db(request, tmp_path):
    """Each end-to-end test runs against both stores."""
    return "memory" if request.param == "memory" else str(tmp_path / "chat.sqlite3")


@pytest_twisted.async_yield_fixture
async def daemon(db):
    running = await Daemon(db).start()
    yield running
    await running.stop()


POSTGRESQL = "127.0.0.1:5432"  # .ci/run starts it; the tests that need it skip without it


def _postgresql_admin():
    """A connection to the local PostgreSQL server's ``postgres`` database (trust auth), and
    the user it took; skips the test if there is none."""
    import psycopg

    why = ""
    for user in ("root", "postgres"):
        try:
            return psycopg.connect(f"postgresql://{user}@{POSTGRESQL}/postgres", autocommit=True,
                                   connect_timeout=5), user
        except psycopg.Error as e:
            why = " ".join(str(e).split())
    pytest.skip(f"PostgreSQL is not reachable at {POSTGRESQL} as root or postgres: {why}")


@pytest.fixture
def postgresql_url():
    """The URL of a new, empty PostgreSQL database of this test's own, dropped after it."""
    admin, user = _postgresql_admin()
    name = f"chatserv_test_{secrets.token_hex(6)}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://{user}@{POSTGRESQL}/{name}"
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def postgresql_admin():
    """A connection to the server's ``postgres`` database, for what a test does to the server."""
    admin, _ = _postgresql_admin()
    yield admin
    admin.close()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_db(request, tmp_path):
    """``--db`` for each store engine, PostgreSQL included: the store-level tests run on all."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgresql_url")
    return "memory" if request.param == "memory" else str(tmp_path / "chat.sqlite3")


@pytest.fixture
def unused_port():
    """A loopback port that nothing listens on (held, unlistened, for the test's length)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_db(request, tmp_path):
    """``--db`` for each SQL engine."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgresql_url")
    return str(tmp_path / "chat.sqlite3")
