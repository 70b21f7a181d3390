"""The sandbox's registry (`sandbox.registry.SandboxRegistry`) over the catalog's tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from catalog.db import session_scope
from catalog.sandbox_records import Plugin, PluginFile, SandboxImage
from sandbox.registry import PluginFileRecord, PluginRecord

if TYPE_CHECKING:
    from sandbox.image.record import ImageRecord


def _record(row: Plugin, files: list[PluginFile]) -> PluginRecord:
    return PluginRecord(
        name=row.name,
        version=row.version,
        entry=row.entry,
        tree_sha256=row.tree_sha256,
        manifest_sha256=row.manifest_sha256,
        manifest_file=row.manifest_file,
        hooks=tuple(row.hooks),
        requirements=tuple(row.requirements),
        description=row.description,
        api_version=row.api_version,
        file_count=row.file_count,
        total_bytes=row.total_bytes,
        trusted=row.trusted,
        source_path=row.source_path,
        store_dir=row.store_dir,
        added_at=row.added_at,
        files=tuple(PluginFileRecord(f.path, f.sha256, f.size) for f in files),
    )


class CatalogSandboxRegistry:
    """Plugins in the ``plugin``/``plugin_file`` tables, images in ``sandbox_image``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @staticmethod
    def _row(session: Session, name: str) -> Plugin | None:
        return session.exec(select(Plugin).where(Plugin.name == name)).first()

    @staticmethod
    def _files(session: Session, row: Plugin) -> list[PluginFile]:
        query = select(PluginFile).where(PluginFile.plugin_id == row.id)
        return list(session.exec(query).all())

    def plugins(self) -> list[PluginRecord]:
        with session_scope(self.engine) as session:
            rows = session.exec(select(Plugin).order_by(col(Plugin.name))).all()
            files: dict[int, list[PluginFile]] = {}
            for f in session.exec(select(PluginFile)).all():
                files.setdefault(f.plugin_id, []).append(f)
            return [_record(r, files.get(r.id or -1, [])) for r in rows]

    def plugin(self, name: str) -> PluginRecord | None:
        with session_scope(self.engine) as session:
            row = self._row(session, name)
            return None if row is None else _record(row, self._files(session, row))

    def put_plugin(self, record: PluginRecord) -> PluginRecord:
        with session_scope(self.engine, write=True) as session:
            old = self._row(session, record.name)
            if old is not None:
                for f in self._files(session, old):
                    session.delete(f)
                session.delete(old)
                session.flush()
            row = Plugin(
                name=record.name,
                version=record.version,
                entry=record.entry,
                hooks=list(record.hooks),
                requirements=list(record.requirements),
                description=record.description,
                api_version=record.api_version,
                tree_sha256=record.tree_sha256,
                manifest_sha256=record.manifest_sha256,
                manifest_file=record.manifest_file,
                file_count=record.file_count,
                total_bytes=record.total_bytes,
                trusted=record.trusted,
                source_path=record.source_path,
                store_dir=record.store_dir,
            )
            if record.added_at is not None:
                row.added_at = record.added_at
            session.add(row)
            session.flush()
            if row.id is None:
                raise RuntimeError(f"the catalog gave plugin {record.name!r} no row id")
            file_rows = [
                PluginFile(plugin_id=row.id, path=f.path, sha256=f.sha256, size=f.size)
                for f in record.files
            ]
            session.add_all(file_rows)
            session.flush()
            return _record(row, file_rows)

    def remove_plugin(self, name: str) -> PluginRecord | None:
        with session_scope(self.engine, write=True) as session:
            row = self._row(session, name)
            if row is None:
                return None
            found = _record(row, self._files(session, row))
            session.delete(row)
            return found

    def set_trusted(self, name: str, trusted: bool) -> PluginRecord | None:
        with session_scope(self.engine, write=True) as session:
            row = self._row(session, name)
            if row is None:
                return None
            row.trusted = trusted
            session.add(row)
            return _record(row, self._files(session, row))

    def set_store_dir(self, name: str, store_dir: str) -> None:
        with session_scope(self.engine, write=True) as session:
            row = self._row(session, name)
            if row is not None:
                row.store_dir = store_dir
                session.add(row)

    def image_record(self, image_id: str) -> str | None:
        with session_scope(self.engine) as session:
            row = session.get(SandboxImage, image_id)
            return None if row is None else row.record_json

    def put_image(self, record: ImageRecord) -> None:
        with session_scope(self.engine, write=True) as session:
            row = session.get(SandboxImage, record.image_id)
            if row is None:
                row = SandboxImage(
                    image_id=record.image_id,
                    tag=record.tag,
                    lock_sha256=record.lock_sha256,
                    torch_variant=record.torch_variant,
                    app_version=record.app_version,
                    worker_sha256=record.worker_sha256,
                    inputs_sha256=record.inputs_sha256,
                    built_at=record.created_at,
                    record_json="",
                )
            row.tag = record.tag
            row.layer_diff_ids = list(record.layer_diff_ids)
            row.lock_sha256 = record.lock_sha256
            row.rootfs_sha256 = record.rootfs_sha256
            row.torch_variant = record.torch_variant
            row.app_version = record.app_version
            row.worker_sha256 = record.worker_sha256
            row.inputs_sha256 = record.inputs_sha256
            row.plugin_requirements = list(record.plugin_requirements)
            row.plugin_requirements_sha256 = record.plugin_requirements_sha256
            row.size_bytes = record.size_bytes
            row.built_at = record.created_at
            row.recorded_at = datetime.now(UTC)
            row.record_json = record.model_dump_json()
            session.add(row)


__all__ = ["CatalogSandboxRegistry"]
