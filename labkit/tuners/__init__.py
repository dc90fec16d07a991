"""The PEFT methods: one registry of configs, defaults and trainable-parameter formulas
(``peft_methods``), saving, merging and mixing adapters (``adapters``), merging into a 4-bit
base (``quantized_merge``), and greedy answers from any of them (``generation``). Layer 3.
"""
