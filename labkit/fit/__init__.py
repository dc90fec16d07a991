"""Does the job fit? The ``estimate`` command (``estimate_cli``): a job's memory and time from the
memory and inference layers, with the verdict for a card. Layer 5, beside ``studies``.
"""
