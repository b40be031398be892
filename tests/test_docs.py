"""Every Python example in the README runs."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _python_blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_example_runs(index, capsys):
    exec(compile(_python_blocks()[index], f"README block {index}", "exec"), {})
    printed = capsys.readouterr().out
    # Printed results quoted in the README are what the code prints.
    for claim in re.findall(r"print\(.*?\)\s+# (.+)", _python_blocks()[index]):
        assert claim.strip() in printed


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 2
