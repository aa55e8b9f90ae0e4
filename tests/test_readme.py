"""The README's examples run as written (a plain loop, then a Lightning loop that reuses its names)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    text = README.read_text()
    section = text[text.index("## Using elr in your own training"):text.index("The model side is plain NumPy")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("lightning", reason="pip install 'elr[lightning]' (part of elr[dev])")
    blocks = _python_blocks()
    assert len(blocks) == 2, "a plain loop and a Lightning loop"
    monkeypatch.chdir(tmp_path)  # the example saves elr_records.npz
    namespace = {}
    exec(compile(blocks[0], "README plain loop", "exec"), namespace)
    assert namespace["warmup"].warmup_steps > 0  # λ = 1 is super-critical for ResNet56 NoShort: it warmed up
    assert (tmp_path / "elr_records.npz").exists()
    exec(compile(blocks[1], "README Lightning loop", "exec"), namespace)
    assert "elr/spread" in namespace["trainer"].callback_metrics
