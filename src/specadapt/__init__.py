"""specadapt: adaptive speculative decoding for Hugging Face language models."""

from .api import SpecDecoder
from .engine import RequestConfig, GenerationResult, SpeculativeEngine
from .errors import SpecAdaptError
from .methods import available_methods, make_method, register_method

__all__ = [
    "SpecDecoder",
    "SpeculativeEngine",
    "RequestConfig",
    "GenerationResult",
    "SpecAdaptError",
    "available_methods",
    "make_method",
    "register_method",
]
__version__ = "0.1.0"
