"""Multi-seed records the notebooks read (``benchmarks/*.json``) and the runs behind them: PEFT
defaults (``peft_seeds``), LoRA rank and alpha (``lora_rank``). Layer 5.
"""
