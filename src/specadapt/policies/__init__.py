"""Draft-length policies, one file each. Importing this package registers them all:
adding a method means adding a module here that uses ``@register_method``."""

import importlib
import pkgutil

from .base import DraftBlock, DraftLengthPolicy, DraftStep, RoundCost, RoundOutcome, draft_round, finish_round

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DraftBlock", "DraftLengthPolicy", "DraftStep", "RoundCost", "RoundOutcome", "draft_round", "finish_round"]
