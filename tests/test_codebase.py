"""The code stays readable: ruff passes (config in pyproject.toml) and no function in src/ is over 60 lines."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60


def long_functions(src: Path = ROOT / "src") -> list[str]:
    """'path:line name (N lines)' for every function or method longer than MAX_LINES, docstring included."""
    found = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    found.append(f"{path.relative_to(src)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_in_src_is_longer_than_60_lines():
    assert long_functions() == []


def test_the_length_check_finds_a_long_function(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * MAX_LINES + "\n\ndef g():\n    pass\n")
    assert [x.split()[1] for x in long_functions(tmp_path)] == ["f"]


def test_ruff_passes():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    r = subprocess.run([ruff, "check", "src", "tests", "bench", "scripts"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
