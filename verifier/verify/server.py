"""A warm server for ``verify-model`` runs (``verify-model --serve``), after mypy's ``dmypy``.

``import torch`` alone takes about 1.4 s, longer than a small model's whole verification. The server
imports torch, onnx, onnxruntime, onnx2torch and the engine once, then listens on a Unix socket (mode
0600; the path: ``client``). Each run request is served by a child forked for it, which runs the job a
local worker runs (``single.decide`` through ``worker.reply``) and sends the reply to the client. The
child starts from the server's state, never from an earlier request's: the server only imports and
never computes, so no request's state reaches another, and no torch thread pool has been started before
a fork (the pools do not survive one; the child sets its thread count from ``--threads`` as a worker does).

The child first takes on the client's working directory, environment, umask, stdout and stderr, so that a
run through the server behaves as a local one. The client keeps its own deadline; when it hangs up (at
the deadline, or killed) the server kills the child. A child that ends without replying is reported to
the client with its exit status, which the client reports as a worker crash.

The server is one thread around a ``selectors`` loop: its listening socket, one connection per running
child (readable = the client hung up), and a wake-up socket that ``SIGCHLD`` writes to (the loop then
reaps children). ``SIGTERM``, ``SIGINT`` and a stop request stop it: the socket file goes at once, the
running requests are answered, then the process exits.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import struct
import sys
from functools import partial

from verifier.errors import VerifierError
from verifier.verify.client import package_dir, recv_frame, send_frame
from verifier.verify.deadline import Deadline
from verifier.verify.worker import die_with_parent, reply

_REQUEST_SECONDS = 2.0  # a client sends its request at once: one that does not is dropped


def serve(path: str) -> int:
    """Listen on ``path`` until stopped; returns the exit status 0.

    Raises ``VerifierError`` when another server listens there or the socket cannot be made.
    """
    _import_everything()
    listener = _listen(path)
    print(f"verify-model: serving on {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    _Server(listener, path).run()
    return 0


def _import_everything() -> None:
    """Import (never run) what a child needs, so that it starts in milliseconds."""
    import onnx  # noqa: F401
    import onnx2torch  # noqa: F401  (after ``verifier``, which lets it import without torchvision)
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401

    import verifier.api  # noqa: F401
    from verifier.verify import single  # noqa: F401  (and through it the engine, attack, bab)


def _listen(path: str) -> socket.socket:
    if os.path.lexists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:  # a stale file left by a server that was killed
            if os.lstat(path).st_uid != os.getuid():
                raise VerifierError(f"{path} belongs to another user") from None
            os.unlink(path)
        except OSError as error:
            raise VerifierError(f"cannot use {path}: {error.strerror}") from None
        else:
            raise VerifierError(f"a server already listens on {path}")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mask = os.umask(0o177)  # the socket file is created 0600: requests carry the user's environment
    try:
        listener.bind(path)
    except OSError as error:
        raise VerifierError(f"cannot listen on {path}: {error.strerror}") from None
    finally:
        os.umask(mask)
    listener.listen(64)
    listener.setblocking(False)
    return listener


class _Server:
    def __init__(self, listener: socket.socket, path: str):
        self.listener, self.path = listener, path
        self.inode = os.stat(path).st_ino  # the file to remove at the end, if no one replaced it
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.children: dict[int, socket.socket] = {}  # running (not yet reaped) child -> its client
        self.stopping = False

    def run(self) -> None:
        for end in (self.wake_r, self.wake_w):
            end.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to write to the wake-up socket
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop())
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._reap)
        while not self.stopping or self.children:
            for key, _ in self.selector.select():
                key.data()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, OSError):
            return
        try:
            request, fds = _read_request(conn)
            if request.get("op") == "stop":
                self._stop()
                send_frame(conn, {"stopping": os.getpid()})
            elif request.get("package") != package_dir():
                send_frame(conn, {"refused": f"this server runs {package_dir()}"})
            elif request.get("op") == "run" and len(fds) == 2 and not self.stopping:
                self._fork(conn, request, fds)
                return
        except (OSError, ValueError):  # a client that went away or spoke nonsense: drop it
            pass
        conn.close()

    def _fork(self, conn: socket.socket, request: dict, fds: list[int]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        server = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._child(server, conn, request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, partial(self._hang_up, pid, conn))

    def _child(self, server: int, conn: socket.socket, request: dict, fds: list[int]) -> None:
        try:
            signal.set_wakeup_fd(-1)
            for signum, handler in ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL),
                                    (signal.SIGINT, signal.default_int_handler)):  # fmt: skip
                signal.signal(signum, handler)  # as in a local worker
            self.selector.close()
            for other in (self.listener, self.wake_r, self.wake_w, *self.children.values()):
                other.close()
            die_with_parent(server)
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            for fd in fds:
                os.close(fd)
            conn.settimeout(None)
            send_frame(conn, {"reply": reply(_job, (request,))})
        finally:
            os._exit(0)

    def _hang_up(self, pid: int, conn: socket.socket) -> None:
        """The client hung up (or sent more than its request): its child, if still running, is killed."""
        if pid in self.children:  # not reaped yet, so ``pid`` is still this child (at worst a zombie)
            self.selector.unregister(conn)
            os.kill(pid, signal.SIGKILL)

    def _reap(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            conn = self.children.pop(pid)
            try:  # after a reply this frame is never read; without one it tells the client how the child died
                send_frame(conn, {"exit": os.waitstatus_to_exitcode(status)})
            except OSError:
                pass
            if self.selector.get_map().get(conn) is not None:
                self.selector.unregister(conn)
            conn.close()

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.selector.unregister(self.listener)
        self.listener.close()
        try:
            if os.lstat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The client's request and the descriptors it sent; ``OSError`` or ``ValueError`` if it is not one."""
    conn.settimeout(_REQUEST_SECONDS)
    peer = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    marker, fds, _, _ = socket.recv_fds(conn, 1, 2)
    try:
        request = recv_frame(conn)
        if marker != b"F" or not isinstance(request, dict) or peer[1] != os.getuid():
            raise ValueError("not a request")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def _job(request: dict) -> tuple[str, str, str]:
    """In the child: take on the client's process settings, then run what a local worker runs."""
    from verifier.verify import single

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(request["umask"])
    deadline = Deadline(request["seconds"], start=request["start"])
    return single.decide(argparse.Namespace(**request["ns"]), deadline)
