"""Multi-seed records the notebooks read (``benchmarks/*.json``) and the runs behind them, all on
one abstraction (``study``): PEFT comparisons and defaults (``peft_seeds``), LoRA rank and alpha
(``lora_rank``), catastrophic forgetting (``forgetting``). Layer 5.
"""
