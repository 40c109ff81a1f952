"""The docs site cannot rot: it builds strictly, covers every public name, and its code runs.

* ``mkdocs build --strict`` (mkdocs.yml: broken links, bad anchors, unresolved API
  cross-references and docstring parse errors are all failures), once per session.
* The API reference lists every name in every public module's ``__all__`` (read from
  the built site's ``objects.inv``), each with a docstring, and every parameter a
  docstring documents exists in its signature.
* Every ``python`` block of the pages (and of the README) compiles and passes mypy
  against the imported package (in one mypy run); a block preceded by
  ``<!-- docs-test: run -->`` also runs, on the in-memory backend, and must exit 0.

The package is read where Python imports it from: in the wheel run of ``scripts/test``
that is the installed wheel, so the reference documents what users install.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import griffe
import pytest

import resumable_stream as _rs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

PUBLIC_MODULES = [
    "resumable_stream",
    "resumable_stream.asgi",
    "resumable_stream.starlette",
    "resumable_stream.client",
    "resumable_stream.browser",
    "resumable_stream.ai_sdk",
    "resumable_stream.backends",
    "resumable_stream.backends.redis",
    "resumable_stream.backends.cluster",
    "resumable_stream.testing",
]
"""Modules users import by path; each has an ``__all__`` that the reference must cover."""

if importlib.util.find_spec("resumable_stream.backends.upstash") is not None:
    PUBLIC_MODULES.append("resumable_stream.backends.upstash")

_RUN_MARK = "<!-- docs-test: run -->"
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)

# Names a sample may use without defining them, as an app around it would have them.
# Only names a sample does not bind itself are declared, so a sample that defines its
# own `app` is checked as written.
_PRELUDE = {
    "app": "app: _Any = None",
    "routes": "routes: list[_Any] = []",
    "ctx": "ctx: _rs.ResumableStreamContext = _rs.create_resumable_stream_context(None)",
}


@dataclass(frozen=True)
class Sample:
    """One ``python`` code block of a page."""

    page: str
    line: int
    code: str
    run: bool

    @property
    def name(self) -> str:
        stem = re.sub(r"\W", "_", self.page.removesuffix(".md"))
        return f"{stem}_L{self.line}"


def _pages() -> list[Path]:
    return [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]


def _samples() -> list[Sample]:
    samples = []
    for path in _pages():
        text = path.read_text("utf-8")
        for match in _FENCE.finditer(text):
            if match["info"].strip().split(" ")[0] not in ("python", "py"):
                continue
            before = text[: match.start()].rstrip()
            samples.append(
                Sample(
                    page=str(path.relative_to(ROOT)),
                    line=text.count("\n", 0, match.start()) + 1,
                    code=textwrap.dedent(match["body"]),
                    run=before.endswith(_RUN_MARK),
                )
            )
    return samples


SAMPLES = _samples()


def _bound_names(tree: ast.AST) -> set[str]:
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound


def _as_module(sample: Sample) -> str:
    """The sample as a module mypy can check: stand-ins for the app's names it uses,
    and top-level ``await`` (as a REPL or notebook allows) moved into a coroutine."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(sample.code, sample.name, "exec", flags=flags)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    free = used - _bound_names(tree) - set(dir(builtins))
    prelude = [
        "from typing import Any as _Any",
        "import resumable_stream as _rs",
        *(_PRELUDE[name] for name in sorted(free & _PRELUDE.keys())),
    ]
    code = sample.code
    try:
        compile(code, sample.name, "exec")  # to bytecode: the parser alone allows `await`
    except SyntaxError:  # top-level await
        code = "async def _sample() -> None:\n" + textwrap.indent(code, "    ")
    return "\n".join(prelude) + "\n" + code


def test_samples_were_found() -> None:
    """The extraction works: the guides have samples, and some of them run."""
    assert len(SAMPLES) >= 20
    assert sum(s.run for s in SAMPLES) >= 4


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """One mypy run over every sample; its errors by sample name."""
    folder = tmp_path_factory.mktemp("samples")
    for sample in SAMPLES:
        (folder / f"{sample.name}.py").write_text(_as_module(sample), "utf-8")
    # From a checkout (an editable install, which mypy cannot see through) the package's
    # parent folder goes on mypy's path; from a wheel mypy finds it in site-packages.
    package_parent = Path(_rs.__file__).resolve().parent.parent
    from_checkout = (package_parent / "pyproject.toml").is_file()
    search = f"mypy_path = {package_parent}\n" if from_checkout else ""
    config = folder / "mypy.ini"
    config.write_text(
        "[mypy]\n"
        "python_version = 3.10\n"
        "check_untyped_defs = True\n"
        f"{search}"
        # The package is checked by its own strict run; here only its use is.
        "[mypy-resumable_stream.*]\nfollow_imports = silent\n"
        # The AI SDK page calls OpenAI's SDK, which the tests do not install.
        "[mypy-openai.*]\nignore_missing_imports = True\n",
        "utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config),
         "--cache-dir", str(folder / ".mypy_cache"), "--no-error-summary",
         "--show-error-codes", *sorted(str(p) for p in folder.glob("*.py"))],
        cwd=folder, capture_output=True, text=True, timeout=300, check=False,
    )
    errors: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        name = Path(line.split(":", 1)[0]).stem
        errors.setdefault(name, []).append(line)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return errors


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_sample_type_checks(sample: Sample, mypy_errors: dict[str, list[str]]) -> None:
    assert mypy_errors.get(sample.name, []) == [], (
        f"{sample.page}:{sample.line}\n" + _as_module(sample)
    )


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.run], ids=lambda s: s.name)
def test_sample_runs(sample: Sample, tmp_path: Path) -> None:
    """Runs in a fresh interpreter outside the checkout, with no Redis configured."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KV_URL")}
    result = subprocess.run(
        [sys.executable, "-c", sample.code], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"{sample.page}:{sample.line}\n{result.stderr}"


# -- the API reference -------------------------------------------------------------------


def _public_names() -> Iterator[tuple[str, str]]:
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if not name.startswith("__"):
                yield module_name, name


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once with ``mkdocs build --strict``."""
    out = tmp_path_factory.mktemp("site")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"mkdocs build --strict: {time.monotonic() - started:.1f} s")
    return out


def _inventory(site: Path) -> set[str]:
    """The Python objects the site documents (Sphinx inventory v2, written by mkdocstrings)."""
    raw = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = raw.index(b"\n", header_end) + 1
    body = zlib.decompress(raw[header_end:]).decode("utf-8")
    return {line.split(" ", 1)[0] for line in body.splitlines() if " py:" in line}


def test_site_builds_strictly_and_documents_every_public_name(site: Path) -> None:
    documented = _inventory(site)
    missing = [f"{m}.{n}" for m, n in _public_names() if f"{m}.{n}" not in documented]
    assert missing == [], f"public names missing from the API reference: {missing}"
    assert (site / "guides" / "performance.html").is_file()
    assert "<table>" in (site / "guides" / "performance.html").read_text("utf-8")


@functools.cache
def _package() -> griffe.Module:
    """The package as griffe reads it (statically, from where Python finds it)."""
    package = griffe.load("resumable_stream", docstring_parser="google")
    assert isinstance(package, griffe.Module)
    return package


def _griffe_object(module_name: str, name: str) -> griffe.Object:
    package = _package()
    module = package[module_name.partition(".")[2]] if "." in module_name else package
    member = module[name]
    return member.final_target if member.is_alias else member


# Public names whose module another change owns right now; each still appears in the
# reference (with its signature), only without a sentence of its own.
_DOCSTRING_PENDING: set[str] = set()  # names whose docstring is still to be written


def test_every_public_name_has_a_docstring() -> None:
    undocumented = []
    for module_name, name in _public_names():
        if f"{module_name}.{name}" in _DOCSTRING_PENDING:
            continue
        obj = _griffe_object(module_name, name)
        if obj.docstring is None or not obj.docstring.value.strip():
            undocumented.append(f"{module_name}.{name}")
    assert undocumented == []


def _documented_parameters(obj: griffe.Object) -> Iterator[str]:
    if obj.docstring is None:
        return
    for section in obj.docstring.parse("google", warnings=False):
        if section.kind.value in ("parameters", "other parameters"):
            for param in section.value:
                # The house style groups related ones: "status_code, headers: as for ...".
                yield from (p.strip() for p in param.name.split(","))


def _callables(obj: griffe.Object) -> Iterator[tuple[griffe.Object, set[str]]]:
    if obj.is_function:
        yield obj, {p.name for p in obj.parameters}
    elif obj.is_class:
        init = obj.members.get("__init__")
        if init is not None and init.is_function:
            yield obj, {p.name for p in init.parameters}  # the class documents __init__
        for member in obj.members.values():
            if not member.is_alias and member.is_function and not member.name.startswith("_"):
                yield member, {p.name for p in member.parameters}


def test_documented_parameters_exist() -> None:
    """A renamed parameter must take its docstring entry with it."""
    stale = []
    for module_name, name in _public_names():
        for obj, parameters in _callables(_griffe_object(module_name, name)):
            for documented in _documented_parameters(obj):
                if documented.lstrip("*") not in parameters:
                    stale.append(f"{obj.path}: {documented}")
    assert stale == []
