"""README.md and docs/*.md as a user reads them: links that resolve, a README that stays a front page,
and code blocks that run.

Which blocks run is decided by a visible marker, the same on every page (docs/testing.md):

- a block fenced ```bash or ```python runs, unless the line before its fence is an HTML comment
  ``<!-- no-run: the reason -->`` (the network, real weights, a GPU, a server, the whole suite);
- a ```yaml or ```json block must parse; a ```text block, or one without a language, is shown output or
  usage and never runs; any other language is an error, so no code can hide from this test.

The blocks run in page order (README.md, then docs/ by name) in one scratch folder shared by all
pages, with ``examples/`` linked into it, the project's ``videograin`` first on the PATH, HF_HUB_OFFLINE=1
and one CPU thread: offline, on the toy models the package ships and tiny random-weight models. A block
whose text was already run (the same command on two pages) is not run again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150

RUN = {"bash": "bash", "python": "python"}
DATA = {"yaml": yaml.safe_load, "json": json.loads}
SHOWN = {"", "text"}
NO_RUN = re.compile(r"^\s*<!--\s*no-run\b(.*?)-->\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)(.*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    no_run: str | None  # the reason given by the no-run marker above the fence, None when unmarked

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the no-run marker of the line above each fence
    ("" when the marker gives no reason)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, lang = opening.group(1), opening.group(2).lower()
        marker = NO_RUN.match(lines[i - 1]) if i else None
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j])
            j += 1
        assert j < len(lines), f"{page.relative_to(ROOT)}:{i + 1}: code block never closed"
        reason = marker.group(1).lstrip(":").strip() if marker else None
        blocks.append(Block(page, i + 1, lang, "".join(f"{line}\n" for line in body), reason))
        i = j + 1
    return blocks


def prose(page: Path) -> str:
    """The page without its code blocks and inline code spans (where links are not links)."""
    text = page.read_text(encoding="utf-8")
    lines = text.splitlines()
    for block in code_blocks(page):
        end = block.line + block.text.count("\n")
        lines[block.line - 1 : end + 1] = [""] * (end + 2 - block.line)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", "\n".join(lines))


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens,
    repeats numbered."""
    anchors, seen = set(), {}
    for line in prose(page).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).replace("`", "").lower()
        slug = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def links(page: Path) -> list[str]:
    """Targets of the page's Markdown links and images, [text](target) and ![alt](target)."""
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose(page))


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# --- links and size -----------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_points_to_a_file_and_anchor_that_exist(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ... not checked (offline)
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif not file.resolve().is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page_id(page)}: " + "; ".join(broken)


def test_the_link_checker_finds_links_and_anchors():
    """The helpers above on a page of known content (so the link test cannot pass by finding nothing)."""
    assert "docs/config.md" in links(ROOT / "README.md")
    assert "docs/comparison_toyworld.png" in links(ROOT / "README.md")
    assert "wan-in-detail" in heading_anchors(ROOT / "docs" / "backbones.md")


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES, f"README.md has {len(readme.splitlines())} lines"
    for command in ("bash scripts/test.sh", "bash scripts/demo.sh"):  # .ci/run calls them as the README says
        assert command in readme and (ROOT / command.split()[1]).is_file(), command
    assert "docs/comparison_toyworld.png" in links(ROOT / "README.md")
    for page in PAGES[1:]:  # every docs page is reachable from the front page
        assert f"docs/{page.name}" in links(ROOT / "README.md"), f"README.md does not link docs/{page.name}"


# --- code blocks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_code_block_runs_or_says_why_not(page):
    """Each block is runnable (bash, python), data that parses (yaml, json) or shown text; a no-run
    marker gives its reason."""
    problems = []
    for block in code_blocks(page):
        if block.no_run == "":
            problems.append(f"{block.where}: a no-run marker without a reason (<!-- no-run: why -->)")
        elif block.lang in DATA:
            try:
                DATA[block.lang](block.text)
            except Exception as err:  # noqa: BLE001 - any parse error is the finding
                problems.append(f"{block.where}: {block.lang} does not parse: {err}")
        elif block.lang not in RUN and block.lang not in SHOWN:
            problems.append(f"{block.where}: language {block.lang!r} is neither run ({', '.join(RUN)}), "
                            f"parsed ({', '.join(DATA)}) nor shown (text)")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def docs_workdir(tmp_path_factory):
    """The scratch folder the blocks run in, shared by every page, and the blocks already run there."""
    work = tmp_path_factory.mktemp("docs")
    (work / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    return work, {}


def block_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_block(block: Block, work: Path) -> subprocess.CompletedProcess:
    if block.lang == "python":
        script = work / f"_{block.page.stem}_{block.line}.py"
        script.write_text(block.text, encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    return subprocess.run(command, cwd=work, env=block_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_the_code_blocks_run(page, docs_workdir):
    work, done = docs_workdir
    for block in code_blocks(page):
        if block.lang not in RUN or block.no_run is not None or (block.lang, block.text) in done:
            continue
        result = run_block(block, work)
        done[(block.lang, block.text)] = result.returncode
        if result.returncode:
            output = (result.stdout + result.stderr)[-3000:]
            pytest.fail(f"{block.where}: the {block.lang} block exited with {result.returncode}:\n"
                        f"{textwrap.indent(block.text, '    ')}\n{output}")


def test_the_runnable_blocks_are_the_expected_ones():
    """The examples a user is promised run here: the demo, the pipeline on the toy model, the Wan demo,
    the tiny-model smoke run (so a marker added by mistake to one of them is noticed)."""
    run = [b.text for p in PAGES for b in code_blocks(p) if b.lang in RUN and b.no_run is None]
    for expected in ("videograin demo --out", "VideoGrainPipeline.from_pretrained(toy.SD_MODEL)",
                     "videograin demo --wan", "videograin make-tiny-model", "videograin.edit(toy.DEMO_CONFIG"):
        assert any(expected in text for text in run), expected


# --- the CLI page against the CLI ----------------------------------------------------------------


def cli_usage() -> dict[str, set[str]]:
    """{command: the --options its usage lines in docs/cli.md name} ("" for `videograin --version`)."""
    page = ROOT / "docs" / "cli.md"
    usage = next(b for b in code_blocks(page) if b.lang == "text" and b.text.startswith("videograin "))
    commands, current = {}, None
    for line in usage.text.splitlines():
        if line.startswith("videograin "):
            word = line.split()[1]
            current = "" if word.startswith("-") else word
            commands.setdefault(current, set())
        commands[current] |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
    return commands


HELP_SCRIPT = """
import contextlib, io, json, runpy, sys
helps = {}
for command in json.loads(sys.argv[1]):
    sys.argv = ["videograin", *([command] if command else []), "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        runpy.run_module("videograin", run_name="__main__", alter_sys=True)
    helps[command] = out.getvalue()
print(json.dumps(helps))
"""


def test_the_cli_page_names_only_options_the_commands_have():
    """Every option in docs/cli.md's usage lines is in that command's `python -m videograin CMD --help`,
    and every command of the CLI has a usage line."""
    usage = cli_usage()
    result = subprocess.run([sys.executable, "-c", HELP_SCRIPT, json.dumps(sorted(usage))], env=block_env(),
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    helps = json.loads(result.stdout.strip().splitlines()[-1])
    for command, options in usage.items():
        listed = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", helps[command]))
        assert options <= listed, f"videograin {command}: {sorted(options - listed)} not in its --help"
    top = re.search(r"\{([a-z,-]+)\}", helps[""]).group(1).split(",")
    assert set(top) <= set(usage), f"commands without a usage line in docs/cli.md: {sorted(set(top) - set(usage))}"
