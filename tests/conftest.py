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
