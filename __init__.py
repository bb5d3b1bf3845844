"""DTLR: the deep-transfer-learning radiomics nomogram of Li et al. (Sci Rep 2025) as software."""

__version__ = "0.1.0"
