"""Course tooling, on top of everything and imported by nothing below: running notebooks (``runner``),
exercises and their checks (``exercises``), the notebook's first call (``session``), its NameError
hint (``name_hint``), catching up a dead kernel (``catch_up``), slides, the offline bundle,
rebuilding the zoo model (``build_zoo``), notebook 14's crash demo (``interrupt``). Layer 6.
"""
