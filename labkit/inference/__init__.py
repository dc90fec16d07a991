"""Serving on one card: bytes and FLOPs per decode step and the roofline (``roofline``), and
the same quantities measured on the machine you are on (``bench``). Layer 4, beside ``training``.
"""
