"""PostgreSQL's own client programs (pg_dump, pg_restore) run against a database URL.

The password reaches libpq through ``PGPASSWORD`` in the child's environment, never the command
line, where ``ps`` would show it. Errors come back as one redacted line.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from pipeline.errors import PipelineError
from pipeline.settings import redact


class PostgresToolError(PipelineError):
    kind = "postgres tool failed"


def _search_path() -> str:
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/bin", *versions])


def find(tool: str) -> str:
    """The path of ``tool``, or a one-line error saying what to install."""
    found = shutil.which(tool, path=_search_path())
    if found is None:
        raise PostgresToolError(
            f"{tool} not found on PATH or in /usr/lib/postgresql/*/bin; install the client"
        )
    return found


def run(tool: str, uri: str, arguments: list[str], cwd: Path, timeout_seconds: float = 3600) -> None:
    """Run ``tool`` (pg_dump, pg_restore) against the database at ``uri``; raise one line on failure."""
    url = make_url(uri)
    command = [find(tool), "--no-password"]
    if url.host:
        command.append(f"--host={url.host}")
    if url.port:
        command.append(f"--port={url.port}")
    if url.username:
        command.append(f"--username={url.username}")
    command += [*arguments, f"--dbname={url.database}"]
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    try:
        completed = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_seconds
        )
    except subprocess.TimeoutExpired:
        raise PostgresToolError(f"{tool} took more than {timeout_seconds:g} s") from None
    if completed.returncode != 0:
        reason = (completed.stderr.strip().splitlines() or ["?"])[-1]
        raise PostgresToolError(f"{tool} failed: {redact(reason)}")
