"""The one contract between the host and the worker (stdlib + pydantic only).

`messages`: the job spec, limits and the wire messages; `jobspec`: the ``generate`` kind's
`GenSpec`, its bounds, sampler names and the prompt's ``<lora:>``/``<lyco:>`` syntax (with the
one alias rule, `lora_tag_name`); `infotext`: the one reader and writer of A1111's
``parameters`` text; `hashing`: the one file-hash helper. Both sides import only
this package from each other; it must never import docker, assetmgr or anything heavy.
"""

from __future__ import annotations

from sandbox.protocol.messages import *  # noqa: F403
from sandbox.protocol.messages import __all__ as _messages_all

__all__ = list(_messages_all)
