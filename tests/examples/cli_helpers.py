"""Helpers for testing the command-line examples: tiny image folders and module loading."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
CIFAR10_JPEG = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg"


def load_example(name: str) -> ModuleType:
    """Import ``examples/NAME.py`` as a module."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_image_folder(root: Path, classes: int, per_class: int, size: int = 32) -> Path:
    """Write ``classes`` subfolders of PNG images whose colour depends on the class."""
    generator = torch.Generator().manual_seed(0)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            noise = torch.rand(size, size, 3, generator=generator) * 60
            base = torch.tensor([40 + 60 * label, 200 - 50 * label, 30 * label]).float()
            pixels = (base + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return root
