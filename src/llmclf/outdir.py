"""Output directories (runs, experiments, baselines): llmclf marks the ones it makes and only ever deletes
what it made. `--overwrite` replaces a directory that is empty or carries llmclf's marker and holds nothing
else; a directory with anything llmclf did not write in it is refused, naming those entries, never emptied.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import LlmclfError

MARKER = ".llmclf-dir"

# What llmclf writes at the top of each kind of directory. Hidden names starting with "." + one of these are
# its temp files (atomic writes, the model swap).
ENTRIES = {
    "run": {"train.csv", "validation.csv", "test.csv", "history.csv", "loss.png", "accuracy.png", "metrics.json",
            "run.json", "checkpoint.safetensors", "model", "errors.csv", "search", "search.csv", "search.json", "calibration.png",
            "curves.png", "report.html", "tensorboard", "data.json"},
    "experiment": {"results.csv", "results.md", "accuracy.png", "runs", "baseline"},
    "baseline": {"results.csv", "results.md", "accuracy.png"},
}
# The files that show a directory written before the marker existed is llmclf's (with nothing foreign in it).
LEGACY_SIGNS = {"run": {"run.json", "metrics.json"}, "experiment": {"results.csv", "runs"},
                "baseline": {"results.csv"}}


def _is_ours(name: str, kind: str) -> bool:
    if name == MARKER:
        return True
    return name in ENTRIES[kind] or any(name.startswith(f".{e}.") for e in ENTRIES[kind])


def _marker_kind(path: Path) -> str | None:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _names(entries, most: int = 5) -> str:
    shown = ", ".join(sorted(entries)[:most])
    return shown + (f" and {len(entries) - most} more" if len(entries) > most else "")


def check_output_dir(path: Path, kind: str, overwrite: bool, reuse: bool = False) -> None:
    """Refuse, with one line and without touching anything, a PATH that llmclf may not write a `kind`
    directory into. `reuse`: an existing directory of this kind is continued rather than replaced."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise LlmclfError(f"{path}: is a file, not a directory; choose another --out")
    entries = [p.name for p in path.iterdir()]
    if not entries:
        return
    foreign = [n for n in entries if not _is_ours(n, kind)]
    marked = _marker_kind(path) == kind
    legacy = not marked and MARKER not in entries and bool(LEGACY_SIGNS[kind] & set(entries))
    if foreign or not (marked or legacy):
        what = f"holds {_names(foreign or entries)}, which llmclf did not write"
        raise LlmclfError(f"{path}: not an llmclf {kind} directory ({what}); refusing to "
                          f"{'replace' if overwrite else 'write into'} it: choose another --out")
    if not overwrite and not reuse:
        raise LlmclfError(f"{path}: {kind} directory exists; pass --overwrite to replace it or choose another --out")


@dataclass
class OutputDir:
    """A directory llmclf is writing. `created` is the top-most folder this process made (None when the
    directory was there already): on failure that folder goes, or else only llmclf's own entries."""
    path: Path
    kind: str
    created: Path | None

    def discard(self) -> None:
        """Remove what this run wrote, and nothing else (a file the user put in meanwhile stays), then the
        folders this process created, if that left them empty."""
        if not self.path.is_dir():
            return
        for p in self.path.iterdir():
            if _is_ours(p.name, self.kind):
                _remove(p)
        if self.created is not None:
            _remove_empty_up_to(self.path, self.created)


def prepare_output_dir(path: Path, kind: str, overwrite: bool, reuse: bool = False) -> OutputDir:
    """Create (or, with `overwrite`, empty of llmclf's entries) a `kind` directory and mark it as llmclf's.
    With `reuse`, an existing one is kept as it is. Checks first, so a refused call changes nothing."""
    from .version import __version__
    path = Path(path)
    check_output_dir(path, kind, overwrite, reuse)
    created = None
    if path.is_dir():
        if overwrite and not reuse:
            for p in path.iterdir():
                if p.name != MARKER:
                    _remove(p)
    else:
        created = path
        while not created.parent.exists():
            created = created.parent
        path.mkdir(parents=True)
    (path / MARKER).write_text(json.dumps({"kind": kind, "llmclf_version": __version__}) + "\n", encoding="utf-8")
    return OutputDir(path, kind, created)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)  # a link is removed, never what it points to


def _remove_empty_up_to(path: Path, top: Path) -> None:
    """rmdir from `path` up to `top` while the folders are empty (folders this process created)."""
    p = path
    while True:
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return
        p = p.parent
