"""Writing files so that readers never see half of one: a temp file beside the target, renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_mode(directory: bool = False) -> int:
    """The mode `open`/`mkdir` would give under the process umask. Temp files and folders (made private
    by mkstemp/mkdtemp) get it before they are renamed into place, so results are as readable as any file."""
    mask = os.umask(0o022)  # os offers no read-only umask call: set it and put it back at once
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` fills a temp file in the same directory, which is then renamed to `path`: readers never
    see half a file, a failed write leaves nothing behind, and the file gets the umask's mode."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
