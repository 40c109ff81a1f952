"""The package as users get it: one version, its data files, its extras, its wheel.

Most checks hold wherever the package is imported from. Two need the wheel run of
``scripts/test`` (``RESUMABLE_STREAM_TEST_WHEEL=1``), which builds the sdist and wheel,
installs the wheel into a fresh venv outside the checkout and runs this suite from a
copy of the tests; it passes ``RESUMABLE_STREAM_CHECKOUT`` (the source tree) and
``RESUMABLE_STREAM_WHEEL_FILE`` (the wheel), and these tests then prove that the suite
really tested the wheel, and that the wheel holds every file of the package.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import resumable_stream
from resumable_stream.browser import CLIENT_FILES

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = os.environ.get("RESUMABLE_STREAM_CHECKOUT")
WHEEL = os.environ.get("RESUMABLE_STREAM_WHEEL_FILE")
wheel_run = pytest.mark.skipif(
    CHECKOUT is None or WHEEL is None,
    reason="only in the wheel run of scripts/test (RESUMABLE_STREAM_TEST_WHEEL=1)",
)


# The distribution users install. `resumable-stream` on PyPI is an unrelated project, so
# no install line may name it (the import package keeps the name `resumable_stream`).
DISTRIBUTION = "resumable-streams"
OLD_DISTRIBUTION = "resumable-stream"
# `pip install resumable-stream`, `uv add 'resumable-stream[redis]'`, ...: the old name as
# a whole word (not `resumable-streams`, not the npm package's `npm install`).
OLD_INSTALL = re.compile(r"(?:pip install|uv add)\s+['\"]?resumable-stream(?:\[|['\"`\s]|$)", re.M)
# PEP 723: `# /// script` ... `# ///`, each line a TOML line behind `# `.
SCRIPT_BLOCK = re.compile(r"^# /// script\s*$\n(?P<body>(?:^#(?: .*)?$\n)+?)^# ///\s*$", re.M)
# One line of TOML, as the examples write it (tomllib is not in Python 3.10).
DEPENDENCIES = re.compile(r"^dependencies\s*=\s*\[(?P<items>.*)\]\s*$", re.M)


def test_one_version_source() -> None:
    """``__version__`` is the version the installed distribution declares."""
    assert importlib.metadata.version(DISTRIBUTION) == resumable_stream.__version__


def test_distribution_name() -> None:
    assert importlib.metadata.metadata(DISTRIBUTION)["Name"] == DISTRIBUTION


def test_extras_are_declared() -> None:
    extras = set(importlib.metadata.metadata(DISTRIBUTION).get_all("Provides-Extra") or [])
    assert {"redis", "starlette", "client", "upstash", "all"} <= extras


def test_package_data_is_importable() -> None:
    """py.typed, the Lua scripts and the browser modules are where the code reads them."""
    package = resources.files("resumable_stream")
    assert package.joinpath("py.typed").is_file()
    lua = {p.name for p in package.joinpath("backends", "lua").iterdir() if p.name.endswith(".lua")}
    assert {"claim.lua", "write.lua", "snapshot.lua", "stop.lua"} <= lua
    for name in CLIENT_FILES:
        assert package.joinpath("static", name).is_file()


def _script_dependencies(source: str) -> list[str]:
    """The ``dependencies`` of a file's PEP 723 ``# /// script`` block ([] without one)."""
    block = SCRIPT_BLOCK.search(source)
    if block is None:
        return []
    toml = "\n".join(line[2:] for line in block["body"].splitlines())
    found = DEPENDENCIES.search(toml)
    assert found is not None, f"a script block without dependencies:\n{toml}"
    return re.findall(r"\"([^\"]+)\"", found["items"])


def _text_files() -> list[Path]:
    """What users read install lines in: README, CONTRIBUTING, the docs, the examples,
    and the package's own sources (its ImportError hints)."""
    package = Path(resumable_stream.__file__).resolve().parent
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted((ROOT / "examples").rglob("*.py"))
    files += sorted(package.rglob("*.py"))
    return [f for f in files if f.is_file()]


def test_no_install_line_names_the_old_distribution() -> None:
    offending = [
        f"{path}:{source.count(chr(10), 0, match.start()) + 1}: {match.group(0)!r}"
        for path in _text_files()
        for source in [path.read_text(encoding="utf-8")]
        for match in OLD_INSTALL.finditer(source)
    ]
    offending += [
        f"{path}: {hint!r}"
        for path in _text_files()
        for hint in re.findall(r"resumable-stream\[[^\]]*\]", path.read_text(encoding="utf-8"))
    ]
    assert offending == [], f"install lines naming {OLD_DISTRIBUTION!r}, not {DISTRIBUTION!r}"


def test_examples_script_metadata_names_the_distribution() -> None:
    """Every example's ``# /// script`` block (what ``uv run`` installs) asks for us,
    under the name we are published as."""
    examples = sorted((ROOT / "examples").rglob("*.py"))
    assert examples
    for path in examples:
        names = {
            canonicalize_name(Requirement(dep).name)
            for dep in _script_dependencies(path.read_text(encoding="utf-8"))
        }
        assert OLD_DISTRIBUTION not in names, path
        assert DISTRIBUTION in names, path


def test_extras_refer_to_the_distribution_by_its_name() -> None:
    """``all``, ``test``, ... name the other extras as ``resumable-streams[...]``: under any
    other name pip would fetch that distribution instead."""
    requires = importlib.metadata.requires(DISTRIBUTION) or []
    names = {canonicalize_name(Requirement(r).name) for r in requires}
    assert OLD_DISTRIBUTION not in names
    assert DISTRIBUTION in names


def test_the_script_block_parser() -> None:
    source = (
        '#!/usr/bin/env python\n# /// script\n# requires-python = ">=3.10"\n'
        '# dependencies = ["resumable-streams[redis]", "uvicorn[standard]"]\n# ///\nx = 1\n'
    )
    assert _script_dependencies(source) == ["resumable-streams[redis]", "uvicorn[standard]"]
    assert _script_dependencies("x = 1\n") == []
    assert OLD_INSTALL.search("`pip install resumable-stream`")
    assert OLD_INSTALL.search("pip install 'resumable-stream[redis]'")
    assert OLD_INSTALL.search("uv add resumable-stream\n")
    assert not OLD_INSTALL.search("pip install resumable-streams")
    assert not OLD_INSTALL.search("npm install resumable-stream")


@pytest.mark.parametrize("extra", ["none", "redis", "starlette", "client", "upstash", "all"])
def test_each_extra_alone(extra: str, tmp_path: Path) -> None:
    """With only one extra's drivers importable, the core works and every integration
    without its extra fails with an ImportError that names the extra. (The wheel run also
    installs each extra alone into its own venv and runs the same check for real.)"""
    # The package this suite imports (a checkout's or the wheel's), not whichever one the
    # interpreter would find from tmp_path: an editable install of another checkout, say.
    tested = Path(resumable_stream.__file__).resolve().parent
    path = os.pathsep.join(p for p in (str(tested.parent), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "install_check.py"), extra, "--simulate"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": path},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ok = re.search(rf"install check \[{extra}\]: ok \((.*)\)", result.stdout)
    assert ok is not None, result.stdout
    assert Path(ok[1]).resolve() == tested / "__init__.py"


@wheel_run
def test_the_suite_imports_the_installed_wheel_not_the_checkout() -> None:
    assert CHECKOUT is not None
    checkout = Path(CHECKOUT).resolve()
    here = Path(resumable_stream.__file__).resolve()
    assert not here.is_relative_to(checkout), here
    assert "site-packages" in here.parts, here
    # Subprocesses the tests start (example apps, benchmarks, producer processes) run
    # from the test tree with it on PYTHONPATH: they must find the wheel too.
    result = subprocess.run(
        [sys.executable, "-c", "import resumable_stream; print(resumable_stream.__file__)"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert Path(result.stdout.strip()).resolve() == here


@wheel_run
def test_the_wheel_holds_every_file_of_the_package() -> None:
    assert CHECKOUT is not None
    assert WHEEL is not None
    source = Path(CHECKOUT) / "resumable_stream"
    expected = {
        p.relative_to(source.parent).as_posix()
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    names = set(zipfile.ZipFile(WHEEL).namelist())
    assert expected - names == set(), "files of the package missing from the wheel"
    packaged = {n for n in names if ".dist-info/" not in n}
    assert packaged - expected == set(), "files in the wheel that the package does not have"
    assert {
        "resumable_stream/py.typed",
        "resumable_stream/static/resumable-stream.js",
        "resumable_stream/static/use-resumable-stream.js",
        "resumable_stream/backends/lua/write.lua",
    } <= names
