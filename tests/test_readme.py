"""The README's quick start runs as written."""

import re
from pathlib import Path


def test_readme_quick_start_runs():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 3
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = scope["out"]
    assert {k for k in out if k.startswith("loss_")} == {"loss_itc", "loss_itm", "loss_mlm", "loss_rmim",
                                                                "loss_ifr"}
    out.loss.backward()
