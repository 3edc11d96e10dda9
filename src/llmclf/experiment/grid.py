"""Grid files and rows: reading a grid's TOML, checking its keys, and each row's FinetuneOptions (the
precedence is in the package docstring); whether a saved run has a row's options."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields
from pathlib import Path

from ..errors import LlmclfError
from ..options import FinetuneOptions, check_options, coerce, from_recipe

# Option keys that describe the run itself, not the experiment: never set from a grid.
_RESERVED = {"out", "overwrite", "quiet", "extra"}
_ROW_META = {"name", "note"}
# Options that do not change what is computed; ignored when deciding whether a finished row is current.
_IRRELEVANT = {"out", "overwrite", "quiet", "extra", "tokenizer_dir", "device", "cache", "checkpoint_every",
               "grad_checkpoint"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _toml_load(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise LlmclfError("reading a grid needs Python 3.11+ or the `tomli` package (pip install tomli)") from None
    if not path.is_file():
        raise LlmclfError(f"{path}: no such grid file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LlmclfError(f"{path}: not valid TOML ({str(e).splitlines()[0]})") from None


def load_grid(path) -> tuple[dict, list[dict]]:
    """(defaults, rows) of a grid TOML file, keys checked (see the package docstring)."""
    path = Path(path)
    doc = _toml_load(path)
    extra = sorted(set(doc) - {"defaults", "run"})
    if extra:
        raise LlmclfError(f"{path}: unknown top-level key {extra[0]!r} (expected [defaults] and [[run]] tables)")
    defaults = doc.get("defaults", {})
    rows = doc.get("run", [])
    if not isinstance(defaults, dict):
        raise LlmclfError(f"{path}: 'defaults' must be a table ([defaults])")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows) or not rows:
        raise LlmclfError(f"{path}: no rows; add [[run]] tables, one per configuration")
    return defaults, rows


def _option_types() -> dict:
    return {f.name: f for f in fields(FinetuneOptions)}


def _check_keys(d: dict, where: str, allow_meta: bool) -> None:
    known = set(_option_types()) - _RESERVED
    for key in d:
        if key in _RESERVED:
            raise LlmclfError(f"{where}: key {key!r} cannot be set in a grid (the experiment sets it)")
        if key not in known and not (allow_meta and key in _ROW_META | {"book_row", "skip"}):
            raise LlmclfError(f"{where}: unknown key {key!r} (not a training option; see `llmclf train --help`)")


def build_options(defaults: dict, base: dict, row: dict, out: Path, where: str):
    """FinetuneOptions for one row (precedence: built-in < defaults < base < row)."""
    builtin = FinetuneOptions(out="")
    merged = {}
    for key, value in defaults.items():
        merged[key] = coerce(key, value, f"{where} (defaults): {key}")
    for key, value in base.items():
        if key in _RESERVED or key in _ROW_META or value is None:
            continue
        if key not in _option_types():
            raise LlmclfError(f"unknown base option {key!r}")
        value = tuple(value) if key == "split" else value
        if value != getattr(builtin, key):
            merged[key] = value
    for key, value in row.items():
        if key in _ROW_META or key in ("book_row", "skip"):
            continue
        merged[key] = coerce(key, value, f"{where}: {key}")
    recipe = merged.pop("recipe", "default")
    if recipe == "auto":
        raise LlmclfError(f"{where}: recipe auto is a search of its own; give each configuration as a row")
    return check_options(from_recipe(recipe, out=str(out), overwrite=True, **merged), where)


def plan_rows(defaults: dict, rows: list[dict], base: dict, out: Path, where_file: str) -> list[tuple]:
    """[(name, row, FinetuneOptions)] for every row, each checked; nothing is written."""
    _check_keys(defaults, f"{where_file} [defaults]", allow_meta=False)
    names = set()
    planned = []
    for i, row in enumerate(rows, 1):
        name = row.get("name", f"run-{i}")
        where = f"{where_file}, row {name!r}" if "name" in row else f"{where_file}, row {i}"
        _check_keys(row, where, allow_meta=True)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise LlmclfError(f"{where}: name must be letters, digits, '.', '_' or '-' (it names a directory)")
        if name in names:
            raise LlmclfError(f"{where}: duplicate name {name!r}")
        names.add(name)
        planned.append((name, row, build_options(defaults, base, row, out / "runs" / name, where)))
    return planned


def check_only(only: list[str] | None, planned: list[tuple], where_file: str) -> set[str] | None:
    """The names `--only` selects, each checked to be a row's."""
    if only is None:
        return None
    names = {name for name, _, _ in planned}
    unknown = sorted(set(only) - names)
    if unknown:
        raise LlmclfError(f"no row named {unknown[0]!r} in {where_file} (rows: {', '.join(sorted(names))})")
    return set(only)


def _comparable(options: dict) -> dict:
    """Options as JSON sees them, without those that do not change the result."""
    return json.loads(json.dumps({k: v for k, v in options.items() if k not in _IRRELEVANT}))


def same_options(saved: dict, opts) -> bool:
    """Whether a run saved with `saved` options is the run `opts` describes. An option the saved run does not
    record (added to FinetuneOptions later) matches when `opts` leaves it at its built-in default."""
    builtin = _comparable(asdict(FinetuneOptions(out="")))
    saved, current = _comparable(saved), _comparable(asdict(opts))
    return all(saved.get(k, builtin.get(k)) == v for k, v in current.items())
