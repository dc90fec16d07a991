"""Training and evaluating: the chat fine-tuning loop (``finetune``), causal-LM losses (``lm_loss``),
forgetting (``forgetting``), Optuna search (``tuning``). Layer 4.
"""
