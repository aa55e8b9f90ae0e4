"""The README's and TOOLKIT.md's examples run as written (the README's plain loop, then TOOLKIT.md's LARS groups from an
audit and its Lightning loop, which reuse the loop's names)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TOOLKIT = README.with_name("TOOLKIT.md")


def _python_blocks():
    text = README.read_text()
    section = text[text.index("## Using elr in your own training"):text.index("## Benchmarks")]
    toolkit = TOOLKIT.read_text()
    toolkit = toolkit[:toolkit.index("## The model side")]
    return re.findall(r"```python\n(.*?)```", section + toolkit, flags=re.S)


def test_the_readme_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("lightning", reason="pip install 'elr[lightning]' (part of elr[dev])")
    blocks = _python_blocks()
    assert len(blocks) == 3, "a plain loop, LARS groups from an audit, and a Lightning loop"
    monkeypatch.chdir(tmp_path)  # the example saves elr_records.npz
    namespace = {}
    exec(compile(blocks[0], "README plain loop", "exec"), namespace)
    assert 0.0 <= namespace["accuracy"] <= 1.0 and namespace["loss"].ndim == 0   # the loop reports both
    assert namespace["warmup"].warmup_steps > 0  # λ = 1 is super-critical for ResNet56 NoShort: it warmed up
    assert (tmp_path / "elr_records.npz").exists()
    exec(compile(blocks[1], "TOOLKIT.md LARS groups", "exec"), namespace)
    adapted, plain = namespace["opt"].param_groups
    assert adapted["always_adapt"] and not plain["always_adapt"]
    assert len(adapted["params"]) == 55 and len(plain["params"]) == 2  # 55 convolutions; the classifier's weight and bias
    exec(compile(blocks[2], "TOOLKIT.md Lightning loop", "exec"), namespace)
    assert "elr/spread" in namespace["trainer"].callback_metrics
