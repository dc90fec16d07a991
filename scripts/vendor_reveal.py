"""Re-create labkit/assets/reveal.js/ (the reveal.js files the offline slide decks load).

The files come from reveal.js 5.2.0 (MIT) as shipped inside the PyPI wheel sphinx-revealjs 3.2.1;
only what a deck needs is kept: the core script and style, the white theme with its
Source Sans Pro fonts (woff only: every browser the course supports takes woff), and the speaker
notes plugin. Run it only to update the vendored copy (needs PyPI once):

    python scripts/vendor_reveal.py
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "labkit" / "assets" / "reveal.js"
WHEEL = "sphinx-revealjs==3.2.1"
PREFIX = "sphinx_revealjs/_static/revealjs/"
KEEP = [
    "LICENSE",
    "dist/reveal.js",
    "dist/reveal.css",
    "dist/theme/white.css",
    "dist/theme/fonts/source-sans-pro/LICENSE",
    "dist/theme/fonts/source-sans-pro/source-sans-pro.css",
    *(
        f"dist/theme/fonts/source-sans-pro/source-sans-pro-{w}.woff"
        for w in ("regular", "italic", "semibold", "semibolditalic")
    ),
    "plugin/notes/notes.js",
]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL]
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        lines = [f"source: {wheel.name} sha256 {hashlib.sha256(wheel.read_bytes()).hexdigest()}"]
        with zipfile.ZipFile(wheel) as zf:
            for name in KEEP:
                data = zf.read(PREFIX + name)
                out = TARGET / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
                lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
    (TARGET / "SOURCE.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(KEEP)} files to {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
