"""How the front ends word an error: a title, a one-line message, a hint and an exit code.

Lower layers (`catalog`, `sandbox`, `assetmgr.store`) raise errors that carry data: the url, the
status, the job id, what was expected and what came. The rules that turn those into words live
here, one module per layer (`catalog`, `sandbox`, `app`), and only the CLI and the TUI call
`describe`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from assetmgr.errors import AssetMgrError


@dataclass(frozen=True)
class Wording:
    """What a front end shows for one error."""

    title: str
    message: str
    hint: str = ""
    exit_code: int = 1


E = TypeVar("E", bound=BaseException)
Rule = Callable[[Any], Wording]

_RULES: dict[type[BaseException], Rule] = {}
_RULE_MODULES = (
    "assetmgr.wording.app",
    "assetmgr.wording.catalog",
    "assetmgr.wording.previews",
    "assetmgr.wording.sandbox",
)
_loaded = False


def words_for(*types: type[E]) -> Callable[[Callable[[E], Wording]], Callable[[E], Wording]]:
    """Register a rule for these error classes (and their subclasses without a rule of their
    own)."""

    def register(rule: Callable[[E], Wording]) -> Callable[[E], Wording]:
        for t in types:
            _RULES[t] = rule
        return rule

    return register


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in _RULE_MODULES:
            importlib.import_module(name)


def describe(exc: BaseException) -> Wording | None:
    """The words for `exc`, or None when it is not an error assetmgr raises on purpose."""
    _load()
    for klass in type(exc).__mro__:
        rule = _RULES.get(klass)
        if rule is not None:
            return rule(exc)
    if isinstance(exc, AssetMgrError):
        # errors that still carry their own words
        return Wording(exc.title, exc.message, exc.hint, exc.exit_code)
    return None
