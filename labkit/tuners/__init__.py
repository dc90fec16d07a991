"""The PEFT methods: one registry of configs, defaults and trainable-parameter formulas
(``peft_methods``), and saving, merging and mixing adapters (``adapters``). Layer 3.
"""
