"""Training and evaluating. Layer 4.

- ``finetune``: the chat fine-tuning loop and the one place a ``Trainer`` is built
  (``make_trainer``), answers and exact match;
- ``lm_loss``: the one causal-LM loss (token-weighted) on texts, packed blocks or labelled batches;
- ``forgetting``: probes of what fine-tuning costs, measured after every epoch;
- ``tuning``: Optuna search that survives interruption (a package: search, footprint,
  coordination, cli).
"""
