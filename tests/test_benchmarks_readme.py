"""benchmarks/README.md shows the lever-cost record the planner reads, not an older one."""

import importlib.util
import json

import pytest

from labkit import REPO_ROOT
from labkit.fit import plan

BENCH = REPO_ROOT / "benchmarks"


def _lever_costs():
    spec = importlib.util.spec_from_file_location("lever_costs", BENCH / "lever_costs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_the_records():
    lc = _lever_costs()
    record = json.loads(plan.RECORD.read_text())
    text = (BENCH / "README.md").read_text()
    block = text.split(lc.BLOCK_START)[1].split(lc.BLOCK_END)[0].strip()
    block_want = lc.readme_block(record, plan.load_costs())
    assert block == block_want, "re-write it: lever_costs.write_readme(plan.RECORD)"
    for name, cost in plan.load_costs().items():  # the column the planner reads
        assert f"| {name} |" in block and (
            f"{cost:.4f} |" in block or f"{cost:.2f} (argued)" in block
        )


def test_write_readme_needs_its_markers(tmp_path):
    lc = _lever_costs()
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="lever-costs"):
        lc.write_readme(plan.RECORD, readme)
    readme.write_text(f"a\n{lc.BLOCK_START}\nold\n{lc.BLOCK_END}\nb\n")
    lc.write_readme(plan.RECORD, readme)
    assert readme.read_text().startswith("a\n") and "old" not in readme.read_text()
