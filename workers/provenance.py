"""The worker's side of the record (launcher.provenance): the facts only this host can see.

The image is the one the session's container runs (``Runtime.image_of``: its ID and the labels the build put on
it, ``nbl.lock_sha256`` and ``nbl.inputs_sha256``); the in-memory runtime of the unit tests reports none.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from launcher.models import Session
from launcher.ports import Runtime
from launcher.provenance import RECORD_FIELDS, build_record, library_version, sha256_file
from launcher.settings import Settings
from launcher.validation import resolve_template


def image_of(runtime: Runtime, container: str) -> tuple[str, dict[str, str]]:
    """(image ID, image labels) of what ``container`` runs; ("", {}) when the runtime cannot say."""
    return runtime.image_of(container)


def template_sha(settings: Settings, template: str) -> str:
    return sha256_file(resolve_template(settings.templates_dir, template))


def record_for(
    settings: Settings, runtime: Runtime, session: Session, *, snapshot: str, container: str
) -> dict[str, str]:
    """The record of a session whose container ``container`` has started on ``snapshot``."""
    image_id, labels = image_of(runtime, container)
    return build_record(
        session,
        image=session.image or settings.notebook_image,
        image_id=image_id,
        image_labels=labels,
        snapshot=snapshot,
        template_sha256=session.template_sha256 or template_sha(settings, session.template),
        library=library_version(settings.library_dir),
        recorded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def record_json(record: dict[str, str]) -> str:
    """The workspace file's text: the record's fields in reading order, indented."""
    ordered = {k: record[k] for k in RECORD_FIELDS if k in record} | record
    return json.dumps(ordered, indent=2) + "\n"
