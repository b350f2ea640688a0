"""The storage layer on a local folder and on a real S3-compatible server (moto's server mode)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.object_store import ObjectStore, object_store

from alpaca_jobs.storage import DigestMismatch, Store, sha256_file


@pytest.fixture(scope="module")
def s3() -> Iterator[ObjectStore]:
    with object_store() as store:
        yield store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "out"))
    s3: ObjectStore = request.getfixturevalue("s3")
    s3.reach_from_here(monkeypatch)
    return Store(s3.uri(request.node.name.replace("[", "-").rstrip("]")), skip_instance_cache=True)


def test_write_read_list_remove(store: Store) -> None:
    digest = store.write_text("a/b.json", '{"x": 1}')
    assert digest == hashlib.sha256(b'{"x": 1}').hexdigest()
    store.write_bytes("a/c.bin", b"\x00\x01")
    assert store.read_text("a/b.json") == '{"x": 1}' and store.list("a") == ["b.json", "c.bin"]
    assert store.list() == ["a"] and store.list("missing") == []
    store.remove("a")
    assert not store.exists("a/b.json") and store.list() == []


def test_published_folder_has_its_marker_last_and_its_digests(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    for name in ("manifest.json", "weights.bin", "sub/tokenizer.json"):
        (folder / name).write_bytes(name.encode() * 1000)
    order: list[str] = []
    upload = store.upload
    store.upload = lambda source, name: order.append(name) or upload(source, name)  # type: ignore[method-assign]
    digests = store.publish_folder(folder, "run", last=("manifest.json",))
    assert order[-1] == "run/manifest.json" and len(order) == 3
    assert digests == {n: sha256_file(folder / n) for n in ("manifest.json", "weights.bin", "sub/tokenizer.json")}
    assert store.read_bytes("run/sub/tokenizer.json") == (folder / "sub/tokenizer.json").read_bytes()


def test_fetch_continues_an_interrupted_copy_and_checks_the_digest(store: Store, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    store.write_bytes("blob", data)
    good = hashlib.sha256(data).hexdigest()

    dest = tmp_path / "cache" / "blob"
    dest.parent.mkdir()
    (tmp_path / "cache" / "blob.partial").write_bytes(data[:300_000])
    assert store.fetch("blob", dest, good).read_bytes() == data and not dest.with_name("blob.partial").exists()

    # A partial copy whose bytes are not the object's: resuming keeps them, and the digest says so.
    other = tmp_path / "cache" / "other"
    other.with_name("other.partial").write_bytes(b"x" * 1000)
    with pytest.raises(DigestMismatch, match="sha256"):
        store.fetch("blob", other, good)
    assert not other.exists() and not other.with_name("other.partial").exists(), "a bad copy is dropped, not kept"
    assert store.fetch("blob", other, good).read_bytes() == data, "the next try starts clean"


def test_ranks_fetching_the_same_file_take_turns(store: Store, tmp_path: Path) -> None:
    data = b"weights" * 200_000
    store.write_bytes("model.bin", data)
    dest = tmp_path / "shared-cache" / "model.bin"
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(store.fetch("model.bin", dest).read_bytes())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data] * 4


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.write_text("x.json", "1")
    source = tmp_path / "src.bin"
    source.write_bytes(b"abc")
    store.upload(source, "copy/src.bin")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["copy", "src.bin", "src.bin", "x.json"]
