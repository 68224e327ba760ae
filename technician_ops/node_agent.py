"""The execution node's side of a run (docs/nodes.md); the controller's is engine/nodes.py and engine/fanout.py.

    python -m technician_ops.node_agent session --work-dir DIR
    python -m technician_ops.node_agent worker --session DIR --ident IDENT

``session`` is the remote command of the controller's master connection to this node, for one run.
It prints the versions, reads the node's hosts, makes the run's private directory (0700, under
``--work-dir``), opens a connection to each host (engine/ssh_masters.py, as the controller does for
its own hosts) and prints what failed.  Then it waits: when its input ends (the run ended, or
technician-ops died and took the master with it) it stops any worker still running, closes the
connections and removes the directory.  A directory a killed session left is removed by the next.

``worker`` runs one execution: ansible-runner's own ``Worker`` reads the transmitted job (kwargs and
the zipped private data directory) from stdin and streams the events back on stdout, for the
controller's ``Processor``.  What it adds:

- the execution runs under ``supervise.py`` as on the controller: a stop stops every process of it;
- the end of its input after the job (the controller closing the stream: stop, timeout, a gate's
  stop) stops it;
- paths are this node's (its plugins, the session's control and fact directories), the node's own
  credentials never reach Ansible, and the execution's environment is not streamed back nor left on disk
  (the ``starting`` status loses its ``env``; the ``command`` artifact is removed);
- its directory is removed when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

SESSION_PREFIX = "tops-node-"
KEEPALIVE = 5.0  # seconds: a worker says it is alive this often while a task runs quietly


def _write(out: BinaryIO, data: dict[str, Any]) -> None:
    out.write(json.dumps(data).encode() + b"\n")
    out.flush()


# -- session ---------------------------------------------------------------------------------


def session(work_dir: str) -> int:
    from technician_ops.engine.nodes import spec_from_json, versions

    out, inp = sys.stdout.buffer, sys.stdin.buffer
    _write(out, {"versions": versions()})
    line = inp.readline()
    if not line:
        return 0
    request = json.loads(line)
    base = Path(work_dir)
    sweep(base)
    directory = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=base))
    masters = None
    try:
        os.chmod(directory, 0o700)
        (directory / "session.pid").write_text(str(os.getpid()))
        for sub in ("cp", "tmp", "facts", "state"):
            (directory / sub).mkdir(mode=0o700)
        from technician_ops.engine import preflight, ssh_masters

        specs = [spec_from_json(d) for d in request.get("hosts") or []]
        masters = ssh_masters.Masters(directory / "cp", str(request.get("ssh_args") or ""))
        timeout = float(request.get("timeout") or preflight.DEFAULT_TIMEOUT)
        via = [s for s in specs if ssh_masters.usable(s)]
        problems = masters.open(via, timeout, become=bool(request.get("become")))
        problems += preflight.check_hosts([s for s in specs if not ssh_masters.usable(s)], timeout=timeout)
        _write(out, {"ready": {"session_dir": str(directory), "problems": [str(p) for p in problems],
                               "requiretty": masters.requiretty}})
        while inp.read(65536):  # until the controller's master connection ends
            pass
    finally:
        _stop_workers(directory)
        if masters is not None:
            masters.close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def sweep(base: Path) -> None:
    """Remove the directories of sessions whose process is gone (one killed with its node, say)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(SESSION_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.geteuid():
                continue
            pid = int((Path(entry.path) / "session.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            _stop_workers(Path(entry.path))
            shutil.rmtree(entry.path, ignore_errors=True)
        except (OSError, ValueError):
            continue


def _stop_workers(directory: Path) -> None:
    """SIGTERM each worker of the session still running: its supervisor stops the execution.  Only a process
    that is that worker (a pid file may outlive its process: a node rebooted keeps its work_dir)."""
    for pidfile in directory.glob("worker-*.pid"):
        try:
            pid = int(pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"technician_ops.node_agent" in cmdline and str(directory).encode() in cmdline:
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass


# -- worker ----------------------------------------------------------------------------------


class _EofWatch:
    """The transmit stream as ansible-runner's Worker reads it; once the job is read (its ``eof`` line),
    the end of the input means "stop" (the controller closed the stream)."""

    def __init__(self, stream: BinaryIO, on_end: Any) -> None:
        self._stream, self._on_end = stream, on_end

    def readline(self, *args: Any) -> bytes:
        line = self._stream.readline(*args)
        if line.strip() == b'{"eof": true}':
            threading.Thread(target=self._watch, name="technician-ops-eof", daemon=True).start()
        return line

    def _watch(self) -> None:
        # The descriptor, not the buffered stream: nothing follows the job's last line (the controller writes
        # no more), and a thread blocked in the buffered object's read would abort the interpreter's exit.
        try:
            while os.read(self._stream.fileno(), 4096):
                pass
        except (OSError, ValueError):
            pass
        self._on_end()

    def __getattr__(self, name: str) -> Any:  # read, close, closed, flush...: Base64IO asks for them
        return getattr(self._stream, name)


def worker(session_dir: str, ident: str) -> int:
    from types import SimpleNamespace

    from ansible_runner.streaming import Worker

    from technician_ops.engine import environ
    from technician_ops.engine.executor import MAX_EVENT_RES, STOP_GRACE, _Stopper
    from technician_ops.engine.runner_pty import Supervision, spawn_without_close_delay, supervise
    from technician_ops.plan.files import PLUGIN_DIR, action_plugin_dirs

    sdir = Path(session_dir)
    if not sdir.name.startswith(SESSION_PREFIX) or not (sdir / "session.pid").is_file() \
            or sdir.stat().st_uid != os.geteuid() or not ident.replace("-", "").isalnum():
        print(f"node_agent worker: {session_dir} is not a session of this node's", file=sys.stderr)
        return 2
    os.environ.clear()  # the node's own credentials (a cloud key in its environment) never reach Ansible
    os.environ.update(environ.split(dict(_ENV), {})[0])
    pidfile = sdir / f"worker-{ident}.pid"
    pidfile.write_text(str(os.getpid()))
    pdd = Path(tempfile.mkdtemp(prefix=f"{ident}-", dir=sdir))
    package_root = str(Path(__file__).resolve().parents[1])
    bindir = _ansible_playbook_shim(sdir)
    ours = {
        "PATH": os.pathsep.join([str(bindir), os.environ.get("PATH", "/usr/bin:/bin")]),
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
        "ANSIBLE_CONFIG": str(pdd / "ansible.cfg"),
        "ANSIBLE_ACTION_PLUGINS": os.pathsep.join(str(d) for d in action_plugin_dirs()),
        "ANSIBLE_LOOKUP_PLUGINS": str(PLUGIN_DIR / "lookup"),
        "ANSIBLE_FILTER_PLUGINS": str(PLUGIN_DIR / "filter"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(sdir / "facts"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(sdir / "cp"),
        "ANSIBLE_SSH_CONTROL_PATH": "%(directory)s/%%C",
        "ANSIBLE_LOCAL_TEMP": str(sdir / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "MAX_EVENT_RES": str(MAX_EVENT_RES),
        "TECHNICIAN_OPS_STATE_DIR": str(sdir / "state"),
    }

    class NodeWorker(Worker):
        def update_paths(self, kwargs: dict[str, Any]) -> dict[str, Any]:
            self.ident = str(kwargs.get("ident") or "")
            inventory = kwargs.pop("technician_ops_inventory", None)  # its sources, relative to the directory
            if isinstance(inventory, list) and all(isinstance(p, str) and ".." not in Path(p).parts for p in inventory):
                kwargs["inventory"] = [str(pdd / p) for p in inventory]
            else:
                kwargs["inventory"] = str(pdd / "inventory")
            kwargs["envvars"] = {**(kwargs.get("envvars") or {}), **ours}
            kwargs.pop("private_data_dir", None)
            return kwargs

        def status_handler(self, status_data: dict[str, Any], runner_config: Any) -> None:
            status_data = {k: v for k, v in status_data.items() if k != "env"}  # never the environment
            super().status_handler(status_data, runner_config)
            if status_data.get("status") == "running" and self.ident:  # ansible-runner wrote its command file
                (pdd / "artifacts" / self.ident / "command").unlink(missing_ok=True)  # (the channel's token in it)

        def artifacts_handler(self, artifact_dir: str) -> None:
            """Only the exit code and the status go back (the events went already): the controller unpacks
            what it is sent, and needs no more of the node's files."""
            kept = Path(tempfile.mkdtemp(prefix="back-", dir=pdd))
            for name in ("rc", "status"):
                source = Path(artifact_dir, name)
                if source.is_file():
                    (kept / name).write_bytes(source.read_bytes()[:64])
            super().artifacts_handler(str(kept))

    spawn_without_close_delay()
    supervision = Supervision(-1, STOP_GRACE)
    ended = threading.Event()
    stopper = _Stopper(supervision, ended.is_set, None, SimpleNamespace(stopping=False))  # type: ignore[arg-type]
    supervise(supervision)
    stopper.start()
    signal.signal(signal.SIGTERM, lambda *_: ended.set())  # the session ending: stop, as on a closed stream
    try:
        runner = NodeWorker(_input=_EofWatch(sys.stdin.buffer, ended.set), _output=sys.stdout.buffer,
                            private_data_dir=str(pdd), keepalive_seconds=KEEPALIVE,
                            cancel_callback=lambda: ended.is_set() and supervision.pid is None)
        status, rc = runner.run()
    finally:
        supervise(None)
        stopper.close()
        shutil.rmtree(pdd, ignore_errors=True)
        pidfile.unlink(missing_ok=True)
    return 0 if status in ("successful", "failed") else 1


def _ansible_playbook_shim(session_dir: Path) -> Path:
    """A directory whose ``ansible-playbook`` is this interpreter's: the node's technician-ops, ansible-core
    and ansible-runner are then one install, whatever else the node's PATH holds (or lacks)."""
    bindir = session_dir / "bin"
    shim = bindir / "ansible-playbook"
    if not shim.exists():
        import shlex

        bindir.mkdir(mode=0o700, exist_ok=True)
        temporary = bindir / f".ansible-playbook.{os.getpid()}"
        temporary.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m ansible.cli.playbook "$@"\n')
        temporary.chmod(0o700)
        temporary.replace(shim)
    return bindir


_ENV = dict(os.environ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m technician_ops.node_agent")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("session")
    s.add_argument("--work-dir", default="/tmp")
    w = sub.add_parser("worker")
    w.add_argument("--session", required=True)
    w.add_argument("--ident", required=True)
    args = parser.parse_args(argv)
    if args.command == "session":
        return session(args.work_dir)
    return worker(args.session, args.ident)


if __name__ == "__main__":
    sys.exit(main())
