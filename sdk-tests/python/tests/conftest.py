import pytest

from support import close_all


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    await close_all()
