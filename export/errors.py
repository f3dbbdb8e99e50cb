"""The exporter's user errors: each a one-line reason naming the value; `gdn-export` prints it and exits 2."""

from __future__ import annotations

from .checkpoint import CheckpointError
from .config import ConfigError
from .metadata import TokenizerFilesError
from .quant import QuantError


class ExportError(Exception):
    """A one-line, user-facing reason the export cannot be done."""


USER_ERRORS = (ExportError, ConfigError, CheckpointError, TokenizerFilesError, QuantError)
