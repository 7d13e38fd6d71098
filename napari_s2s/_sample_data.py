"""Sample data: three real Damond 2019 pancreas images with masks, and a semi-synthetic islet.

The files live in the repository's ``sample_data/`` (attribution in ``sample_data/README.md``);
``S2S_SAMPLE_DATA`` may point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._reader import image_layers

DAMOND_IMAGES = ("E34", "G01", "J02")


def sample_data_dir() -> Path:
    env = os.environ.get("S2S_SAMPLE_DATA")
    if env:
        return Path(env)
    for base in (Path(__file__).resolve().parent / "sample_data",
                 Path(__file__).resolve().parent.parent / "sample_data"):
        if base.is_dir():
            return base
    return Path(__file__).resolve().parent.parent / "sample_data"


def damond_dir() -> Path:
    return sample_data_dir() / "damond_pancreas_toy"


def simulated_dir() -> Path:
    return sample_data_dir() / "simulated_islet"


def load_damond(name: str = "E34"):
    """(IMCImage, mask) of one real Damond image."""
    from spatial2sentence.io import read_image, read_mask

    root = damond_dir()
    image = read_image(root / "img" / f"{name}.tiff", panel=root / "panel.csv")
    mask = read_mask(root / "masks" / f"{name}.tiff", image.shape)
    return image, mask


def load_simulated():
    """(IMCImage, mask) of the semi-synthetic islet (OME-TIFF with marker names)."""
    from spatial2sentence.io import read_image, read_mask

    root = simulated_dir()
    img = next(iter(sorted((root / "ome").glob("*.ome.tiff"))))
    image = read_image(img)
    mask = read_mask(root / "masks" / img.name.replace(".ome.tiff", ".tiff"), image.shape)
    return image, mask


def _damond(name):
    image, mask = load_damond(name)
    return image_layers(image, mask)


def damond_e34():
    return _damond("E34")


def damond_g01():
    return _damond("G01")


def damond_j02():
    return _damond("J02")


def simulated_islet():
    image, mask = load_simulated()
    return image_layers(image, mask)
