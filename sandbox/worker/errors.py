"""Errors the generation engine raises; each carries a stable ``code`` for the worker protocol.

Tree::

    EngineError
    ├── HeaderError            the file is not a readable safetensors file
    ├── UnsupportedModelError  a real architecture we do not run (SD2.x, Flux, SD3, ...)
    ├── ModelMismatchError     file architecture disagrees with the catalog's base model
    ├── LoraMismatchError      LoRA made for another architecture, or only partly applied
    ├── TokenizerError         shipped tokenizer files missing or incomplete
    ├── SamplerError           unknown sampler name or a flag the scheduler ignored
    ├── SpecError              the job spec is inconsistent (missing LoRA file, bad size, ...)
    └── HashMismatchError      a file's sha256 differs from the one in the spec
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "engine_error"


class HeaderError(EngineError):
    code = "bad_header"


class UnsupportedModelError(EngineError):
    code = "unsupported_model"


class ModelMismatchError(EngineError):
    code = "model_mismatch"


class LoraMismatchError(EngineError):
    code = "lora_mismatch"


class TokenizerError(EngineError):
    code = "tokenizer"


class SamplerError(EngineError):
    code = "sampler"


class SpecError(EngineError):
    code = "bad_spec"


class HashMismatchError(EngineError):
    code = "hash_mismatch"
