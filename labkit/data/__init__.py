"""The course's own data sets: generating them (``generator``, ``python -m labkit build-data``) and
loading them (``loaders``). Layer 1, beside ``models``.
"""
