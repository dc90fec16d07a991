"""How many bytes a training step or an inference needs, and the measurements that hold the estimate
to the truth: a job and its options (``job``), what autograd saves (``activations``), the totals
(``estimator``), sharding over GPUs (``sharding``), any causal LM by a dry run on fake tensors
(``dryrun``), the oracle (``measure``, which imports no estimate), rules of thumb and Korthikanti's
formula (``rules``), the calculator (``calculator``) and other calculators compared (``compare``).
Layer 2.
"""
