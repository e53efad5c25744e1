"""The agent zipapp: deterministic, complete, and stripped without changing the code."""

from __future__ import annotations

import ast
import importlib.resources
import io
import zipfile

import pytest

from agentspaces.vmconfig.agent_bundle import (
    BUNDLED_TEMPLATES,
    AgentBundle,
    BundleError,
    build_agent_bundle,
    bundle_files,
    strip_source,
    zip_files,
)


def _agent_modules() -> dict[str, str]:
    root = importlib.resources.files("agentspaces_vm")
    return {f"agentspaces_vm/{e.name}": e.read_text(encoding="utf-8")
            for e in root.iterdir() if e.name.endswith(".py")}


def _without_docstrings(tree: ast.AST) -> str:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            node.body = [s for s in body if not (  # type: ignore[attr-defined]
                isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                and (isinstance(s.value.value, str) or s.value.value is Ellipsis))]
    return ast.dump(tree)


def test_build_is_byte_for_byte_deterministic() -> None:
    assert build_agent_bundle() == build_agent_bundle()


def test_bundle_holds_every_agent_module_the_templates_and_a_main() -> None:
    with zipfile.ZipFile(io.BytesIO(build_agent_bundle())) as archive:
        names = archive.namelist()
        infos = archive.infolist()
    assert names == sorted(names)
    assert names[0] == "__main__.py"
    assert set(_agent_modules()) <= set(names)
    assert "agentspaces_cloudinit/__init__.py" in names
    for template in BUNDLED_TEMPLATES:
        assert f"agentspaces_cloudinit/{template}" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}


def test_templates_are_copied_verbatim() -> None:
    files = bundle_files()
    root = importlib.resources.files("agentspaces_cloudinit")
    for template in BUNDLED_TEMPLATES:
        assert files[f"agentspaces_cloudinit/{template}"] == root.joinpath(template).read_bytes()


def test_stripping_keeps_code_and_line_numbers_of_every_agent_module() -> None:
    files = bundle_files()
    for name, source in _agent_modules().items():
        stripped = files[name].decode()
        assert stripped.count("\n") == source.count("\n"), name
        assert _without_docstrings(ast.parse(stripped)) == \
            _without_docstrings(ast.parse(source)), name
        assert not any(line.lstrip().startswith("#") for line in stripped.splitlines()), name


def test_strip_source_cases() -> None:
    source = '''"""Module doc."""
from __future__ import annotations

TEXT = "# not a comment"  # a comment


def only_doc():
    """Nothing but a docstring."""


class Thing:
    """Doc
    over lines."""

    value = 1  # trailing

    def method(self):  # why
        """Doc."""
        return TEXT
'''
    stripped = strip_source(source, "case.py")
    assert stripped.count("\n") == source.count("\n")
    assert "# not a comment" in stripped
    assert "comment" not in stripped.replace("# not a comment", "")
    assert "doc" not in stripped.lower().replace("only_doc", "")
    namespace: dict[str, object] = {}
    exec(compile(stripped, "case.py", "exec"), namespace)
    assert namespace["only_doc"]() is None  # type: ignore[operator]
    assert namespace["Thing"]().method() == "# not a comment"  # type: ignore[operator]
    line = source.splitlines().index("        return TEXT")
    assert stripped.splitlines()[line] == "        return TEXT"  # same line as before


def test_a_docstring_sharing_its_line_is_left_alone() -> None:
    source = 'def f(): "doc"; return 1\n'
    assert strip_source(source, "x.py") == source


def test_unparsable_source_is_a_clear_error() -> None:
    with pytest.raises(BundleError, match=r"broken\.py: cannot parse"):
        strip_source("def (:\n", "broken.py")


def test_zip_files_order_and_digest() -> None:
    data = zip_files({"b.txt": b"2", "a.txt": b"1"})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["a.txt", "b.txt"]
        assert archive.read("b.txt") == b"2"
    bundle = AgentBundle(data)
    assert len(bundle.sha256) == 64
    assert bundle.sha256 not in repr(bundle)  # the repr stays short
