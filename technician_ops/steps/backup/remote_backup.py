#!/usr/bin/env python3
"""Back up and restore files and directories exactly: the host side of the
``backup`` step.

Shipped to a target host and run there by the generated Ansible tasks, so it
is ONE self-contained file using only the Python 3 standard library (3.8+).
Every command prints one JSON object on stdout, which the controller parses:

    remote_backup.py create  --out ARCHIVE.tar PATH...
    remote_backup.py verify  --archive ARCHIVE.tar --sha256 HEX
    remote_backup.py restore --archive ARCHIVE.tar --sha256 HEX

Exit codes: 0 success; 1 an operational error (permission, disk full, ...);
2 bad command line; 3 the archive is corrupt or not the one recorded
(checksum mismatch, unreadable tar, bad manifest) -- nothing was changed.

The archive is a PAX tar holding ``manifest.json`` first, then each backed-up
root under ``roots/<index>``.  Entries keep content, mode, numeric owner,
mtimes and symlinks (never followed).  The manifest says, per root, whether
it existed, so a restore can remove a root created since the backup.

A restore replaces whole roots: each one is first extracted into a private
temporary directory beside it (same filesystem), and only when every root
extracted cleanly are they swapped in by rename.  Replacing the whole tree is
what makes files the run *added* inside a backed-up directory disappear.
Limits: extended attributes and ACLs are not kept; a root that is itself a
mount point cannot be swapped by rename (the restore fails before changing
anything visible in that root).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTEGRITY = 3


class IntegrityError(Exception):
    """The archive is not what was recorded: refuse to touch anything."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _kind(path: str) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if os.path.islink(path):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "other"


def _listing(root: str) -> list[str]:
    """Relative paths below a directory root, never following symlinks."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + sorted(filenames):
            out.append(name if rel_dir == "." else os.path.join(rel_dir, name))
    return sorted(out)


def _extract_filter() -> dict:
    # Python >= 3.12 (and security backports) filter extraction; this archive
    # was checked against its recorded sha256 and must restore exactly
    # (absolute symlinks, setuid bits, owners), so trust it fully.
    if hasattr(tarfile, "fully_trusted_filter"):
        return {"filter": "fully_trusted"}
    return {}


# ---------------------------------------------------------------------------
# create


def create(out: str, paths: list[str]) -> dict:
    roots = []
    for index, raw in enumerate(paths):
        path = os.path.abspath(raw)
        kind = _kind(path)
        entry: Dict[str, Any] = {"index": index, "path": path, "existed": kind is not None, "type": kind, "files": []}
        if kind == "dir":
            entry["files"] = _listing(path)
        roots.append(entry)
    manifest: Dict[str, Any] = {"format": FORMAT_VERSION, "created_at": time.time(), "roots": roots}

    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".backup-", suffix=".tar.part", dir=os.path.dirname(out))
    try:
        os.fchmod(fd, 0o600)  # the archive may hold /etc/shadow-grade content
        with os.fdopen(fd, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                data = json.dumps(manifest, indent=1, sort_keys=True).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size = len(data)
                info.mtime = int(manifest["created_at"])
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
                for entry in roots:
                    if entry["existed"]:
                        tar.add(entry["path"], arcname="roots/%d" % entry["index"], recursive=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {
        "ok": True,
        "action": "create",
        "archive": out,
        "sha256": sha256_file(out),
        "size": os.path.getsize(out),
        "roots": [
            {"path": r["path"], "existed": r["existed"], "type": r["type"], "files": len(r["files"])} for r in roots
        ],
    }


# ---------------------------------------------------------------------------
# verify


def _open_verified(archive: str, expected: str) -> tuple[tarfile.TarFile, dict]:
    """Check the checksum, then the structure; raise IntegrityError if either is off."""
    if not os.path.isfile(archive):
        raise IntegrityError("archive %s does not exist" % archive)
    actual = sha256_file(archive)
    if actual != expected.lower():
        raise IntegrityError(
            "archive %s is corrupt or not the recorded backup: sha256 %s, expected %s" % (archive, actual, expected)
        )
    try:
        tar = tarfile.open(archive, mode="r:")
        members = tar.getmembers()
        if not members or members[0].name != MANIFEST:
            raise IntegrityError("archive %s has no manifest" % archive)
        fh = tar.extractfile(members[0])
        manifest = json.loads(fh.read().decode()) if fh else None
    except (tarfile.TarError, ValueError, OSError) as exc:
        raise IntegrityError("archive %s is unreadable: %s" % (archive, exc)) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise IntegrityError("archive %s has an unknown manifest format" % archive)
    indexes = {str(r["index"]) for r in manifest["roots"]}
    for member in members[1:]:
        parts = member.name.split("/")
        if len(parts) < 2 or parts[0] != "roots" or parts[1] not in indexes or ".." in parts:
            raise IntegrityError("archive %s holds an unexpected member %r" % (archive, member.name))
        if member.islnk():
            link = member.linkname.split("/")
            if link[:2] != parts[:2] or ".." in link:
                raise IntegrityError("archive %s holds a hard link outside its root: %r" % (archive, member.name))
    return tar, manifest


def verify(archive: str, expected: str) -> dict:
    tar, manifest = _open_verified(archive, expected)
    with tar:
        count = len(tar.getmembers()) - 1
    return {
        "ok": True,
        "action": "verify",
        "archive": archive,
        "sha256": expected.lower(),
        "members": count,
        "roots": [{"path": r["path"], "existed": r["existed"]} for r in manifest["roots"]],
    }


# ---------------------------------------------------------------------------
# restore


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def restore(archive: str, expected: str) -> dict:
    tar, manifest = _open_verified(archive, expected)
    staged: List[Tuple[Dict[str, Any], Optional[str]]] = []  # (root, temp dir holding its copy)
    results = []
    try:
        with tar:
            members = tar.getmembers()[1:]
            # Phase 1: extract every root beside its target.  Nothing visible changes.
            for root in manifest["roots"]:
                if not root["existed"]:
                    staged.append((root, None))
                    continue
                parent = os.path.dirname(root["path"])
                os.makedirs(parent, exist_ok=True)
                tmp = tempfile.mkdtemp(prefix=".techops-restore-", dir=parent)
                prefix = "roots/%d" % root["index"]
                mine = [m for m in members if m.name == prefix or m.name.startswith(prefix + "/")]
                tar.extractall(tmp, members=mine, numeric_owner=True, **_extract_filter())
                staged.append((root, tmp))
        # Phase 2: swap in.  Each root: move the current one aside, rename the
        # restored copy into place, then delete the old one.
        for root, staged_dir in staged:
            target = root["path"]
            if staged_dir is None:
                existed_now = os.path.lexists(target)
                _remove(target)
                results.append({"path": target, "action": "removed" if existed_now else "absent"})
                continue
            restored = os.path.join(staged_dir, "roots", str(root["index"]))
            old = None
            if os.path.lexists(target):
                old = os.path.join(staged_dir, "previous")
                os.rename(target, old)
            try:
                os.rename(restored, target)
            except BaseException:
                if old is not None:
                    os.rename(old, target)
                raise
            results.append({"path": target, "action": "restored"})
    finally:
        for _, leftover in staged:
            if leftover is not None and os.path.exists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
    return {"ok": True, "action": "restore", "archive": archive, "sha256": expected.lower(), "roots": results}


# ---------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remote_backup.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_create = sub.add_parser("create", help="archive PATHs into ARCHIVE")
    p_create.add_argument("--out", required=True)
    p_create.add_argument("paths", nargs="+")
    for name in ("verify", "restore"):
        p = sub.add_parser(name)
        p.add_argument("--archive", required=True)
        p.add_argument("--sha256", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            result = create(args.out, args.paths)
        elif args.command == "verify":
            result = verify(args.archive, args.sha256)
        else:
            result = restore(args.archive, args.sha256)
    except IntegrityError as exc:
        print(json.dumps({"ok": False, "action": args.command, "error": str(exc), "integrity": True}))
        return EXIT_INTEGRITY
    except (OSError, tarfile.TarError) as exc:
        print(json.dumps({"ok": False, "action": args.command, "error": "%s: %s" % (type(exc).__name__, exc)}))
        return EXIT_ERROR
    print(json.dumps(result, sort_keys=True))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
