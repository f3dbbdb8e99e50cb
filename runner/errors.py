"""Every error a user can cause, in one place. Each message is one line that names the bad value; `gdn-run`
prints it as `gdn-run: error: ...` and exits 2, and an API caller catches `USER_ERRORS`."""

from __future__ import annotations


class ArtifactError(Exception):
    """An artifact that cannot be used (missing, truncated, another format version, wrong device)."""


class InputError(ValueError):
    """Bad user input: prompt, token ids, generation settings."""


class ContextFullError(InputError):
    """A prompt that does not fit into the artifact's max_seq_len; rejected before any work."""


class SamplingError(InputError):
    """An invalid sampling setting."""


class TemplateError(InputError):
    """A chat template that does not parse or render."""


USER_ERRORS = (ArtifactError, InputError)
