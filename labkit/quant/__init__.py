"""Number formats and quantization from first principles, layer 2 beside ``memory``; one module per
step of notebooks 04-07, each building on the ones before it:

- ``formats``: float formats bit by bit (notebook 04);
- ``integer``: absmax / zero-point quantization at any granularity, error metrics, int8 matmul and
  LLM.int8() (notebooks 05, 07);
- ``codebook``: 4-bit codebooks (int4, NF4, FP4, quantile, equal-count), double quantization, bits per weight
  (notebook 06);
- ``layers``: ``W8A16Linear``, ``NF4Linear``, ``W8A8Linear`` with SmoothQuant (explicit or folded into the
  norms), ``quantize_model``
  (notebooks 05-07).
"""
