"""Civitai's NSFW levels and the threshold rule: which images are shown, which held back.

Civitai rates every image with one ``nsfwLevel`` bit (1 PG, 2 PG-13, 4 R, 8 X, 16 XXX, 32
Blocked); a model's or version's level is the OR of its images'. The deprecated strings of
``/api/v1/images`` (``None``, ``Soft``, ``Mature``, ``X``) become bit sets when the payload is
read (`catalog.civitai.types`). A value's *rating* is its highest bit, and a value is above a
threshold when its rating is. An image Civitai has not rated (0 or missing) counts as above
every threshold short of XXX: nobody has said it is safe.
"""

from __future__ import annotations

from typing import Final

PG: Final = 1
PG13: Final = 2
R: Final = 4
X: Final = 8
XXX: Final = 16
BLOCKED: Final = 32

LEVELS: Final[dict[str, int]] = {"PG": PG, "PG-13": PG13, "R": R, "X": X, "XXX": XXX}
"""The threshold names users pick from, mildest first."""
DEFAULT_THRESHOLD: Final = "PG"
"""Shown without asking: PG only, as Civitai shows to a visitor who has not opted in (and as
`assetmgr sync` fetches without ``--nsfw``)."""

_NAMES: Final = {**{v: k for k, v in LEVELS.items()}, BLOCKED: "Blocked"}
_SPELLINGS: Final = {
    name.lower().replace("-", "").replace(" ", ""): value for name, value in LEVELS.items()
}


def parse_threshold(value: object) -> int | None:
    """A threshold from its name (``PG``, ``PG-13``/``pg13``, ``R``, ``X``, ``XXX``, any case)
    or its bit; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value in _NAMES and value != BLOCKED else None
    if not isinstance(value, str):
        return None
    return _SPELLINGS.get(value.strip().lower().replace("-", "").replace(" ", ""))


def rating(level: int | None) -> int:
    """The highest level bit of `level` (0 when unrated, or not a level at all)."""
    if not isinstance(level, int) or isinstance(level, bool) or level <= 0:
        return 0
    return 1 << (min(level, BLOCKED * 2 - 1).bit_length() - 1)


def level_name(level: int | None) -> str:
    """``PG``, ``PG-13``, ``R``, ``X``, ``XXX``, ``Blocked`` or ``unrated``."""
    return _NAMES.get(rating(level), "unrated")


def above(level: int | None, threshold: int, *, unrated_above: bool = True) -> bool:
    """Whether an image of `level` is held back under `threshold` (module docstring).

    `unrated_above=False` is for a picture the user supplied (a preview beside their own model
    file): no rating then means the user's choice, not Civitai's silence.
    """
    top = rating(level)
    if top == 0:
        return unrated_above and threshold < XXX
    return top > threshold


__all__ = [
    "BLOCKED",
    "DEFAULT_THRESHOLD",
    "LEVELS",
    "PG",
    "PG13",
    "R",
    "X",
    "XXX",
    "above",
    "level_name",
    "parse_threshold",
    "rating",
]
