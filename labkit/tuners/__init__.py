"""The PEFT methods: one registry of configs, defaults and trainable-parameter formulas
(``peft_methods``), saving, merging and mixing adapters (``adapters``), and merging into a 4-bit
base (``quantized_merge``). Layer 3.
"""
