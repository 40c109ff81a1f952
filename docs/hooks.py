"""MkDocs hooks: the performance page shows the latest benchmark run.

``benchmarks/README.md`` is the benchmark report, rewritten by whoever runs
``python -m benchmarks``; copying its table into the docs would go stale at the next
run. So the build takes the report's "Latest results" and "Redis Cluster" sections
where ``docs/guides/performance.md`` says ``<!-- benchmarks: SECTION -->``, and
publishes the plots those sections show (``benchmarks/results/*.png``) beside the
page. Links to other result files (the JSON) become plain text: they are in the
repository, not on the site.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

_ROOT = Path(__file__).resolve().parent.parent
_REPORT = _ROOT / "benchmarks" / "README.md"
_RESULTS = _ROOT / "benchmarks" / "results"
_PAGE = "guides/performance.md"
# Where the plots go on the site, relative to the site root and to the page.
_ASSETS = "guides/benchmarks"
_MARKER = re.compile(r"<!--\s*benchmarks:\s*(?P<title>[^>]*?)\s*-->")
_LINK = re.compile(r"(!?)\[(?P<text>[^\]]*)\]\(results/(?P<name>[^)\s]+)\)")


def _section(report: str, title: str) -> str:
    """The body of the report's ``## <title>`` section, without its heading."""
    lines = report.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == f"## {title}")
    except StopIteration:
        raise ValueError(f"benchmarks/README.md has no '## {title}' section") from None
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
    )
    return "\n".join(lines[start + 1 : end]).strip()


def _relink(text: str) -> str:
    """Point the report's image links at the copies; other result files become text."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name.endswith(".png"):
            return f"{match[1]}[{match['text']}](benchmarks/{name})"
        return f"`benchmarks/results/{name}` (in the repository)"

    return _LINK.sub(replace, text)


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """Publish the plots of the benchmark results next to the performance page."""
    for plot in sorted(_RESULTS.glob("*.png")):
        files.append(
            File.generated(config, f"{_ASSETS}/{plot.name}", abs_src_path=str(plot))
        )
    return files


def on_page_markdown(markdown: str, page: Page, **_: Any) -> str:
    """Put the report's sections where the performance page asks for them."""
    if page.file.src_uri != _PAGE:
        return markdown
    if not _REPORT.is_file():  # an sdist ships the docs but not the benchmarks
        note = "*(The benchmark report is in the repository: `benchmarks/README.md`.)*"
        return _MARKER.sub(note, markdown)
    report = _REPORT.read_text("utf-8")
    return _MARKER.sub(lambda m: _relink(_section(report, m["title"])), markdown)
