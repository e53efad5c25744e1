"""The workspace agent as a zipapp (/opt/agentspaces/agent.pyz) built from the installed
`agentspaces_vm` package plus the templates it reads from `agentspaces_cloudinit`.

The build is deterministic (sorted entries, fixed timestamps and modes) so golden files
and "did the bundle change" checks are stable. It has to fit into Hetzner's 32 KiB
user-data together with everything else, so sources are stripped of comments and
docstrings (line numbers stay as they were, so tracebacks still point at the right
line of the repository's file) and entries are stored uncompressed: the user-data
gzips the whole archive at once, which compresses far better than per-entry deflate.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.resources
import io
import tokenize
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib.resources.abc import Traversable

AGENT_PACKAGE = "agentspaces_vm"
TEMPLATE_PACKAGE = "agentspaces_cloudinit"
# Templates the agent loads at runtime through importlib.resources (agentspaces_vm/templates.py).
BUNDLED_TEMPLATES = ("caddy.json", "devcontainer.json")
_EPOCH = (1980, 1, 1, 0, 0, 0)
_MAIN = (
    "# agentspaces workspace agent (docs/agent-protocol.md, \"The zipapp\").\n"
    "import sys\n"
    f"from {AGENT_PACKAGE}.__main__ import main\n"
    "sys.exit(main())\n"
)


class BundleError(RuntimeError):
    """The agent bundle cannot be built (missing package or file, unparsable source)."""


def _docstring_ranges(tree: ast.Module) -> list[tuple[ast.Expr, bool]]:
    """Docstring statements, each with whether it is its body's only statement."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                only = len(body) == 1 and not isinstance(node, ast.Module)
                found.append((body[0], only))
    return found


@lru_cache(maxsize=64)
def strip_source(source: str, filename: str) -> str:
    """`source` without comments and docstrings, same number of lines, same code.
    Cached: every server's user-data strips the same loader (tokenize and ast took a
    quarter of the operator's CPU in a burst of creates, benchmarks/scale_bench.py)."""
    try:
        tree = ast.parse(source, filename)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, tokenize.TokenError) as exc:
        raise BundleError(f"{filename}: cannot parse: {exc}") from None
    lines = source.splitlines(keepends=True)
    blanked: set[int] = set()  # 0-based line numbers already emptied
    for expr, only in _docstring_ranges(tree):
        first, last = expr.lineno - 1, (expr.end_lineno or expr.lineno) - 1
        head = lines[first][: expr.col_offset]
        tail = lines[last][expr.end_col_offset or 0:]
        if head.strip() or tail.strip():
            continue  # shares its line with other code: leave it alone
        for number in range(first, last + 1):
            lines[number] = "\n"
            blanked.add(number)
        if only:  # the body needs a statement
            lines[first] = f"{head}...\n"
    for token in tokens:
        if token.type == tokenize.COMMENT and token.start[0] - 1 not in blanked:
            number, column = token.start[0] - 1, token.start[1]
            lines[number] = lines[number][:column].rstrip() + "\n"
    stripped = "".join(lines)
    try:
        compile(stripped, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise BundleError(f"{filename}: stripping broke the source: {exc}") from None
    return stripped


def _package_dir(package: str) -> Traversable:
    try:
        return importlib.resources.files(package)
    except ModuleNotFoundError:
        raise BundleError(f"package {package!r} is not installed") from None


def _python_files(root: Traversable, prefix: str = "") -> Iterable[tuple[str, str]]:
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            if entry.name != "__pycache__" and not entry.name.startswith("."):
                yield from _python_files(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".py"):
            yield f"{prefix}{entry.name}", entry.read_text(encoding="utf-8")


def bundle_files() -> dict[str, bytes]:
    """Archive name -> content of every entry of the agent bundle."""
    files: dict[str, bytes] = {"__main__.py": _MAIN.encode()}
    agent = _package_dir(AGENT_PACKAGE)
    for name, source in _python_files(agent):
        path = f"{AGENT_PACKAGE}/{name}"
        files[path] = strip_source(source, path).encode()
    if f"{AGENT_PACKAGE}/__init__.py" not in files:
        raise BundleError(f"{AGENT_PACKAGE} has no __init__.py")
    cloudinit = _package_dir(TEMPLATE_PACKAGE)
    init = cloudinit.joinpath("__init__.py")
    files[f"{TEMPLATE_PACKAGE}/__init__.py"] = strip_source(
        init.read_text(encoding="utf-8"), f"{TEMPLATE_PACKAGE}/__init__.py").encode()
    for name in BUNDLED_TEMPLATES:
        template = cloudinit.joinpath(name)
        if not template.is_file():
            raise BundleError(f"template {name!r} is missing from {TEMPLATE_PACKAGE}")
        files[f"{TEMPLATE_PACKAGE}/{name}"] = template.read_bytes()
    return files


def zip_files(files: dict[str, bytes]) -> bytes:
    """A deterministic zip of `files`: sorted, stored, fixed timestamps and modes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.create_system = 3  # unix, so external_attr carries the mode
            info.external_attr = (0o100644 << 16)
            info.compress_type = zipfile.ZIP_STORED
            archive.writestr(info, files[name])
    return out.getvalue()


def build_agent_bundle() -> bytes:
    """The zipapp bytes, ready for `python3 agent.pyz --config ...`."""
    return zip_files(bundle_files())


@dataclass(frozen=True)
class AgentBundle:
    """The bundle and the digest the VM's loader accepts it by."""

    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def __repr__(self) -> str:
        return f"AgentBundle({len(self.data)} bytes, sha256={self.sha256[:12]}...)"


@cache
def load_agent_bundle() -> AgentBundle:
    """The bundle of the installed agent, built once per process: the operator pushes
    these bytes to VMs whose user-data carries only the digest (docs/vm.md)."""
    return AgentBundle(build_agent_bundle())
