"""Number formats and quantization from first principles: float formats bit by bit (``formats``), int8
/ NF4 / FP4 quantization and quantized layers (``quantize``). Layer 2, beside ``memory``.
"""
