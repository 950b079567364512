"""Users' files survive every export and run: nothing xtc_ds did not write is replaced, moved or deleted."""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, job_env, read_json, tiny_bert
from xtc_ds import CompressionScheduler, export_packed, init_compression
from xtc_ds.errors import OutputDirError
from xtc_ds.files import TEMP_MARK, replace_dir_atomic, write_json_atomic
from xtc_ds.recipes.classification.args import parse_args
from xtc_ds.recipes.classification.io import check_output_dir, prepare_output_dir, remove_run_temporaries

CONFIG = REPO_ROOT / "ds_configs" / "ds_xtc_1bit.json"


@pytest.fixture
def compressed():
    config = read_json(CONFIG)
    model = tiny_bert(eager=False)
    init_compression(model, config)
    CompressionScheduler(model).step()
    return model.eval(), config


def _tree(folder):
    """Every path under ``folder`` with its file content: what must come through untouched."""
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


def test_export_refuses_a_folder_that_is_not_an_earlier_export(tmp_path, compressed):
    model, config = compressed
    target = tmp_path / "runs"
    (target / "run1").mkdir(parents=True)
    (target / "run1" / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(OutputDirError, match="not an earlier xtc_ds export.*overwrite"):
        export_packed(model, config, target)
    assert _tree(tmp_path) == before
    export_packed(model, config, target, overwrite=True)  # the user asked for it
    assert (target / "model.safetensors").exists() and not (target / "run1").exists()


def test_export_replaces_an_earlier_export_and_touches_nothing_beside_it(tmp_path, compressed):
    model, config = compressed
    out = export_packed(model, config, tmp_path / "D")
    (tmp_path / ".D.old").mkdir()  # a user's folder with the name xtc_ds 0.1 used for its swap
    (tmp_path / ".D.old" / "keep.txt").write_text("mine")
    (tmp_path / "sibling.txt").write_text("mine")
    export_packed(model, config, out)  # an earlier export is replaced without asking
    assert (tmp_path / ".D.old" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".D.old", "D", "sibling.txt"]


def test_export_refuses_a_file_and_the_source_folder(tmp_path, compressed):
    model, config = compressed
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(OutputDirError, match="not a folder"):
        export_packed(model, config, tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    source = tmp_path / "model"
    model.save_pretrained(source)
    before = _tree(tmp_path)
    for target in (source, source / "packed", tmp_path):
        with pytest.raises(OutputDirError, match="source"):
            export_packed(source, config, target, overwrite=True)
    assert _tree(tmp_path) == before


def test_export_cli_refuses_its_own_model_folder_with_one_line(tmp_path, compressed):
    model, _ = compressed
    model.save_pretrained(tmp_path / "X")
    before = _tree(tmp_path)
    cmd = [sys.executable, "-m", "xtc_ds.export", "--model", str(tmp_path / "X"), "--deepspeed_config", str(CONFIG)]
    result = subprocess.run([*cmd, "--output_dir", str(tmp_path / "X")], capture_output=True, text=True, env=job_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: output_dir")
    assert "Traceback" not in result.stderr
    assert _tree(tmp_path) == before


def test_a_swap_killed_halfway_is_undone_at_the_next_start(tmp_path):
    target = tmp_path / "packed"
    replace_dir_atomic(target, lambda d: (d / "a.txt").write_text("old"))
    # what a SIGKILL between the two renames leaves: the old folder inside the scratch sibling, no target
    scratch = tmp_path / f".packed{TEMP_MARK}999999999-abc"
    scratch.mkdir()
    os.replace(target, scratch / "old")
    (scratch / "new").mkdir()
    replace_dir_atomic(target, lambda d: (d / "a.txt").write_text("new"))
    assert (target / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["packed"]


def test_json_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def _run_args(out, *flags):
    return parse_args(["--deepspeed_config", str(CONFIG), "--output_dir", str(out), *flags])


def _prepare(args):
    """What a run does with its output directory: decide before DeepSpeed starts, then act."""
    check_output_dir(args)
    return prepare_output_dir(args)


def test_overwrite_output_dir_removes_only_what_a_run_writes(tmp_path):
    out = tmp_path / "out"
    for name in ("teacher/best", "student/checkpoints/global_step5", "final", "packed"):
        (out / name).mkdir(parents=True)
    for name in ("args.json", "run_log.jsonl", "eval_results.json", "teacher/eval_results.json"):
        (out / name).write_text("{}")
    (out / "thesis").mkdir()
    (out / "thesis" / "chapter1.tex").write_text("mine")
    (out / "notes.txt").write_text("mine")
    _prepare(_run_args(out, "--overwrite_output_dir"))
    assert _tree(out) == {"notes.txt": b"mine", "thesis": None, "thesis/chapter1.tex": b"mine"}


def test_overwrite_output_dir_refuses_to_delete_the_teacher_it_reads(tmp_path):
    out = tmp_path / "out"
    (out / "teacher" / "best").mkdir(parents=True)
    before = _tree(tmp_path)
    with pytest.raises(OutputDirError, match="--teacher_model"):
        _prepare(_run_args(out, "--overwrite_output_dir", "--teacher_model", str(out / "teacher" / "best")))
    assert _tree(tmp_path) == before


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(OutputDirError, match="not a folder"):
        _prepare(_run_args(tmp_path / "out"))
    assert (tmp_path / "out").read_text() == "mine"


def test_temporaries_of_killed_runs_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    (out / "student").mkdir(parents=True)
    stale = [
        out / f".packed{TEMP_MARK}999999999-x1",
        out / f".final{TEMP_MARK}999999999-x2",
        out / "student" / f".best{TEMP_MARK}999999999-x3",
        out / "student" / ".best.k2j4_9zq",  # what xtc_ds 0.1 named them
        out / ".final.old",
    ]
    for path in stale:
        path.mkdir()
        (path / "config.json").write_text("{}")
    (out / f".eval_results.json{TEMP_MARK}999999999-x4").write_text("{")
    kept = [out / ".best.notes", out / ".packed-backup", out / "student" / ".mine", out / "mybest.k2j4_9zq"]
    for path in kept:
        path.write_text("mine")
    live = out / f".final{TEMP_MARK}1-busy"  # pid 1 always runs
    live.mkdir()
    remove_run_temporaries(out)
    assert not any(path.exists() for path in stale)
    assert not (out / f".eval_results.json{TEMP_MARK}999999999-x4").exists()
    assert all(path.read_text() == "mine" for path in kept)
    assert live.exists()  # a temporary of a process that still runs is left alone
