from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models():
    """Tiny random SDXL + IP-Adapter-FaceID (real classes, random weights: nothing is downloaded)."""
    from raypipe.anonymize.models import build_tiny_models

    return build_tiny_models(id_embed_dim=512, seed=0)
