"""What a model is, from its config alone. Layer 1: imports only the core (``labkit``, ``checks``,
``dtypes``, ``hardware``, ``cli``).

Inside the layer, three modules, each importing only those listed before it (``lint-imports``
checks this order too):

- ``zoo``: loading the offline zoo (configs, models, tokenizers, checksums); a name such as
  ``"llama-2-7b"`` becomes a config here;
- ``architecture``: shapes and the parameter table of any causal LM from its config
  (``Shape``, ``module_table``, ``param_shapes``); it accepts names, so it imports ``zoo``
  (at the top of the module: torch and transformers load with it);
- ``targets``: which modules LoRA adapts and what each training method trains (``lora_modules``,
  ``regex_matches``, ``default_target_modules``, ``linear_layers``, ``trainable_shapes``).
"""
