"""Child processes the testbed owns: start detached, wait for readiness, stop by pid.

A process is remembered by its pid *and* its start time (from /proc), so `stop` never
signals an unrelated process that happens to have reused the pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel


class ComponentFailed(RuntimeError):
    """A component exited or did not become ready in time; the message carries its log tail."""


class ProcessRecord(BaseModel):
    """What `down` needs to find a process again, possibly from another shell."""

    name: str
    pid: int
    start_ticks: int
    log: str


# Ports handed out by free_port in this process: the kernel may offer a port again until
# the process it was meant for has bound it (two operators once got the same health port).
_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on `host` ("" for every interface), never one handed out before."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _start_ticks(pid: int, *, zombie_too: bool = False) -> int | None:
    """The process start time in clock ticks since boot, or None when it is gone.

    A zombie counts as gone, unless `zombie_too`: a child that already exited is still
    ours to report on.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are space separated.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z" and not zombie_too:
        return None
    return int(fields[19])


def is_running(record: ProcessRecord) -> bool:
    return _start_ticks(record.pid) == record.start_ticks


def log_tail(log: str | Path, lines: int = 40) -> str:
    try:
        text = Path(log).read_text(errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    return "\n".join(text.splitlines()[-lines:])


def start(
    name: str,
    argv: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    *,
    own_session: bool = True,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start a component, appending its output to `log`.

    In its own session by default, so it outlives the command that started it and a Ctrl-C
    in that command's terminal does not reach it; `own_session=False` keeps it in the
    caller's process group, where the terminal's Ctrl-C stops it together with the caller.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
            env=None if env is None else dict(env),
        )
    ticks = _start_ticks(child.pid, zombie_too=True)
    if ticks is None:
        raise ComponentFailed(f"{name} exited at once:\n{log_tail(log)}")
    return child, ProcessRecord(name=name, pid=child.pid, start_ticks=ticks, log=str(log))


@dataclass
class ReadyProbe:
    """A probe that says whether a component serves, and the budget to wait for it."""

    probe: Callable[[], bool]
    timeout: float = 60.0
    interval: float = 0.2


def wait_ready(child: subprocess.Popen[bytes], record: ProcessRecord, ready: ReadyProbe) -> float:
    """Wait until the probe passes; fail fast with the log tail if the process dies first."""
    began = time.monotonic()
    deadline = began + ready.timeout
    while True:
        code = child.poll()
        if code is not None:
            raise ComponentFailed(
                f"{record.name} exited with code {code} before it was ready; "
                f"last lines of {record.log}:\n{log_tail(record.log)}"
            )
        try:
            if ready.probe():
                return time.monotonic() - began
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ComponentFailed(
                f"{record.name} was not ready after {ready.timeout:.0f}s; "
                f"last lines of {record.log}:\n{log_tail(record.log)}"
            )
        time.sleep(ready.interval)


def stop(record: ProcessRecord, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; a process already gone is fine."""
    if not is_running(record):
        return
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not is_running(record):
            return
        time.sleep(0.05)
    try:
        os.kill(record.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while is_running(record) and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
