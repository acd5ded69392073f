import pytest
import pytest_twisted

from tests.support import Daemon


@pytest.fixture(params=["memory", "sqlite"])
def db(request, tmp_path):
    """Each end-to-end test runs against both stores."""
    return "memory" if request.param == "memory" else str(tmp_path / "chat.sqlite3")


@pytest_twisted.async_yield_fixture
async def daemon(db):
    running = await Daemon(db).start()
    yield running
    await running.stop()
