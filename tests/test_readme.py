"""The README's Python snippets run (so they never rot), and its quickstart stays two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_snippets():
    assert SNIPPETS, "README.md should contain runnable python snippets"


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, capsys):
    exec(compile(SNIPPETS[index], f"README.md[python {index}]", "exec"), {"__name__": "__readme__"})


def test_quickstart_is_two_commands():
    quickstart = README.read_text(encoding="utf-8").split("## Quickstart", 1)[1].split("##", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quickstart, flags=re.DOTALL)
    assert block is not None
    commands = [
        line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")
    ]
    assert [c.split("#")[0].strip() for c in commands] == ["make report", "make test"]
