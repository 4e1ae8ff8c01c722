"""A real PostgreSQL + pgvector for tests and the store benchmark: the `pgserver` wheel's
server (test extra) in a temp dir."""
import shutil
import tempfile
import uuid
import warnings

import psycopg


class Postgres:
    """One server for the session; fresh_database() gives each test its own database."""

    def __init__(self):
        with warnings.catch_warnings():  # it warns that XDG_RUNTIME_DIR is unset (CI)
            warnings.simplefilter("ignore")
            import pgserver  # the test extra; imported here so other tests need none

        # Under /tmp, not pytest's 0700 tmp dir: as root, pgserver runs the server as its own
        # unprivileged user, which must reach the data dir.
        self.pgdata = tempfile.mkdtemp(prefix="face-pg-")
        self.server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        self.admin_dsn = self.server.get_uri()

    def fresh_database(self) -> str:
        name = f"face_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.server.get_uri(name)

    def stop(self) -> None:
        """The database goes away (fast shutdown: clients are disconnected)."""
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata,
               user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.pgdata, ignore_errors=True)
