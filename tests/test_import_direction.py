"""The outer ring's dependencies point one way: every import of every detector module, those
inside functions included, is read from the source (ast) and checked against `RULES`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (importing package or module, packages or modules it must not import, why)
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("detector.evaluation", ("detector.engine",), "evaluation is below the engine"),
    (
        "detector.modeling",
        ("detector.engine", "detector.evaluation", "detector.export", "detector.predictor"),
        "the model knows nothing of its drivers",
    ),
    ("detector.export", ("detector.predictor",), "export and predictor are siblings"),
    ("detector.predictor", ("detector.export",), "export and predictor are siblings"),
    ("detector.engine", ("detector.export", "detector.predictor"), "the engine is below them"),
]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, module name) of every import in `tree`, relative ones resolved; for
    `from a import b` both a and a.b (b may be a module)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    """'path:line: importer imports target (why)' for every import that breaks `RULES`."""
    found = []
    for path in sorted((root / "detector").rglob("*.py")):
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name in _imported(tree, module, path.name == "__init__.py"):
            for importer, forbidden, why in RULES:
                if not _within(module, importer):
                    continue
                for target in forbidden:
                    if _within(name, target) and not _within(module, target):
                        where = path.relative_to(root)
                        found.append(f"{where}:{line}: {module} imports {name} ({why})")
    return sorted(set(found))


def test_the_tree_follows_the_import_direction():
    assert violations(ROOT) == []


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("relative", "text", "expected"),
    [
        (
            "detector/evaluation/bad.py",
            "def f():\n    from detector.engine import evaluate\n",
            "detector/evaluation/bad.py:2: detector.evaluation.bad imports detector.engine",
        ),
        (
            "detector/modeling/bad.py",
            "from ..export import onnx\n",
            "detector/modeling/bad.py:1: detector.modeling.bad imports detector.export",
        ),
        (
            "detector/modeling/heads/bad.py",
            "import detector.evaluation.results\n",
            "detector/modeling/heads/bad.py:1: detector.modeling.heads.bad imports "
            "detector.evaluation.results",
        ),
        (
            "detector/predictor.py",
            "class P:\n    def m(self):\n        from detector import export\n",
            "detector/predictor.py:3: detector.predictor imports detector.export",
        ),
        (
            "detector/export/slim.py",
            "from detector.predictor import Predictor\n",
            "detector/export/slim.py:1: detector.export.slim imports detector.predictor",
        ),
        (
            "detector/engine/checkpoint.py",
            "def read():\n    from detector.export.convert import load\n",
            "detector/engine/checkpoint.py:2: detector.engine.checkpoint imports detector.export",
        ),
    ],
)
def test_a_wrong_import_is_reported(tmp_path, relative, text, expected):
    _write(tmp_path, "detector/__init__.py", "")
    _write(tmp_path, "detector/modeling/ok.py", "from detector.structures import Boxes\n")
    assert violations(tmp_path) == []
    _write(tmp_path, relative, text)
    found = violations(tmp_path)
    assert found and all(line.startswith(expected) for line in found), found
