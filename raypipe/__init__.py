"""raypipe: anonymize faces in large image datasets with Reverse Personalization on Ray.

Heavy dependencies (torch, diffusers, ray) are imported lazily so that ``import raypipe`` and
``raypipe --help`` stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
