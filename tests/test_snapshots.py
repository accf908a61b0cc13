"""Data snapshots (launcher.snapshots): the manifest and id, the retention rule, import, current, resolve, prune;
and the record's pure parts (launcher.provenance) and its workspace file (workers.hostfs.write_record)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from launcher import snapshots
from launcher.models import Reason, Session, SessionStatus
from launcher.provenance import RECORD_FIELDS, build_record, library_version
from launcher.snapshots import FileEntry, SnapshotError, SnapshotInfo, plan_prune, snapshot_id
from launcher.transitions import TRANSITIONS, ActorKind, By, RecordProvenance

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _tree(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder


# -- pure --------------------------------------------------------------------------------------------------


def test_id_is_the_sha256_of_the_canonical_manifest_whatever_the_order():
    a = FileEntry("a.parquet", 3, "aa" * 32)
    b = FileEntry("dir/b.json", 5, "bb" * 32)
    expected = hashlib.sha256(
        b'{"files":[{"path":"a.parquet","sha256":"' + b"aa" * 32 + b'","size":3},'
        b'{"path":"dir/b.json","sha256":"' + b"bb" * 32 + b'","size":5}]}'
    ).hexdigest()[:16]
    assert snapshot_id([a, b]) == snapshot_id([b, a]) == expected
    assert len(expected) == 16 and snapshots.ID_PATTERN.fullmatch(expected)


@pytest.mark.parametrize(
    "change",
    [
        lambda f: FileEntry(f.path, f.size + 1, f.sha256),  # size
        lambda f: FileEntry(f.path, f.size, "cc" * 32),  # content
        lambda f: FileEntry("other.parquet", f.size, f.sha256),  # name
    ],
)
def test_any_change_of_a_file_changes_the_id(change):
    a = FileEntry("a.parquet", 3, "aa" * 32)
    b = FileEntry("b.parquet", 4, "bb" * 32)
    assert snapshot_id([a, b]) != snapshot_id([change(a), b])
    assert snapshot_id([a, b]) != snapshot_id([a])  # a file removed


@pytest.mark.parametrize(
    "value", ["", "legacy", "../etc", "0123456789abcdeF", "0123456789abcde", "0123456789abcdef0", "/0123456789abcdef"]
)
def test_only_sixteen_lowercase_hex_digits_are_ids(value):
    with pytest.raises(SnapshotError):
        snapshots.validate_id(value)
    assert snapshots.validate_id("0123456789abcdef") == "0123456789abcdef"


def _info(snap: str, days: int) -> SnapshotInfo:
    return SnapshotInfo(id=snap, created_at=T0 + timedelta(days=days), files=1, total_bytes=1, source="")


def test_retention_keeps_current_referenced_and_the_most_recent():
    infos = [_info(f"{i:016x}", i) for i in range(6)]  # 5 is the newest
    plan = plan_prune(infos, current=f"{0:016x}", referenced={f"{2:016x}"}, keep_recent=2)
    verdict = {s.id: (remove, why) for s, remove, why in plan}
    assert [s.id for s, _, _ in plan] == [f"{i:016x}" for i in (5, 4, 3, 2, 1, 0)]  # newest first
    assert verdict[f"{0:016x}"] == (False, "current")
    assert verdict[f"{2:016x}"] == (False, "referenced by a session record")
    assert not verdict[f"{5:016x}"][0] and not verdict[f"{4:016x}"][0]
    assert {k for k, (remove, _) in verdict.items() if remove} == {f"{3:016x}", f"{1:016x}"}


def test_retention_with_nothing_to_keep_but_current():
    infos = [_info(f"{i:016x}", i) for i in range(3)]
    plan = plan_prune(infos, current=f"{1:016x}", referenced=set(), keep_recent=0)
    assert {s.id for s, remove, _ in plan if remove} == {f"{0:016x}", f"{2:016x}"}
    assert plan_prune([], current=None, referenced=set(), keep_recent=3) == []


# -- the file system ---------------------------------------------------------------------------------------


def test_import_makes_a_read_only_snapshot_named_by_its_manifest(tmp_path):
    src = _tree(tmp_path / "src", {"MANIFEST.json": b'{"synthetic": true}', "wrds/crsp/a.parquet": b"12345"})
    root = tmp_path / "root"
    snap, new = snapshots.create_snapshot(root, src, now=T0)
    assert new and snapshots.ID_PATTERN.fullmatch(snap)
    folder = root / "snapshots" / snap
    doc = json.loads((folder / "MANIFEST.json").read_text())
    assert doc["id"] == snap and doc["total_bytes"] == 24 and doc["created_at"] == T0.isoformat()
    assert [f["path"] for f in doc["files"]] == ["MANIFEST.json", "wrds/crsp/a.parquet"]
    assert doc["files"][1] == {"path": "wrds/crsp/a.parquet", "size": 5, "sha256": hashlib.sha256(b"12345").hexdigest()}
    assert snap == snapshot_id(FileEntry(f["path"], f["size"], f["sha256"]) for f in doc["files"])
    assert (folder / "data" / "wrds" / "crsp" / "a.parquet").read_bytes() == b"12345"
    assert (folder / "data" / "MANIFEST.json").read_bytes() == b'{"synthetic": true}'  # the data's own, untouched
    for path in [folder, folder / "data", folder / "data" / "wrds", folder / "data" / "wrds" / "crsp"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o555, path
    assert stat.S_IMODE((folder / "data" / "wrds" / "crsp" / "a.parquet").stat().st_mode) == 0o444
    assert snapshots.verify_snapshot(root, snap) == []
    assert [p.name for p in (root / "snapshots").iterdir()] == [snap]  # no staging left behind
    # The same content again: the same id, nothing new; the source is not changed by a copy.
    assert snapshots.create_snapshot(root, src) == (snap, False)
    assert stat.S_IMODE((src / "wrds" / "crsp" / "a.parquet").stat().st_mode) != 0o444


def test_hard_linked_import_shares_the_files(tmp_path):
    src = _tree(tmp_path / "src", {"x.bin": b"abc"})
    snap, _ = snapshots.create_snapshot(tmp_path / "root", src, link=True)
    served = tmp_path / "root" / "snapshots" / snap / "data" / "x.bin"
    assert served.stat().st_ino == (src / "x.bin").stat().st_ino


def test_import_refuses_symlinks_and_the_root_itself(tmp_path):
    src = _tree(tmp_path / "src", {"a": b"1"})
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(SnapshotError, match="symbolic link|not a file"):
        snapshots.create_snapshot(tmp_path / "root", src)
    root = _tree(tmp_path / "root2", {"a": b"1"})
    with pytest.raises(SnapshotError):
        snapshots.create_snapshot(root, root)


def test_current_resolve_and_list(tmp_path):
    root = tmp_path / "root"
    a, _ = snapshots.create_snapshot(root, _tree(tmp_path / "a", {"m": b"A"}), now=T0)
    b, _ = snapshots.create_snapshot(root, _tree(tmp_path / "b", {"m": b"B"}), now=T0 + timedelta(days=1))
    assert a != b
    with pytest.raises(SnapshotError, match="no current"):
        snapshots.resolve(root, "")
    snapshots.set_current(root, a)
    assert os.readlink(root / "current") == f"snapshots/{a}"
    assert snapshots.read_current(root) == a
    assert snapshots.resolve(root, "") == (a, root.resolve() / "snapshots" / a / "data")
    assert snapshots.resolve(root, b) == (b, root.resolve() / "snapshots" / b / "data")
    snapshots.set_current(root, b)
    assert snapshots.resolve(root, "")[0] == b
    assert [s.id for s in snapshots.list_snapshots(root)] == [b, a]  # newest first
    for bad in ("legacy", "../../etc", "0" * 16, "ABCDEF0123456789"):
        with pytest.raises(SnapshotError):
            snapshots.resolve(root, bad)
    with pytest.raises(SnapshotError):
        snapshots.set_current(root, "0" * 16)  # no such snapshot


def test_resolve_refuses_a_planted_symlink_and_a_forged_pointer(tmp_path):
    root = tmp_path / "root"
    a, _ = snapshots.create_snapshot(root, _tree(tmp_path / "a", {"m": b"A"}))
    (root / "snapshots").chmod(0o755)
    os.symlink("/etc", root / "snapshots" / ("f" * 16))
    with pytest.raises(SnapshotError, match="damaged"):
        snapshots.resolve(root, "f" * 16)
    os.symlink("/etc", root / "current")
    with pytest.raises(SnapshotError, match="malformed"):
        snapshots.resolve(root, "")
    assert snapshots.resolve(root, a)[0] == a
    assert "f" * 16 not in {s.id for s in snapshots.list_snapshots(root)}


def test_a_root_without_snapshots_is_served_as_legacy(tmp_path):
    root = _tree(tmp_path / "data", {"MANIFEST.json": b"{}"})
    assert snapshots.is_legacy(root)
    assert snapshots.resolve(root, "") == ("legacy", root.resolve())
    assert snapshots.resolve(root, "legacy") == ("legacy", root.resolve())
    assert snapshots.resolve(tmp_path / "missing", "") == ("legacy", (tmp_path / "missing").resolve())
    with pytest.raises(SnapshotError, match="no data snapshot"):
        snapshots.resolve(root, "0123456789abcdef")


def test_prune_command_removes_only_what_the_rule_says(tmp_path, capsys):
    root = tmp_path / "root"
    ids = [
        snapshots.create_snapshot(root, _tree(tmp_path / f"s{i}", {"m": bytes([i])}), now=T0 + timedelta(days=i))[0]
        for i in range(4)
    ]
    snapshots.set_current(root, ids[0])
    argv = ["--root", str(root), "prune", "--no-records", "--keep-recent", "1", "--keep", ids[1]]
    assert snapshots.main([*argv, "--dry-run"]) == 0
    assert "would remove: " + ids[2] in capsys.readouterr().out
    assert len(snapshots.list_snapshots(root)) == 4
    assert snapshots.main(argv) == 0
    assert {s.id for s in snapshots.list_snapshots(root)} == {ids[0], ids[1], ids[3]}
    assert sorted(p.name for p in (root / "snapshots").iterdir()) == sorted([ids[0], ids[1], ids[3]])
    with pytest.raises(SnapshotError, match="current"):
        snapshots.remove_snapshot(root, ids[0])


def test_import_and_list_commands(tmp_path, capsys):
    root = tmp_path / "root"
    src = _tree(tmp_path / "src", {"f": b"x"})
    assert snapshots.main(["--root", str(root), "import", str(src)]) == 0
    snap = capsys.readouterr().out.split()[0]
    assert snapshots.read_current(root) == snap
    assert snapshots.main(["--root", str(root), "list"]) == 0
    assert f"* {snap}" in capsys.readouterr().out
    assert snapshots.main(["--root", str(root), "current", "../x"]) == 1


# -- the record ------------------------------------------------------------------------------------------------


def _session(**kw) -> Session:
    values = dict(id="abcdefghij12", user="ann", template="alpha_research", token=SecretStr("t"), profile="large")
    return Session(**{**values, "cpus": 4.0, "mem_bytes": 2**30, "pids_limit": 300, **kw})


def test_the_record_has_every_field_as_a_string():
    rec = build_record(
        _session(),
        image="launcher-notebook:latest",
        image_id="sha256:" + "1" * 64,
        image_labels={"nbl.lock_sha256": "2" * 64, "nbl.inputs_sha256": "3" * 64, "other": "x"},
        snapshot="0123456789abcdef",
        template_sha256="4" * 64,
        library="sha256:" + "5" * 16,
        recorded_at="2026-01-01T00:00:00+00:00",
    )
    assert tuple(rec) == RECORD_FIELDS
    assert rec["lock_sha256"] == "2" * 64 and rec["inputs_sha256"] == "3" * 64
    assert (rec["cpus"], rec["mem_bytes"], rec["pids_limit"], rec["profile"]) == ("4", str(2**30), "300", "large")
    assert all(isinstance(v, str) for v in rec.values())


def test_library_version_prefers_a_declared_version_else_hashes_the_sources(tmp_path):
    lib = _tree(tmp_path / "lib", {"research/__init__.py": b"x = 1\n", "research/m.py": b"y = 2\n"})
    first = library_version(lib)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 16
    _tree(lib, {"research/__pycache__/m.cpython-311.pyc": b"junk"})
    assert library_version(lib) == first  # caches do not count
    _tree(lib, {"research/m.py": b"y = 3\n"})
    assert library_version(lib) != first
    _tree(lib, {"research/__init__.py": b'__version__ = "1.2.0"\n'})
    assert library_version(lib) == "v1.2.0"


def test_record_provenance_is_a_patch_of_starting_sessions_with_a_json_audit_detail():
    rec = {"snapshot": "0123456789abcdef", "image_id": "sha256:1"}
    cmd = RecordProvenance(
        by=By(ActorKind.WORKER, "h1"), reason=Reason.START, snapshot="0123456789abcdef", record=tuple(rec.items())
    )
    assert TRANSITIONS[RecordProvenance] == (frozenset({SessionStatus.STARTING}), None)
    assert cmd.patch() == {"snapshot": "0123456789abcdef", "record": rec}
    assert json.loads(cmd.detail()) == rec and " " not in cmd.detail()
    assert cmd.audit_action == "provenance"


def test_old_session_records_load_without_a_record():
    raw = _session().to_storage()
    data = json.loads(raw)
    del data["snapshot"], data["record"]
    old = Session.from_storage(json.dumps(data))
    assert old.snapshot == "" and old.record == {}
    data["record"] = []  # how Redis's cjson writes an empty object back
    assert Session.from_storage(json.dumps(data)).record == {}
    with pytest.raises(ValueError):
        _session(snapshot="../x")


def test_the_workspace_record_is_written_as_the_notebook_uid_and_never_through_a_symlink(unit_settings, tmp_path):
    from workers import hostfs

    ws = tmp_path / "ws"
    ws.mkdir()
    path = hostfs.write_record(unit_settings, ws, "abcdefghij12", '{"a": "1"}\n')
    assert path == ws / ".launcher" / "abcdefghij12.json" and path.read_text() == '{"a": "1"}\n'
    if os.geteuid() == 0:
        assert (
            path.stat().st_uid == unit_settings.notebook_uid
            and (ws / ".launcher").stat().st_uid == unit_settings.notebook_uid
        )
    target = tmp_path / "victim"
    target.write_text("keep")
    path.unlink()
    path.symlink_to(target)  # a planted symlink at the file: replaced, not followed
    hostfs.write_record(unit_settings, ws, "abcdefghij12", "{}\n")
    assert target.read_text() == "keep" and not path.is_symlink() and path.read_text() == "{}\n"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ws2 = tmp_path / "ws2"
    ws2.mkdir()
    (ws2 / ".launcher").symlink_to(elsewhere)  # a planted symlink at the folder: refused
    with pytest.raises(OSError):
        hostfs.write_record(unit_settings, ws2, "abcdefghij12", "{}\n")
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(Exception, match="invalid session id"):
        hostfs.write_record(unit_settings, ws, "../../etc/x", "{}")
