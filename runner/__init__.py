"""Run a gdn-export artifact from Python: `Runner.load(path)`, `runner.generate(...)`, `runner.session()`.

The path of a generation, module by module: artifact.py (read the .pte / .ptd) -> methods.py (load prefill and
decode, CPU or CUDA) -> api.py (Runner: encode, prefill, decode loop, detokenize) with loop.py (the chunked
prefill and the decode step, graphed by cuda_graph.py, sampling by sampling.py), tokenizer.py and stops.py (stop
strings); session.py keeps a conversation, stream.py is what a turn returns, errors.py every user error, cli.py
is gdn-run. gdn-serve (the `serve` extra, imported only by it): serve_cli.py -> server.py (the HTTP API) ->
worker.py (the thread that owns the Runner), with openai_request.py / openai_response.py for OpenAI's schema.
"""

from .api import Runner
from .errors import USER_ERRORS, ArtifactError, ContextFullError, InputError, SamplingError, TemplateError
from .sampling import SamplingParams
from .session import Session
from .stream import GenerationResult, TextStream, Timings

__all__ = [
    "USER_ERRORS",
    "ArtifactError",
    "ContextFullError",
    "GenerationResult",
    "InputError",
    "Runner",
    "SamplingError",
    "SamplingParams",
    "Session",
    "TemplateError",
    "TextStream",
    "Timings",
]
