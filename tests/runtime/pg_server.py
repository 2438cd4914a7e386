"""A throw-away Postgres server for tests and benchmarks: a real postmaster in a temp dir, on a unix socket.

:func:`start_postgres` prefers the system binaries (``initdb``/``pg_ctl`` on PATH or under the usual
install dirs), else the ``pgserver`` pip package (it bundles them).  ``initdb`` refuses to run as root:
then the data dir is owned by, and the server run as, the ``postgres`` system user (else ``nobody``);
``pgserver`` handles root on its own (it creates a ``pgserver`` user).  Set ``DELTAMEM_TEST_PG_URL`` to
use an existing server instead (e.g. a CI service container).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_SEARCH = ["/usr/local/bin", "/usr/local/pgsql/bin", *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")),
                                                              reverse=True)]


@dataclass
class PostgresServer:
    url: str
    how: str
    stop: Callable[[], None] = field(repr=False)


def _binaries() -> tuple[str, str] | None:
    for where in [None, *_SEARCH]:
        initdb = shutil.which("initdb", path=where)
        pg_ctl = shutil.which("pg_ctl", path=where)
        if initdb and pg_ctl:
            return initdb, pg_ctl
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run Postgres as")


def _start_system(initdb: str, pg_ctl: str, durable: bool) -> PostgresServer:
    base = Path(tempfile.mkdtemp(prefix="deltamem-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    user = _run_as()
    if user is not None:
        base.chmod(0o755)
        for p in (base, sock):
            os.chown(p, user.pw_uid, user.pw_gid)
    kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user is not None else {}
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def run(args: list[str]) -> None:
        out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=base, timeout=120, **kw)
        if out.returncode:
            raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")

    run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-instructions", "-E", "UTF8",
         "--locale=C"])
    opts = f"-k {sock} -c listen_addresses='' -c max_connections=100"
    if not durable:  # tests: nothing needs to survive a power cut
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    run([pg_ctl, "-D", str(data), "-l", str(base / "log"), "-o", opts, "-w", "-t", "60", "start"])

    def stop() -> None:
        try:
            run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "60", "stop"])
        finally:
            shutil.rmtree(base, ignore_errors=True)

    return PostgresServer(f"postgresql://postgres@/postgres?host={sock}", f"system binaries ({initdb})", stop)


def _start_pgserver() -> PostgresServer:
    import pgserver

    base = Path(tempfile.mkdtemp(prefix="deltamem-pgserver-"))
    server = pgserver.get_server(base / "data", cleanup_mode="delete")

    def stop() -> None:
        try:
            server.cleanup()
        finally:
            shutil.rmtree(base, ignore_errors=True)

    return PostgresServer(server.get_uri(), "the pgserver package", stop)


def start_postgres(durable: bool = False) -> PostgresServer:
    """A running server (stop it with ``.stop()``); RuntimeError with the reason if none can start.

    ``durable``: keep fsync on (benchmarks); tests turn it off for speed."""
    url = os.environ.get("DELTAMEM_TEST_PG_URL")
    if url:
        return PostgresServer(url, "DELTAMEM_TEST_PG_URL", lambda: None)
    found = _binaries()
    system_error: RuntimeError | None = None
    if found is not None:
        try:
            return _start_system(*found, durable=durable)
        except RuntimeError as exc:  # e.g. no user to run it as: the bundled server may still start
            system_error = exc
    try:
        import pgserver  # noqa: F401
    except ImportError:
        raise RuntimeError("no Postgres: " + (f"the system server failed ({system_error}) and " if system_error
                                              else "neither initdb/pg_ctl on PATH nor ")
                           + "the pgserver package (pip install pgserver), and DELTAMEM_TEST_PG_URL is not set") from None
    return _start_pgserver()
