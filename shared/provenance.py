"""The one list of library versions that goes into every stored result.

Each stage names the modules whose code shapes its numbers (``STAGE_MODULES``); the versions
come from the installed distributions' metadata, so a record says exactly which releases
computed it (pyradiomics-bhklab 3.1.4, SimpleITK 2.5.0, ...).
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform

import dtlr

# The modules whose versions a stage's numbers depend on.
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "extract": ("radiomics", "SimpleITK", "numpy", "pywt"),
    "finetune": ("torch", "torchvision", "numpy"),
    "embed": ("torch", "torchvision", "numpy"),
    "model": ("numpy", "scipy", "pandas", "sklearn", "statsmodels", "skops", "duckdb",
              "matplotlib"),
}


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Top-level module -> the distributions providing it: one scan of every installed
    distribution's file list (about 0.7 s), done once per process, not once per module."""
    return dict(importlib.metadata.packages_distributions())


@functools.cache
def _distribution(module: str) -> str:
    """The installed distribution that provides a top-level module (e.g. radiomics)."""
    names = _distributions().get(module)
    if not names:
        raise LookupError(f"no installed distribution provides the module {module!r}")
    return names[0]


@functools.cache
def module_versions(modules: tuple[str, ...]) -> dict[str, str]:
    """``{distribution: version}`` for ``modules``, plus dtlr and Python."""
    out = {"dtlr": dtlr.__version__, "python": platform.python_version()}
    for module in modules:
        dist = _distribution(module)
        out[dist] = importlib.metadata.version(dist)
    return out


def versions(stage: str) -> dict[str, str]:
    """The versions recorded with every result of ``stage`` (a copy the caller may change).

    A stage not in :data:`STAGE_MODULES` (a plugin's) records dtlr's and Python's.
    """
    return dict(module_versions(STAGE_MODULES.get(stage, ())))


def code_versions(stage: str) -> dict[str, str]:
    """The versions that are part of a stage's content keys (Python's patch level is not)."""
    return {k: v for k, v in versions(stage).items() if k != "python"}
