"""The tests' artifact cache (tests/artifacts.py): what it keys a conversion by, and how it
keeps and gives back a folder. A key that missed something would hide a converter change."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgepipe.converters.convert import ConvertRequest

from . import artifacts
from .artifacts import _evict, _load, _store, content_digest, request_key


def test_every_field_but_the_output_folder_is_in_the_key(tmp_path):
    base = ConvertRequest(model="mobilenet_v3_small", out=tmp_path / "a")
    assert request_key(base) == request_key(dataclasses.replace(base, out=tmp_path / "b"))
    changed = {"model": "mobilenet_v3_large", "formats": ["tflite"], "int8": True,
               "width_mult": 0.5, "size": 96, "task": "segmentation", "output": "aux",
               "input_range": "0,1", "calib_count": 8, "threads": 2, "keep_float": "auto",
               "sensitivity": True, "bias_correction": True, "fp16": True}
    assert set(changed) | {"out", "weights", "calib_dir"} == \
        {f.name for f in dataclasses.fields(ConvertRequest)}  # a new field must be added here
    keys = {request_key(dataclasses.replace(base, **{k: v})) for k, v in changed.items()}
    assert len(keys | {request_key(base)}) == len(changed) + 1


def test_files_count_by_content_not_by_name(tmp_path):
    weights, calib = tmp_path / "w.pth", tmp_path / "calib"
    calib.mkdir()
    weights.write_bytes(b"one")
    (calib / "a.png").write_bytes(b"pixels")
    request = ConvertRequest(model="mobilenet_v3_small", out=tmp_path / "o", weights=weights,
                             calib_dir=calib)
    before = request_key(request)
    weights.write_bytes(b"two")
    assert request_key(request) != before
    weights.write_bytes(b"one")
    assert request_key(request) == before
    (calib / "b.png").write_bytes(b"more")
    assert request_key(request) != before
    moved = tmp_path / "elsewhere"
    calib.rename(moved)
    (moved / "b.png").unlink()
    assert request_key(dataclasses.replace(request, calib_dir=moved)) == before
    # a model of the tests is keyed by its source file too
    assert artifacts._model_source("tests.factories:tiny_cnn", tmp_path) == content_digest(
        Path(artifacts.__file__).with_name("factories.py"))
    assert artifacts._model_source("mobilenet_v3_small", tmp_path) is None


def test_a_stored_folder_comes_back_whole_and_the_oldest_go_first(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPIPE_TEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEPIPE_TEST_CACHE_MB", "0.0025")  # room for two 1 kB entries
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "report.json").write_text("{}")
    (folder / "sub" / "model.tflite").write_bytes(b"x" * 1000)
    entries = [artifacts._entry(f"{i:02d}" + "0" * 62) for i in range(3)]
    for i, entry in enumerate(entries):
        _store(folder, entry, {"printed.json": "{}"})
        if i == 0:
            _load(entry, tmp_path / "back")
            assert content_digest(tmp_path / "back") == content_digest(folder)
            assert not list(entry.parent.glob(".*partial*"))
    _evict(tmp_path / "cache")
    assert [e.is_dir() for e in entries] == [False, True, True]  # least recently used first
    monkeypatch.setenv("EDGEPIPE_TEST_CACHE", "off")
    assert artifacts.cache_root() is None and artifacts._entry("00") is None


def test_the_code_a_conversion_stands_on_is_in_the_key_and_nothing_above_it():
    names = {str(p.relative_to(artifacts.PACKAGE)) for p in artifacts.conversion_sources()}
    assert {"converters/convert.py", "converters/quantize.py", "models/mobilenet.py",
            "device/runtimes.py", "manifest.py", "preprocess.py", "cli/artifacts.py",
            "ui.py"} <= names
    assert not {n for n in names if n.startswith(("latency_tables/", "search/", "pipeline/",
                                                  "evaluation/", "apps/"))}, names
