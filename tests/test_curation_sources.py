"""Sources: folders (recursive), globs, fsspec URIs, manifests, sidecar captions, fingerprints."""

from __future__ import annotations

import fsspec
import pandas as pd
import pytest

from curation.config import VIDEO_EXTENSIONS
from curation.sources import fingerprint, list_sources, open_source, read_sidecar

EXT = list(VIDEO_EXTENSIONS)


@pytest.fixture()
def tree(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.mp4").write_bytes(b"x" * 10)
    (tmp_path / "a" / "one.txt").write_text("  a caption  \n")
    (tmp_path / "a" / "b" / "two.MOV").write_bytes(b"y" * 20)
    (tmp_path / "a" / "b" / "two.json").write_text('{"caption": "from json"}')
    (tmp_path / "a" / "notes.pdf").write_bytes(b"%PDF")
    return tmp_path / "a"


def test_folder_is_listed_recursively_with_sidecars(tree):
    entries = list_sources(str(tree), EXT)
    assert [e.uri for e in entries] == sorted([str(tree / "b" / "two.MOV"), str(tree / "one.mp4")])
    by_name = {e.uri.rsplit("/", 1)[1]: e for e in entries}
    assert by_name["one.mp4"].bytes == 10 and by_name["one.mp4"].mtime
    assert read_sidecar(by_name["one.mp4"].sidecar) == "a caption"
    assert read_sidecar(by_name["two.MOV"].sidecar) == "from json"


def test_output_folder_inside_the_input_is_not_a_source(tree):
    (tree / "out" / "shards").mkdir(parents=True)
    (tree / "out" / "shards" / "clip.mp4").write_bytes(b"transcoded")
    assert str(tree / "out" / "shards" / "clip.mp4") in [e.uri for e in list_sources(str(tree), EXT)]
    assert [e.uri.rsplit("/", 1)[1] for e in list_sources(str(tree), EXT, exclude=str(tree / "out"))] == [
        "two.MOV",
        "one.mp4",
    ]


def test_glob_and_single_file_and_missing(tree):
    assert [e.uri for e in list_sources(str(tree / "*.mp4"), EXT)] == [str(tree / "one.mp4")]
    assert [e.uri for e in list_sources(str(tree / "one.mp4"), EXT)] == [str(tree / "one.mp4")]
    with pytest.raises(FileNotFoundError, match="input not found"):
        list_sources(str(tree / "nope"), EXT)


def test_fsspec_uri(tree):
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/raw/clip.mp4", b"z" * 30)
    fs.pipe("/bucket/raw/clip.txt", b"memory caption")
    entries = list_sources("memory://bucket/raw", EXT)
    assert [e.uri for e in entries] == ["memory:///bucket/raw/clip.mp4"]
    assert entries[0].bytes == 30
    assert read_sidecar(entries[0].sidecar) == "memory caption"
    with open_source(entries[0].uri) as f:
        assert f.read() == b"z" * 30


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_with_relative_uris_and_captions(tree, kind):
    table = pd.DataFrame({"uri": ["one.mp4", str(tree / "b" / "two.MOV")], "caption": ["first", ""]})
    path = tree / f"manifest.{kind}"
    table.to_csv(path, index=False) if kind == "csv" else table.to_parquet(path)
    entries = list_sources(str(path), EXT)
    assert [(e.uri, e.caption) for e in entries] == [
        (str(tree / "b" / "two.MOV"), None),
        (str(tree / "one.mp4"), "first"),
    ]
    bad = tree / "bad.csv"
    pd.DataFrame({"path": ["one.mp4"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="'uri' column"):
        list_sources(str(bad), EXT)


def test_fingerprint_follows_content(tmp_path):
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB: head, middle and tail windows
    (tmp_path / "a").write_bytes(big)
    (tmp_path / "b").write_bytes(big)
    changed = bytearray(big)
    changed[len(big) // 2] ^= 1
    (tmp_path / "c").write_bytes(bytes(changed))

    def fp(name):
        with open(tmp_path / name, "rb") as f:
            return fingerprint(f, (tmp_path / name).stat().st_size)

    assert fp("a") == fp("b")
    assert fp("a") != fp("c")
    assert len(fp("a")) == 32
