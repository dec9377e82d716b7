"""The README's quickstart runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_the_readme_python_blocks_run_in_order(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a block saves a file
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict[str, object] = {}
    for block in blocks:  # later blocks continue the earlier ones
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "clip amount=0.5 scope=global" in out
    assert "Linear(in_features=64, out_features=128" in out
