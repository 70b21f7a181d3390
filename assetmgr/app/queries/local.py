"""Local models for the Generate screen, and the prompt editor's completions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from assetmgr.app.queries.tables import LORA_TYPES, _t
from sandbox.protocol.jobspec import lora_tag_name, scan_tags

# --- local models for the Generate screen, and prompt completion ------------------------------


def prompt_lora_tags(prompt: str) -> list[tuple[str, float]]:
    """The well-formed ``<lora:name:weight>`` tags of a prompt (weight 1 when left out), by
    the job contract's parser (`sandbox.protocol.jobspec.scan_tags`); malformed ones are left
    to the check before a run."""
    tags, _ = scan_tags(prompt)
    return [(t.name, t.te) for t in tags if t.is_lora]


@dataclass(frozen=True)
class LocalModel:
    """A verified file in the store that generation can mount."""

    model_id: int
    version_id: int
    file_id: int
    model_name: str
    version_name: str | None
    type: str
    base_model: str | None
    file_name: str
    sha256: str
    path: str | None
    trained_words: tuple[str, ...] = ()
    weight: float = 1.0

    @property
    def lora_name(self) -> str:
        """The name used in ``<lora:name:w>``: the file name without its extension (A1111)."""
        return lora_tag_name(self.file_name)

    @property
    def label(self) -> str:
        version = f" {self.version_name}" if self.version_name else ""
        return f"{self.model_name}{version} [{self.base_model or '?'}]"


def local_models(session: Session, types: Sequence[str]) -> list[LocalModel]:
    model, version, file, local = (
        _t("model"),
        _t("model_version"),
        _t("model_file"),
        _t("local_file"),
    )
    words_table = _t("trained_word")
    rows = session.execute(
        select(
            model.c.id,
            version.c.id,
            file.c.id,
            model.c.name,
            version.c.name,
            model.c.type,
            version.c.base_model,
            file.c.name,
            local.c.sha256,
            local.c.path,
        )
        .select_from(
            local.join(file, file.c.id == local.c.file_id)
            .join(version, version.c.id == file.c.version_id)
            .join(model, model.c.id == version.c.model_id)
        )
        .where(local.c.state == "verified", model.c.type.in_(list(types)))
        .order_by(func.lower(model.c.name), version.c.position)
    ).all()
    words: dict[int, list[str]] = {}
    ids = [int(r[1]) for r in rows]
    if ids:
        for vid, word in session.execute(
            select(words_table.c.version_id, words_table.c.word)
            .where(words_table.c.version_id.in_(ids))
            .order_by(words_table.c.version_id, words_table.c.position)
        ):
            words.setdefault(int(vid), []).append(str(word))
    return [
        LocalModel(
            model_id=int(r[0]),
            version_id=int(r[1]),
            file_id=int(r[2]),
            model_name=str(r[3]),
            version_name=r[4],
            type=str(r[5]),
            base_model=r[6],
            file_name=str(r[7] or f"file-{r[2]}"),
            sha256=str(r[8] or ""),
            path=r[9],
            trained_words=tuple(words.get(int(r[1]), [])),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Completion:
    """One suggestion for the prompt editor: the text to insert and what it is."""

    text: str
    kind: Literal["lora", "trigger"]
    detail: str = ""


def complete(session: Session, prefix: str, *, limit: int = 12) -> list[Completion]:
    """Suggestions for the word being typed: ``<lora:`` names, else trigger words.

    Local LoRAs come first (only they can be used); catalog names follow. Trigger words match
    by prefix, case-insensitively.
    """
    model, version, file, local = (
        _t("model"),
        _t("model_version"),
        _t("model_file"),
        _t("local_file"),
    )
    out: list[Completion] = []
    if prefix.lower().startswith("<lora:"):
        wanted = prefix[len("<lora:") :].lower()
        for lm in local_models(session, LORA_TYPES):
            if lm.lora_name.lower().startswith(wanted) or lm.model_name.lower().startswith(wanted):
                out.append(Completion(f"<lora:{lm.lora_name}:{lm.weight:g}>", "lora", lm.label))
        if len(out) < limit:
            has_local = exists().where(local.c.file_id == file.c.id, local.c.state == "verified")
            rows = session.execute(
                select(file.c.name, model.c.name, version.c.base_model)
                .select_from(
                    file.join(version, version.c.id == file.c.version_id).join(
                        model, model.c.id == version.c.model_id
                    )
                )
                .where(
                    model.c.type.in_(list(LORA_TYPES)),
                    file.c.is_primary.is_(True),
                    func.lower(file.c.name).like(f"{_escape(wanted)}%", escape="\\"),
                    ~has_local,
                )
                .limit(limit - len(out))
            ).all()
            for file_name, model_name, base in rows:
                out.append(
                    Completion(
                        f"<lora:{lora_tag_name(str(file_name))}:1>",
                        "lora",
                        f"{model_name} [{base or '?'}] not local",
                    )
                )
        return out[:limit]
    wanted = prefix.lower().strip()
    if len(wanted) < 2:
        return []
    words = _t("trained_word")
    word_rows = session.execute(
        select(words.c.word, model.c.name)
        .select_from(
            words.join(version, version.c.id == words.c.version_id).join(
                model, model.c.id == version.c.model_id
            )
        )
        .where(func.lower(words.c.word).like(f"{_escape(wanted)}%", escape="\\"))
        .limit(limit * 3)
    ).all()
    seen: set[str] = set()
    for word, model_name in word_rows:
        if word in seen:
            continue
        seen.add(word)
        out.append(Completion(str(word), "trigger", str(model_name)))
    return out[:limit]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
