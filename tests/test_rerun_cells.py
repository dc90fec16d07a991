"""Cells that learners re-run: training cells start from a fresh model, setup cells keep what was
trained, check cells do not pass on values left by a cell that failed.

Each notebook runs top to bottom in one kernel (with a smaller parameter override injected after
its parameters cell, to stay fast), then its training / setup cells run again, as a learner would.
Cells are found by the line they start with and their check as the next ``# CHECK`` cell, so
inserting a cell does not move them; notebook 13 works in the test's own temporary folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nbformat
import pytest

from labkit import REPO_ROOT

nbclient = pytest.importorskip("nbclient")
pytestmark = pytest.mark.slow  # two notebooks top to bottom: ~2 min (make quick leaves them out)

NOTEBOOKS = REPO_ROOT / "notebooks"


class Kernel:
    """One kernel running a notebook's cells, found by what they start with, plus ad-hoc code.

    ``replace``: ``{text: new text}`` applied to the one code cell holding ``text`` before the run
    (e.g. to point the notebook's work folder at the test's own temporary folder).
    """

    def __init__(self, path: Path, override: str, replace: dict[str, str] | None = None):
        self.nb = nbformat.read(path, as_version=4)
        for old, new in (replace or {}).items():
            cell = self.nb.cells[self._one(lambda src, old=old: old in src, old)]
            cell.source = cell.source.replace(old, new)
        params = next(
            i for i, c in enumerate(self.nb.cells) if "parameters" in c.metadata.get("tags", [])
        )
        self.nb.cells.insert(params + 1, nbformat.v4.new_code_cell(override))
        self.client = nbclient.NotebookClient(
            self.nb,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )

    def _one(self, test, what: str) -> int:
        hits = [i for i, c in enumerate(self.nb.cells) if c.cell_type == "code" and test(c.source)]
        assert len(hits) == 1, (what, hits)
        return hits[0]

    def cell(self, line_start: str) -> int:
        """The one code cell with a line starting with ``line_start`` (e.g. ``"run = "``: the
        cell that sets ``run``)."""
        return self._one(
            lambda src: any(ln.lstrip().startswith(line_start) for ln in src.splitlines()),
            line_start,
        )

    def check_of(self, index: int) -> int:
        """The ``# CHECK`` cell that checks cell ``index``: the first one after it."""
        return next(
            i
            for i in range(index + 1, len(self.nb.cells))
            if self.nb.cells[i].cell_type == "code"
            and self.nb.cells[i].source.lstrip().startswith("# CHECK")
        )

    def run(self, index: int) -> None:
        self.client.execute_cell(self.nb.cells[index], index)

    def fails(self, index: int) -> str:
        """Run a cell that must fail; return its error name and message."""
        with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
            self.run(index)
        return str(err.value)

    def code(self, source: str):
        """Run ``source``; the JSON its last line prints is returned."""
        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        return json.loads(text.strip().splitlines()[-1])

    def run_all(self) -> None:
        for i, cell in enumerate(list(self.nb.cells)):
            if cell.cell_type == "code":
                self.run(i)


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_notebook_11_training_cell_reruns_from_a_fresh_model():
    k = Kernel(
        NOTEBOOKS / "11_lora.ipynb",
        "EVAL_LIMIT = 8\nSWEEP = []\nRS_SWEEP = []\nSCALING_RANKS = [1, 4]",
    )
    with k.client.setup_kernel():
        k.run_all()
        first = k.code("import json; print(json.dumps([run.steps, run.losses]))")
        k.run(k.cell("run = "))  # a learner runs the training cell again
        second = k.code("print(json.dumps([run.steps, run.losses]))")
        assert second[0] == first[0], "the re-run trained a different number of steps"
        assert second[1] == pytest.approx(first[1], abs=1e-5), "the re-run did not start afresh"
        # the merge cell can run twice (it merges a copy) and its check recomputes by_hand
        merge = k.cell("merged = ")
        k.run(merge)
        k.run(k.check_of(merge))
        # a check whose producer failed does not pass on the stale value
        evaluation = k.cell("after = ")
        k.code("import json; _tok = tok; tok = None; print(json.dumps(0))")
        k.fails(evaluation)
        message = k.fails(k.check_of(evaluation))
        assert "run the evaluation cell above first" in message
        k.code("tok = _tok; print(json.dumps(0))")


def test_notebook_13_setup_rerun_keeps_the_trained_adapters(tmp_path):
    setup_line = 'WORK = REPO_ROOT / "build" / "13_adapters"'
    k = Kernel(
        NOTEBOOKS / "13_adapters_and_merging.ipynb",
        "EVAL_LIMIT = 4",
        replace={setup_line: f"WORK = __import__('pathlib').Path({str(tmp_path)!r})"},
    )
    work = tmp_path
    with k.client.setup_kernel():
        k.run_all()
        adapters = [work / "adapter_sentence", work / "adapter_short"]
        before = [_digest(a) for a in adapters]
        k.run(k.cell("WORK = "))  # re-running the setup cell after training
        assert all((a / "adapter_config.json").is_file() for a in adapters)
        assert [_digest(a) for a in adapters] == before, "the setup cell changed the adapters"
        # the training cell, run again, retrains from the same start: the same adapters
        losses = k.code("import json; print(json.dumps({t: r.losses for t, r in runs.items()}))")
        k.run(k.cell("runs[target] = "))
        again = k.code("print(json.dumps({t: r.losses for t, r in runs.items()}))")
        for target, values in losses.items():
            assert again[target] == pytest.approx(values, abs=1e-5), target
        # the load cell fails (adapter folder missing) -> its check fails, not stale-passes
        load = k.cell("model = PeftModel.from_pretrained(")
        k.code('import json; _A = A_DIR; A_DIR = WORK / "no_such_adapter"; print(json.dumps(0))')
        k.fails(load)
        assert "run the cell above (load both adapters) first" in k.fails(k.check_of(load))
        k.code("A_DIR = _A; print(json.dumps(0))")
        k.run(load)
        k.run(k.check_of(load))
