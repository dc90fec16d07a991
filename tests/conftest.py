"""Shared test setup: quiet known-harmless logs, a fixed small thread count, offline hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from labkit import hardware  # noqa: E402

hardware.quiet_logs()
hardware.set_threads(int(os.environ.get("LABKIT_THREADS", "2")))
