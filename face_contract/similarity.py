"""Distance and confidence of L2-normalised embeddings, shared by verify and identify."""
import numpy as np


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - np.dot(a, b))


def confidence(distance: float, threshold: float) -> float:
    """100 at distance 0, falling linearly to 0 at the threshold and beyond."""
    if threshold <= 0:
        return 0.0
    return float(np.clip((1.0 - distance / threshold) * 100.0, 0.0, 100.0))
