"""Session-wide fixtures."""
import pytest

import backend  # noqa: F401  sets OpenCV's image-size limits before a test imports cv2


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL + pgvector server started for this test session and stopped after it."""
    from bench.postgres import Postgres

    server = Postgres()
    try:
        yield server
    finally:
        server.close()
