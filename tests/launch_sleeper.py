"""A worker for tests/test_launch.py: mark that this rank started, then sleep (never finishes).

Run by ``labkit.distributed.launch.run("tests.launch_sleeper", n, [folder])``: each rank writes
``folder/started-<rank>`` once Python is up, so the test knows how far start-up had got when the
launch was stopped.
"""

import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    Path(sys.argv[1], f"started-{os.environ.get('RANK', '?')}").touch()
    time.sleep(600)
