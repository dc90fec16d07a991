"""Serving on one card: bytes and FLOPs per decode step and the roofline (``roofline``). Layer 4,
beside ``training``.
"""
