"""The run's SSH connections: opened once at preflight, reused by every execution, closed with the run.

Over SSH, what a run mostly pays for is setting up connections: OpenSSH's key
exchange costs the controller ~0.1 s of CPU per host (the post-quantum
hybrid it negotiates by default), the host as much again, and a round trip
per exchange.  Ansible opens one master connection per host and reuses it
(``ControlMaster=auto``, ``ControlPersist``), but only inside one
ansible-playbook execution: the supervisor stops every process of an
execution when it ends, the master included, so a run's undo execution
connected again, and preflight's own check was one more connection.

So preflight itself opens each host's master, with OpenSSH and the very
options Ansible will use, in a directory of the run's own
(``ControlPath=DIR/%C``, where ssh names the socket by a hash of the local
host, host, port, user and jump host).  Ansible's ssh finds the socket and
multiplexes over it: the run connects to each host once, however many
executions and tasks it has.  A master runs ``echo READY; exec cat`` on its
host, so "ready" means the host let us in and started a shell; the
``cat`` ends when the master does.

Lifetime: each master is a child of technician-ops (not of an execution's
supervisor) with ``PR_SET_PDEATHSIG``, so it dies with technician-ops even
when that is killed outright; the run closes them all when it ends.  They
are started from the main thread: the kernel sends the death signal when the
*thread* that forked a process exits.

Not used for hosts whose SSH set-up Ansible makes differently: a password
(sshpass), another ssh executable, a ControlPath of the team's own; nor under
``--accelerate`` (mitogen opens its own connections).  Those keep
preflight's paramiko check, which also explains any failed master (refused,
timeout, host key, auth...).
"""

from __future__ import annotations

import ctypes
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from technician_ops.engine.preflight import HostProblem, HostSpec, Reason, check_hosts

READY = b"technician-ops-ready"
REQUIRETTY = b"technician-ops-requiretty"
_PR_SET_PDEATHSIG = 1
# What a master runs on its host.  With ``become``, it first asks sudo (never for a password: -n) whether
# it refuses to run without a terminal: pipelining, our default, cannot work there.
_REMOTE = "echo {ready}; exec cat >/dev/null"
_REMOTE_BECOME = ("if command -v sudo >/dev/null 2>&1 && sudo -n true 2>&1 </dev/null | grep -q 'must have a tty'; "
                  "then echo {requiretty}; fi; echo {ready}; exec cat >/dev/null")


PREFIX = "tops-ssh-"


def control_dir() -> Path:
    """A fresh private directory for the run's control sockets, named by our pid.

    Short on purpose: a Unix socket path has 108 bytes, and ``%C`` is 40 of them.
    A run that was killed outright could not remove its directory (its masters
    died with it and took their sockets): the directories of dead pids are
    removed here first, the next time a run starts.
    """
    base = Path(tempfile.gettempdir())
    sweep(base)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))


def sweep(base: Path) -> None:
    """Remove our own control directories whose process is gone."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    uid = os.geteuid()
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        pid = entry.name[len(PREFIX):].split("-", 1)[0]
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != uid \
                    or not pid.isdigit():
                continue
            os.kill(int(pid), 0)
            continue  # alive (or a new process with that pid: left alone)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except (OSError, ValueError):
            continue


def usable(spec: HostSpec) -> bool:
    """Whether Ansible would reach ``spec`` through OpenSSH with a ControlPath in our directory."""
    return spec.connection in ("ssh", "smart", "ansible.builtin.ssh", "ansible.legacy.ssh") and not spec.password \
        and spec.ssh_executable in (None, "ssh") and "controlpath" not in _options(spec)


def _options(spec: HostSpec) -> str:
    return f"{spec.ssh_args} {spec.ssh_args_override or ''}".lower()


def die_with_parent() -> None:  # in the child, before exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Masters:
    """The master connections of one run (see the module doc); ``close`` ends them all."""

    def __init__(self, directory: Path, base_ssh_args: str = "") -> None:
        self.directory = directory
        self.base_ssh_args = base_ssh_args  # the run's [ssh_connection] ssh_args (the team's, then ours)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.requiretty: list[str] = []  # hosts whose sudo needs a terminal: no pipelining there

    def argv(self, spec: HostSpec, timeout: float, become: bool, *, remote: str | None = None, master: bool = True,
             control: Sequence[str] = ()) -> list[str]:
        """ssh as Ansible's ssh plugin would run it, as the master (our options first: ssh keeps the first).
        ``remote``: the master's command on the host instead of ours (an execution node's session).
        ``master=False``: a client of that master with the very same options (so the same ``%C`` socket);
        ``control``: a control command for the master (``-O forward -R ...``)."""
        role = ["-o", "ControlMaster=yes", "-o", "ControlPersist=no"] if master else ["-o", "ControlMaster=no"]
        args = ["ssh", *role, "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={max(1, int(timeout))}",
                *shlex.split(spec.ssh_args_override if spec.ssh_args_override is not None else self.base_ssh_args)]
        if spec.host_key_policy.value == "no":  # host_key_checking=False, as Ansible passes it
            args += ["-o", "StrictHostKeyChecking=no"]
        args += ["-o", f"Port={spec.port}"]
        if spec.key_file is not None:
            args += ["-o", f"IdentityFile={spec.key_file}"]
        if spec.user:
            args += ["-o", f"User={spec.user}"]
        args += shlex.split(spec.ssh_args)
        if remote is None and not control:
            remote = (_REMOTE_BECOME if become else _REMOTE).format(ready=READY.decode(), requiretty=REQUIRETTY.decode())
        return [*args, "-o", f"ControlPath={self.directory}/%C", *control, "--", spec.address,
                *([remote] if remote is not None else [])]

    def open(self, specs: Sequence[HostSpec], timeout: float, *, become: bool = False) -> list[HostProblem]:
        """Open a master to each of ``specs``; the problems of those that failed (classified), in input order."""
        ssh = shutil.which("ssh")
        if ssh is None:  # no OpenSSH client here: Ansible's ssh plugin cannot work either
            return check_hosts(specs, timeout=timeout)
        started: dict[str, tuple[HostSpec, subprocess.Popen[bytes]]] = {}
        for spec in specs:
            started[spec.name] = (spec, subprocess.Popen(
                self.argv(spec, timeout, become), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, preexec_fn=die_with_parent, start_new_session=True))
        # ConnectTimeout bounds reaching each host; the handshakes then share the controller's CPU (~0.1 s of it
        # each, as much on a host of a test bed on the same machine): a bigger fleet gets more time to be ready.
        failed = self._wait_ready(started, timeout + 2.0 + 0.2 * len(started))
        if not failed:
            return []
        bad = [started[name][0] for name in failed]
        problems = {p.host.name: p for p in check_hosts(bad, timeout=timeout)}
        out = []
        for spec in bad:
            out.append(problems.get(spec.name) or HostProblem(spec, Reason.OTHER, f"ssh: {failed[spec.name]}"))
        return out

    def _wait_ready(self, started: dict[str, tuple[HostSpec, subprocess.Popen[bytes]]],
                    limit: float) -> dict[str, str]:
        """Read each master's stdout until it says READY; the ones that did not, with ssh's last words."""
        sel = selectors.DefaultSelector()
        seen: dict[str, bytes] = {}
        for name, (_, proc) in started.items():
            assert proc.stdout is not None
            sel.register(proc.stdout, selectors.EVENT_READ, name)
            seen[name] = b""
        failed: dict[str, str] = {}
        deadline = time.monotonic() + limit
        pending = set(started)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                for name in pending:
                    failed[name] = f"no answer within {limit:g}s"
                break
            for key, _ in sel.select(left):
                name = key.data
                chunk = os.read(key.fd, 4096)
                seen[name] += chunk
                if READY in seen[name]:
                    if REQUIRETTY in seen[name]:
                        self.requiretty.append(name)
                    sel.unregister(key.fileobj)
                    pending.discard(name)
                    self.procs[name] = started[name][1]
                elif not chunk or len(seen[name]) > 65536:  # ssh exited (or the host printed a banner flood)
                    sel.unregister(key.fileobj)
                    pending.discard(name)
                    failed[name] = last_words(started[name][1])
        sel.close()
        for name in failed:
            _stop(started[name][1])
        return failed

    def close(self) -> None:
        """End every master (the host's ``cat`` sees the channel close) and remove the directory."""
        procs, self.procs = list(self.procs.values()), {}
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Masters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def last_words(proc: subprocess.Popen[bytes]) -> str:
    """ssh's last stderr line (it has exited or is about to be stopped), for a failure nothing else explains."""
    try:
        proc.wait(2.0)
    except subprocess.TimeoutExpired:
        pass
    err = b""
    if proc.returncode is not None and proc.stderr is not None:
        err = proc.stderr.read(65536)
    lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"ssh exited {proc.returncode}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
