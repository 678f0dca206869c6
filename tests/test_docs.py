"""The documentation points at things that exist, and the README stays a front door.

For every markdown file of the repository (README.md, docs/**/*.md): each
``megatron_velocitune/...`` path it names (in backticks or in a link) is a file or folder of the
package (and a ``::symbol`` after it is defined there); each relative link resolves from the
file's folder, and an ``#anchor`` into a markdown page names one of its headings. The README
stays short and links every page of docs/. Each console script of setup.py answers ``--help``.
"""

import contextlib
import functools
import glob
import importlib
import io
import os
import re
import sys
from typing import Dict, FrozenSet, List, Tuple
from unittest import mock

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
README_MAX_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# [text](target) and ![alt](target), with an optional "title"; text may hold `code`.
LINK = re.compile(r"!?\[(?:[^\]\n]|\][^(])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
PACKAGE_PATH = re.compile(r"megatron_velocitune/[\w./-]*(?:::[\w.]+)?")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files() -> List[str]:
    """README.md and every page under docs/, as paths relative to the repository root."""
    found = [README] + glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
    return sorted(os.path.relpath(p, ROOT) for p in found)


def prose_lines(text: str) -> List[Tuple[int, str]]:
    """(line number, line) outside fenced code blocks: links and headings live only there."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: str) -> FrozenSet[str]:
    """Every heading anchor of a markdown file, a repeated one numbered as GitHub does."""
    counts: Dict[str, int] = {}
    found = set()
    with open(path, encoding="utf-8") as f:
        for _, line in prose_lines(f.read()):
            m = HEADING.match(line)
            if m:
                base = slug(m.group(2))
                n = counts.get(base, 0)
                found.add(f"{base}-{n}" if n else base)
                counts[base] = n + 1
    return frozenset(found)


def package_mentions(text: str) -> List[Tuple[int, str]]:
    """(line, mention) for every ``megatron_velocitune/...`` path in a code span or a link."""
    out = []
    for number, line in prose_lines(text):
        spans = [m.group(1) for m in CODE_SPAN.finditer(line)]
        spans += [m.group(1) for m in LINK.finditer(line)]
        for span in spans:
            out += [(number, m.group(0)) for m in PACKAGE_PATH.finditer(span)]
    return out


def check_package_path(mention: str) -> str:
    """Why ``mention`` does not name a real file (and symbol) of the package; "" if it does."""
    path, _, symbol = mention.partition("::")
    path = path.rstrip(".,;:")
    full = os.path.join(ROOT, path)
    if not os.path.exists(full):
        return f"{path} does not exist"
    if symbol:
        name = symbol.split(".")[-1]
        with open(full, encoding="utf-8") as f:
            source = f.read()
        if not re.search(
            rf"^\s*(def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*[:=]", source, re.M
        ):
            return f"{path} defines no {name!r}"
    return ""


def check_link(md_file: str, target: str) -> str:
    """Why the link ``target`` of ``md_file`` does not resolve; "" if it does."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
        return ""
    target_path, _, fragment = target.partition("#")
    source = os.path.join(ROOT, md_file)
    if target_path:
        full = os.path.normpath(os.path.join(os.path.dirname(source), target_path))
        if not os.path.exists(full):
            return f"{target_path} does not exist (from {os.path.dirname(md_file) or '.'}/)"
        if not full.startswith(ROOT + os.sep):
            return f"{target_path} leaves the repository"
    else:
        full = source
    if fragment and full.endswith(".md") and fragment not in anchors(full):
        return f"no heading with anchor #{fragment} in {os.path.relpath(full, ROOT)}"
    return ""


MARKDOWN = markdown_files()


def test_the_markdown_files_are_found():
    assert "README.md" in MARKDOWN and len(MARKDOWN) > 5


@pytest.mark.parametrize("md_file", MARKDOWN)
def test_package_paths_exist(md_file):
    with open(os.path.join(ROOT, md_file), encoding="utf-8") as f:
        mentions = package_mentions(f.read())
    bad = [f"{md_file}:{n}: `{m}`: {why}" for n, m in mentions if (why := check_package_path(m))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("md_file", MARKDOWN)
def test_relative_links_resolve(md_file):
    with open(os.path.join(ROOT, md_file), encoding="utf-8") as f:
        lines = prose_lines(f.read())
    links = [(n, m.group(1)) for n, line in lines for m in LINK.finditer(line)]
    bad = [f"{md_file}:{n}: ({t}): {why}" for n, t in links if (why := check_link(md_file, t))]
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_are_for():
    assert check_package_path("megatron_velocitune/core/policy.py::velocity_update") == ""
    assert check_package_path("megatron_velocitune/control/,") == ""
    assert "does not exist" in check_package_path("megatron_velocitune/policy.py")
    assert "defines no" in check_package_path("megatron_velocitune/core/policy.py::no_such_rule")
    assert package_mentions(
        "see `megatron_velocitune/x.py::f`.\n```\n`megatron_velocitune/y`\n```"
    ) == [(1, "megatron_velocitune/x.py::f")]
    assert check_link("README.md", "docs/results/regimes.md") == ""
    assert check_link("docs/results.md", "results/regimes.md") == ""
    assert "does not exist" in check_link("docs/results.md", "docs/results/regimes.md")
    assert check_link("README.md", "https://example.com/none") == ""
    assert "no heading" in check_link("README.md", "#no-such-section")
    assert slug("Velocity from the training stream (`--velocitune-loss-source train`)") == (
        "velocity-from-the-training-stream---velocitune-loss-source-train"
    )


def test_readme_is_a_front_door():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, more than {README_MAX_LINES}"
    # Every page of docs/ is reachable from the README's index.
    linked = {
        os.path.normpath(m.group(1).partition("#")[0])
        for _, line in prose_lines(text)
        for m in LINK.finditer(line)
    }
    pages = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))}
    assert pages and not pages - linked, (
        f"docs pages not linked from README.md: {sorted(pages - linked)}"
    )
    for command in ("make demo", "make test"):
        assert command in text


def console_scripts() -> List[Tuple[str, str, str]]:
    """(name, module, function) of every console script in setup.py's entry_points."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        setup = f.read()
    block = re.search(r"\"console_scripts\"\s*:\s*\[(.*?)\]", setup, re.S)
    assert block, "setup.py declares no console_scripts"
    return re.findall(r"\"([\w-]+)\s*=\s*([\w.]+)\s*:\s*(\w+)\"", block.group(1))


SCRIPTS = console_scripts()


def test_console_scripts_are_found():
    assert len(SCRIPTS) >= 8 and ("velocitune-fit-targets" in {s[0] for s in SCRIPTS})


@pytest.mark.parametrize("name,module,function", [pytest.param(*s, id=s[0]) for s in SCRIPTS])
def test_console_script_help(name, module, function):
    # What the installed script does: sys.exit(entry()) with sys.argv as the shell sets it.
    entry = getattr(importlib.import_module(module), function)
    out = io.StringIO()
    with mock.patch.object(sys, "argv", [name, "--help"]), contextlib.redirect_stdout(out):
        with pytest.raises(SystemExit) as exit_:
            sys.exit(entry())
    text = out.getvalue()
    assert exit_.value.code in (0, None), text
    assert re.search(r"^usage:", text, re.M | re.I), text
