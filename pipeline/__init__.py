"""fusegen: fused-modal retrieval training data (GME- and MegaPairs-style) on Ray Data."""

__version__ = "0.3.0"

__all__ = ["__version__"]
