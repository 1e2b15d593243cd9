"""Warm start: torch, timm and albumentations imported once, every stage forked from there.

With `PIPELINE_WARM=1` (what `make demo` sets), `python -m pipeline STAGE` (any stage but
upload, which talks to Kaggle) does not import torch, pandas or scikit-learn itself: it hands
its arguments, working folder, environment and its stdin/stdout/stderr to a server process that
imported the stages once, and the server forks a child that runs the stage exactly as
`python -m pipeline` would, then reports its exit code. A stage then starts in milliseconds
instead of the 7-10 s of imports each process pays on a 2-core CPU, which is most of a small
competition's training time. The first stages (download, prepare) do not wait for a
server that is still importing: they start it and run in their own process meanwhile.

Safety:
- the server's socket is named by a digest of the package's source, the interpreter and the
  environment variables that shape torch at import (threads, visible GPUs): changed code starts
  a new server and never runs on an old one; an idle server exits after IDLE_S seconds;
- the child dies with its client: Ctrl-C and SIGTERM are forwarded, and a client that vanishes
  (SIGKILL) closes the socket, on which the child kills itself;
- anything unusual falls back to a plain in-process run: no fork (Windows), a distributed launch
  (accelerate/torchrun set RANK or WORLD_SIZE), a CUDA machine (forking after CUDA is unsafe),
  or a server that does not answer within START_S seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipeline.source import PACKAGE, source_chunks

WARM = ("download", "prepare", "extra", "folds", "train", "predict", "ensemble", "pseudolabel",
        "diagnose", "report", "submit", "export")  # fmt: skip
LIGHT = ("download", "prepare", "extra")  # first in the graph, quick cold: they do not wait for a
# starting server (its imports take longer than they do); they start it and run in-process.
# folds, next, is ready sooner by waiting: its own imports (scikit-learn) take 4 s cold
SHAPING_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONPATH")
IDLE_S, START_S = 60.0, 90.0


def wanted(argv: list[str]) -> bool:
    env = os.environ
    return (
        env.get("PIPELINE_WARM") == "1"
        and bool(argv)
        and argv[0] in WARM
        and hasattr(os, "fork")
        and hasattr(socket, "send_fds")
        and not any(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        and not Path("/dev/nvidia0").exists()
    )


def socket_path() -> Path:
    h = hashlib.sha256(f"{sys.executable}\0{PACKAGE}".encode())
    for chunk in source_chunks():
        h.update(chunk)
    h.update(json.dumps({k: os.environ.get(k) for k in SHAPING_ENV}).encode())
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"pipeline-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{h.hexdigest()[:20]}.sock"


def _send(conn: socket.socket, obj: dict) -> None:
    data = json.dumps(obj).encode()
    conn.sendall(struct.pack("!I", len(data)) + data)


def _recv(conn: socket.socket) -> dict | None:
    head = _exact(conn, 4)
    return None if head is None else json.loads(_exact(conn, struct.unpack("!I", head)[0]))


def _exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


# ---- client ----------------------------------------------------------------------------------


def run(argv: list[str]) -> int | None:
    """The stage's exit code, run by the warm server; None: run it here instead."""
    try:
        conn = _connect(socket_path(), wait=argv[0] not in LIGHT)
    except OSError:
        return None
    if conn is None:
        return None
    with conn:
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
        started = _recv(conn)
        if started is None:
            return None
        child = int(started["pid"])

        def forward(signum, _frame) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, forward)
        done = _recv(conn)
    return 1 if done is None else int(done["code"])


def _connect(path: Path, wait: bool = True) -> socket.socket | None:
    for attempt in range(2):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(path))
            return conn
        except OSError:
            conn.close()
            if attempt:
                return None
        if not _start_server(path, wait):
            return None
    return None


def _start_server(path: Path, wait: bool) -> bool:
    """Start a server unless one is starting; with `wait`, True once it listens."""
    ready, starting = path.with_suffix(".ready"), path.with_suffix(".starting")
    if not (starting.exists() and time.time() - starting.stat().st_mtime < START_S):
        ready.unlink(missing_ok=True)
        starting.touch()
        subprocess.Popen([sys.executable, "-m", "pipeline.warm", str(path)],
                         start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    if not wait:
        return False
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and not ready.exists() and starting.exists():
        time.sleep(0.05)
    return ready.exists()


# ---- server ----------------------------------------------------------------------------------


def serve(path: Path) -> None:
    try:
        _import_stages()
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(8)
        listener.settimeout(IDLE_S)
        path.with_suffix(".ready").touch()
    finally:  # listening or dead: no client waits any longer
        path.with_suffix(".starting").unlink(missing_ok=True)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                return  # idle: the next stage starts a fresh server
            with conn:
                _fork_child(conn, listener)
    finally:
        path.unlink(missing_ok=True)
        path.with_suffix(".ready").unlink(missing_ok=True)


def _import_stages() -> None:
    for stage in WARM:  # torch, timm, albumentations, accelerate, pandas, scikit-learn
        importlib.import_module(f"pipeline.stages.{stage}")
    with contextlib.suppress(ImportError):
        import pytorch_grad_cam  # noqa: F401
    # train's Recorder imports dvclive, whose Live() imports dvc.repo: 0.8 s every training stage
    with contextlib.suppress(ImportError):
        import dvc.repo  # noqa: F401
        import dvclive  # noqa: F401


def _fork_child(conn: socket.socket, listener: socket.socket) -> None:
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    request = json.loads(msg)
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return
    listener.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's own descriptors)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop("PIPELINE_WARM", None)  # the child runs the stage itself
    _send(conn, {"pid": os.getpid()})
    threading.Thread(target=_die_with_client, args=(conn,), daemon=True).start()
    code = 1
    try:
        from pipeline.cli import main  # here: the server imports it in its child only

        sys.argv = ["python -m pipeline", *request["argv"]]
        code = main(request["argv"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError):
            _send(conn, {"code": code})
        os._exit(code)


def _die_with_client(conn: socket.socket) -> None:
    """The client never writes after its request: EOF means it is gone."""
    with contextlib.suppress(OSError):
        conn.recv(1)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
    sys.exit(0)
