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
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

import resumable_stream
from resumable_stream.browser import CLIENT_FILES

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = os.environ.get("RESUMABLE_STREAM_CHECKOUT")
WHEEL = os.environ.get("RESUMABLE_STREAM_WHEEL_FILE")
wheel_run = pytest.mark.skipif(
    CHECKOUT is None or WHEEL is None,
    reason="only in the wheel run of scripts/test (RESUMABLE_STREAM_TEST_WHEEL=1)",
)


def test_one_version_source() -> None:
    """``__version__`` is the version the installed distribution declares."""
    assert importlib.metadata.version("resumable-stream") == resumable_stream.__version__


def test_extras_are_declared() -> None:
    extras = set(importlib.metadata.metadata("resumable-stream").get_all("Provides-Extra") or [])
    assert {"redis", "starlette", "client", "upstash", "all"} <= extras


def test_package_data_is_importable() -> None:
    """py.typed, the Lua scripts and the browser modules are where the code reads them."""
    package = resources.files("resumable_stream")
    assert package.joinpath("py.typed").is_file()
    lua = {p.name for p in package.joinpath("backends", "lua").iterdir() if p.name.endswith(".lua")}
    assert {"claim.lua", "write.lua", "snapshot.lua", "stop.lua"} <= lua
    for name in CLIENT_FILES:
        assert package.joinpath("static", name).is_file()


@pytest.mark.parametrize("extra", ["none", "redis", "starlette", "client", "upstash", "all"])
def test_each_extra_alone(extra: str, tmp_path: Path) -> None:
    """With only one extra's drivers importable, the core works and every integration
    without its extra fails with an ImportError that names the extra. (The wheel run also
    installs each extra alone into its own venv and runs the same check for real.)"""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "install_check.py"), extra, "--simulate"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"install check [{extra}]: ok" in result.stdout


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
