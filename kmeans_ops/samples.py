"""Real photographs shipped inside pip packages (scikit-learn, scikit-image): demo and test inputs."""

from __future__ import annotations

import os

SAMPLES = {
    "china.jpg": ("sklearn", "china.jpg"),
    "flower.jpg": ("sklearn", "flower.jpg"),
    "astronaut.png": ("skimage", "astronaut"),
    "coffee.png": ("skimage", "coffee"),
    "chelsea.png": ("skimage", "chelsea"),
    "rocket.png": ("skimage", "rocket"),
}


def load_rgb(name: str):
    """The RGB uint8 array of sample ``name`` (a key of SAMPLES)."""
    source, key = SAMPLES[name]
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(key)
    import skimage.data

    return getattr(skimage.data, key)()


def write_samples(folder: str, names=None) -> list[str]:
    """Write the sample photos into ``folder`` (JPEGs as shipped, others as PNG); returns the paths."""
    import cv2

    from .reconstruct import write_image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in names or SAMPLES:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            write_image(path, cv2.cvtColor(load_rgb(name), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths
