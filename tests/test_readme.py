"""The README's Python example runs as printed (offline, on the demo world)."""
import re
from pathlib import Path

import crp_csp
from crp_csp.scoring import LayerLabels

README = Path(__file__).parents[1] / "README.md"


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_block("## Python API in one example"), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5
    labels = namespace["labels"]
    saved = LayerLabels.load(crp_csp.AnalysisStore(tmp_path / "runs" / "demo.h5"), "features.conv4", labels.method)
    assert [unit.labels for unit in saved.units] == [unit.labels for unit in labels.units]
    assert printed[0].startswith(f"{labels.units[0].unit} {labels.units[0].labels[:3]}")
