"""The on-disk cache of generated modules.

Layout (``docs/backend_cpu.md``)::

    $DPLANG_CACHE/            (else $XDG_CACHE_HOME/dplang, else ~/.cache/dplang)
      cpu-<version>/
        m_<digest>.py         a generated module; its first line holds the SHA-256 of
                              the rest: "# dplang-cache sha256=<hex>"
        __pycache__/          Python's bytecode and Numba's cache (m_<digest>.<func>-
                              <line>.py311.nbi / .nbc) for those modules

``digest`` hashes the module text with the versions that change compiled code (Python,
NumPy, Numba, the code generator), so a file never changes once written: Numba's
``cache=True``, which checks the source file's time stamp and size, then finds its
compiled code in a later process.

Writes are atomic: the text goes to a temporary file in the same directory, which is
then linked to its final name (``os.link`` fails if another process got there first;
the file it wrote is then checked instead of being replaced, so that its time stamp,
which Numba's index records, stays put).  A file whose hash does not match (truncated,
edited, corrupt) is rewritten (``os.replace``), and Numba then recompiles it.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile

import numpy as np

HEADER = "# dplang-cache sha256="


def cache_root() -> str:
    root = os.environ.get("DPLANG_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "dplang")
    return root


_VERSIONS: str | None = None


def versions() -> str:
    """What compiled code depends on besides its own text: the versions, and the text of
    runtime.py (Numba's cache does not notice a change in a callee's file)."""
    global _VERSIONS
    if _VERSIONS is None:
        from importlib.metadata import version      # (not ``import numba``: warm starts
        from dplang.backends.cpu.codegen import CODEGEN_VERSION    # do without it)
        with open(os.path.join(os.path.dirname(__file__), "runtime.py"), "rb") as fh:
            rt = hashlib.sha256(fh.read()).hexdigest()[:12]
        _VERSIONS = (f"py{sys.version_info[0]}{sys.version_info[1]}-np{np.__version__}-"
                     f"numba{version('numba')}-cg{CODEGEN_VERSION}-rt{rt}")
    return _VERSIONS


def digest_of(text: str) -> str:
    h = hashlib.sha256()
    h.update(versions().encode())
    h.update(b"\0")
    h.update(text.encode())
    return h.hexdigest()[:32]


def file_text(text: str) -> str:
    return f"{HEADER}{hashlib.sha256(text.encode()).hexdigest()}\n{text}"


def check_file(path: str) -> bool:
    """True when the file at ``path`` is whole: its header's hash matches its body."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = fh.read()
    except (OSError, UnicodeDecodeError):
        return False
    first, sep, body = data.partition("\n")
    if not sep or not first.startswith(HEADER):
        return False
    return hashlib.sha256(body.encode()).hexdigest() == first[len(HEADER):]


_dir_cache: dict = {}


def module_dir() -> str:
    """The directory of generated modules (created; a private temporary directory when
    the cache root cannot be written)."""
    root = cache_root()
    got = _dir_cache.get(root)
    if got:
        return got
    d = os.path.join(root, "cpu-" + _safe(versions()))
    try:
        os.makedirs(d, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=d, prefix=".probe", delete=True)
        probe.close()
    except OSError:
        d = tempfile.mkdtemp(prefix="dplang-cpu-")
    _dir_cache[root] = d
    return d


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in s)


def write_module(digest: str, text: str) -> tuple[str, bool]:
    """Make sure ``m_<digest>.py`` holds ``text``; returns (path, written)."""
    d = module_dir()
    path = os.path.join(d, f"m_{digest}.py")
    want = file_text(text)
    if check_file(path) and _read(path) == want:
        return path, False
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".m_{digest}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(want)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)              # atomic, and never replaces a file
            return path, True
        except FileExistsError:
            if check_file(path) and _read(path) == want:
                return path, False          # another process wrote it meanwhile
            _purge_numba(d, digest)
            os.replace(tmp, path)           # corrupt: replace it
            tmp = None
            return path, True
        except OSError:                     # no hard links here
            os.replace(tmp, path)
            tmp = None
            return path, True
    finally:
        _discard(tmp)


def _discard(tmp: str | None) -> None:
    """Remove a temporary file that did not become a cache entry (None: nothing)."""
    if tmp is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def read_json(name: str):
    """The object saved by ``write_json(name, ...)`` in the module directory, or None
    (no file, or one whose hash does not match: a torn or edited file is rebuilt)."""
    path = os.path.join(module_dir(), name + ".json")
    if not check_file(path):
        return None
    try:
        return json.loads(_read(path).partition("\n")[2])
    except (AttributeError, ValueError):
        return None


def write_json(name: str, obj) -> None:
    """Save ``obj`` (JSON) next to the generated modules, atomically; best effort (a
    cache that cannot be written only costs the next process the work again)."""
    d = module_dir()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(file_text(json.dumps(obj)))        # (key order kept)
        os.replace(tmp, os.path.join(d, name + ".json"))
        tmp = None
    except OSError:
        pass
    finally:
        _discard(tmp)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def _purge_numba(d: str, digest: str) -> None:
    """Remove Numba's cached code for module ``m_<digest>`` (after a corrupt entry)."""
    pyc = os.path.join(d, "__pycache__")
    try:
        names = os.listdir(pyc)
    except OSError:
        return
    for n in names:
        if n.startswith(f"m_{digest}.") and (n.endswith(".nbi") or n.endswith(".nbc")):
            try:
                os.unlink(os.path.join(pyc, n))
            except OSError:
                pass


purge_numba = _purge_numba
