"""Atomic artifact directories and their ``sparsekit.json`` manifest.

Every artifact dir is written under a temporary name next to its final place and renamed into
place only when complete, so a killed run never leaves a dir that loads. The manifest records
what made the dir and the sha256 of every tensor file, which ``verify`` checks on load.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from sparsekit.errors import BadInput

MANIFEST = "sparsekit.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; artifacts are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_manifest(path: Path) -> dict | None:
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise BadInput(f"{f} is not valid JSON; the directory is corrupt.") from exc


def check_out_dir(out: Path, kind: str) -> None:
    """Refuse an ``--out`` that exists and is neither empty nor an earlier sparsekit ``kind`` output."""
    out = Path(out)
    if not out.exists():
        if not out.parent.exists() and out.parent != Path(""):
            # parents are created; just make sure it is not a file in the way
            pass
        return
    if not out.is_dir():
        raise BadInput(f"--out {out} exists and is not a directory.")
    if not any(out.iterdir()):
        return
    manifest = read_manifest(out)
    if manifest is None or manifest.get("kind") != kind:
        raise BadInput(f"--out {out} exists, is not empty and is not an earlier 'sparsekit {kind}' output; choose another directory.")


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary dir; on success it replaces ``out`` in one rename."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        _ordinary_permissions(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "d")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ordinary_permissions(directory: Path) -> None:
    """mkdtemp/mkstemp make 0700/0600; artifacts follow the umask like any other file."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(directory):
        os.chmod(root, 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


def tensor_hashes(directory: Path) -> dict[str, str]:
    d = Path(directory)
    return {p.name: sha256_file(p) for p in sorted(d.glob("*.safetensors"))}


def verify(directory: Path) -> dict:
    """Check every tensor file against the manifest's sha256; return the manifest."""
    d = Path(directory)
    manifest = read_manifest(d)
    if manifest is None:
        raise BadInput(f"{d} has no {MANIFEST}; it is not a sparsekit output (or it is incomplete).")
    for name, digest in manifest.get("sha256", {}).items():
        f = d / name
        if not f.is_file():
            raise BadInput(f"{f} is missing; the directory is incomplete.")
        if sha256_file(f) != digest:
            raise BadInput(f"{f} does not match its sha256 in {MANIFEST}; the file is truncated or was modified.")
    return manifest
