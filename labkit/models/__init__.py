"""What a model is, from its config alone: shapes, parameter tables, LoRA targets (``architecture``),
and loading the offline zoo (``zoo``). Layer 1: imports only the core (``labkit``, ``checks``,
``dtypes``, ``hardware``, ``cli``).
"""
