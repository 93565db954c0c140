"""The client side of the warm server (``server``): which socket, the wire format, one run, stopping.

Imported by the ``verify-model`` process itself, so it imports nothing heavy (json, os, socket, struct).

Which server a run uses, explicitly: ``--server PATH``, else ``$VERIFIER_SERVER`` (unset or empty: none).
Without either a run never looks for a server. ``--serve`` and ``--stop-server`` take the same choice,
falling back to ``default_socket()``. A run whose server does not take the request (no socket file, a
file not owned by this user, connection refused, a server of another checkout, no answer at all) runs
in a local worker exactly as without a server, within the same deadline.

Wire format, on a Unix stream socket: the client first sends one byte carrying its stdout and stderr
descriptors (``SCM_RIGHTS``), then frames of a 4-byte big-endian length and a JSON object.
Client to server: ``{"op": "run", ...}`` or ``{"op": "stop"}``. Server to client, one frame that
settles the request: ``{"reply": [kind, value]}`` (``worker.reply``, sent by the child),
``{"exit": code}`` (the child ended without replying), ``{"refused": why}``, ``{"stopping": pid}``.
The client hanging up (at its deadline, or killed) asks the server to kill the request's child.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

from verifier.verify.deadline import Deadline, DeadlineReached
from verifier.verify.worker import died, unpack

ENV_SERVER = "VERIFIER_SERVER"
_HEADER = struct.Struct("!I")
_STOP_WAIT = 10.0  # seconds a stop request waits for the server's acknowledgement


class NoServer(Exception):
    """No server took the request: run it locally instead."""


def default_socket() -> str:
    """``$XDG_RUNTIME_DIR/verifier.sock`` (a private per-user folder), else ``/tmp/verifier-UID.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "verifier.sock")
    return f"/tmp/verifier-{os.getuid()}.sock"


def run_socket(option: str | None) -> str | None:
    """The socket a run uses: ``--server``, else ``$VERIFIER_SERVER``, else none."""
    return option or os.environ.get(ENV_SERVER) or None


def server_socket(option: str | None) -> str:
    """The socket ``--serve`` listens on and ``--stop-server`` stops: as a run's, else the default."""
    return run_socket(option) or default_socket()


def call(path: str, ns, deadline: Deadline) -> Any:
    """``single.decide(ns, deadline)`` in a child of the server at ``path``, waiting no later than
    ``deadline``; the child sees this process's working directory, environment, umask, stdout and stderr.

    Returns and raises as ``Worker.call``; raises ``NoServer`` when no server takes the request.
    """
    if deadline.expired():
        raise DeadlineReached(f"time budget of {deadline.seconds:g} s spent")
    request = {"op": "run", "ns": vars(ns), "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask(),
               "start": deadline.start, "seconds": deadline.seconds, "package": package_dir()}  # fmt: skip
    with _connect(path, fds=(1, 2)) as sock:  # leaving it hangs up, which kills a child still running
        try:
            send_frame(sock, request)
        except OSError:
            raise NoServer from None
        answer = recv_frame(sock, deadline)
    if answer is None or "refused" in answer:
        raise NoServer
    if "reply" in answer:
        return unpack(*answer["reply"])
    raise died(answer["exit"])


def stop(path: str) -> int | None:
    """Ask the server at ``path`` to stop: it removes its socket at once and exits once its running
    requests are answered. Returns its process id, or ``None`` when no server listens there."""
    try:
        with _connect(path, fds=()) as sock:
            send_frame(sock, {"op": "stop"})
            answer = recv_frame(sock, Deadline(_STOP_WAIT))
    except (NoServer, OSError, DeadlineReached):
        return None
    return None if answer is None else answer.get("stopping")


def package_dir() -> str:
    """The folder of the ``verifier`` package this process runs: a server serves only its own."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def send_frame(sock: socket.socket, message: dict) -> None:
    payload = json.dumps(message).encode()
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def recv_frame(sock: socket.socket, deadline: Deadline | None = None) -> dict | None:
    """The next frame, or ``None`` when the peer hangs up first. Without ``deadline`` the socket's own
    timeout applies; with one, raises ``DeadlineReached`` when it passes first."""
    header = _recv_exactly(sock, _HEADER.size, deadline)
    if header is None:
        return None
    payload = _recv_exactly(sock, _HEADER.unpack(header)[0], deadline)
    return None if payload is None else json.loads(payload)


def _recv_exactly(sock: socket.socket, size: int, deadline: Deadline | None) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        if deadline is not None:
            if deadline.expired():
                raise DeadlineReached(f"time budget of {deadline.seconds:g} s spent")
            sock.settimeout(min(deadline.remaining(), 86400.0))
        try:
            chunk = sock.recv(size - len(data))
        except TimeoutError:
            if deadline is None:
                raise
            continue  # the deadline check above raises
        except OSError:  # e.g. reset by a server that died
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _connect(path: str, fds: tuple[int, ...]) -> socket.socket:
    """A connection to the server at ``path`` that has received ``fds``; ``NoServer`` if there is none.

    A socket file of another user is never used: the request carries the environment."""
    try:
        if os.stat(path).st_uid != os.getuid():
            raise NoServer
    except OSError:
        raise NoServer from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)  # a stale socket file: ConnectionRefusedError at once, never a wait
        socket.send_fds(sock, [b"F"], list(fds))
    except OSError:
        sock.close()
        raise NoServer from None
    return sock


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
