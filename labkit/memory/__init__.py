"""How many bytes a training step or an inference needs, and the measurements that hold the estimate
to the truth: what autograd saves (``activations``), the totals (``estimator``), any causal LM by a
dry run on fake tensors (``dryrun``), the oracle (``measure``), rules of thumb and Korthikanti's
formula (``rules``), other calculators compared and the notebook's calculator (``calculators``).
Layer 2.
"""
