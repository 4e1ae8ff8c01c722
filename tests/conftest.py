"""Session-wide fixtures."""
import pytest


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL + pgvector server started for this test session and stopped after it."""
    from bench.postgres import Postgres

    server = Postgres()
    try:
        yield server
    finally:
        server.close()
