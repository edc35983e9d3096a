"""Errors the model runtime raises; the generate task maps them to job errors."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded (missing package, no GPU when one was required…)."""


class PromptTooLongError(ValueError):
    """The prompt alone fills the model's context window; nothing can be generated."""
