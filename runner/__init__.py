"""Run a gdn-export artifact from Python: `Runner.load(path)`, `runner.generate(...)`, `runner.session()`."""

from .api import Runner
from .generate import ContextFullError, InputError, Timings
from .sampling import SamplingError, SamplingParams
from .session import GenerationResult, Session, TextStream

__all__ = [
    "ContextFullError",
    "GenerationResult",
    "InputError",
    "Runner",
    "SamplingError",
    "SamplingParams",
    "Session",
    "TextStream",
    "Timings",
]
