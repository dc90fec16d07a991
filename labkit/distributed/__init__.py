"""More than one process: starting ranks with torchrun (``launch``), DDP / ZeRO-like FSDP2 jobs
(``parallel``), notebook 03's demo (``demo``). Layer 4, beside ``training``.
"""
