import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def parties():
    """Three real party processes (gloo over loopback), kept alive for the whole session.

    `parties.run(fn, *args)` runs fn(party, *args) in all three and returns [result_P0, result_P1, result_P2]."""
    from secure_lightning.runtime import PartyPool
    pool = PartyPool(timeout=float(os.environ.get("SECURE_LIGHTNING_TEST_TIMEOUT", 60)))
    pool.start()
    yield pool
    pool.close()
