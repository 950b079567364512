"""Resume picks a whole, safe checkpoint or says why not; it never starts a phase over in silence."""

import json
import os
import pickle

import pytest
import torch

from conftest import REPO_ROOT
from xtc_ds.checkpoint_layout import LAYOUT_FILE
from xtc_ds.checkpoints import MANIFEST_FILE, select_tag, verify_tag, write_manifest
from xtc_ds.errors import CheckpointError
from xtc_ds.export import checkpoint_state_dict
from xtc_ds.recipes.classification.args import parse_args
from xtc_ds.recipes.classification.data import get_task
from xtc_ds.recipes.classification.phases import resume_tag
from xtc_ds.recipes.classification.settings import RunConfig
from xtc_ds.safe_load import check_pickle, load_weights

CONFIG = str(REPO_ROOT / "ds_configs" / "ds_xtc_1bit.json")


def _save_tag(save_dir, step, phase="student", manifest=True, latest=True):
    """A checkpoint tag as the pipeline writes it: model states, layout record, manifest, ``latest``."""
    tag = save_dir / f"global_step{step}"
    tag.mkdir(parents=True)
    torch.save(
        {"module": {"w": torch.full((4,), float(step))}, "global_steps": step}, tag / "mp_rank_00_model_states.pt"
    )
    (tag / LAYOUT_FILE).write_text(json.dumps({"zero_stage": 0, "world_size": 1, "phase": phase}))
    if manifest:
        write_manifest(tag)
    if latest:
        (save_dir / "latest").write_text(tag.name)
    return tag


class _Payload:
    """Unpickling this runs ``os.system``: what a crafted checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted(path, marker):
    with open(path, "wb") as handle:
        torch.save({"module": {"w": torch.zeros(2)}, "evil": _Payload(marker)}, handle)


def test_a_crafted_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    tag = tmp_path / "ckpt" / "global_step1"
    tag.mkdir(parents=True)
    _crafted(tag / "mp_rank_00_model_states.pt", marker)
    for load in (checkpoint_state_dict, lambda p: load_weights(p / "mp_rank_00_model_states.pt")):
        with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt: refused.*system"):
            load(tag)
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes((tag / "mp_rank_00_model_states.pt").read_bytes())
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint_state_dict(tag)  # the ZeRO path clears every file before DeepSpeed's loader sees it
    with pytest.raises(CheckpointError, match="refused"):
        verify_tag(tag, require_manifest=False)  # and so does every resume
    assert not marker.exists()


def test_deepspeed_records_and_plain_weights_are_allowed(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"module": {"w": torch.ones(3)}, "shapes": torch.Size([3]), "step": 4}, path)
    check_pickle(path)
    assert torch.equal(load_weights(path)["module"]["w"], torch.ones(3))
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable torch checkpoint"):
        check_pickle(tmp_path / "garbage.pt")
    with open(tmp_path / "old.pt", "wb") as handle:
        pickle.dump({"w": 1}, handle)
    with pytest.raises(CheckpointError, match="old.pt"):
        load_weights(tmp_path / "old.pt")


def test_manifest_names_truncated_and_altered_files(tmp_path):
    tag = _save_tag(tmp_path, 10)
    verify_tag(tag)
    states = tag / "mp_rank_00_model_states.pt"
    data = states.read_bytes()
    states.write_bytes(data[:-50])
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt: .* bytes, .* when saved"):
        verify_tag(tag)
    states.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt: its content changed"):
        verify_tag(tag)
    states.unlink()
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt: missing"):
        verify_tag(tag)
    (tag / MANIFEST_FILE).write_text("{garbage")
    with pytest.raises(CheckpointError, match=f"{MANIFEST_FILE}: not a valid manifest"):
        verify_tag(tag)


def test_garbage_layout_record_is_named(tmp_path):
    tag = _save_tag(tmp_path, 10, manifest=False)
    (tag / LAYOUT_FILE).write_text("not json")
    with pytest.raises(CheckpointError, match=f"{LAYOUT_FILE}: unreadable"):
        verify_tag(tag)
    (tag / LAYOUT_FILE).write_text('{"zero_stage": "two"}')
    with pytest.raises(CheckpointError, match=f"{LAYOUT_FILE}: not a checkpoint layout record"):
        verify_tag(tag)


def test_latest_falls_back_to_the_previous_complete_tag(tmp_path, caplog):
    older = _save_tag(tmp_path, 10)
    newer = _save_tag(tmp_path, 20)
    assert select_tag(tmp_path) == newer
    states = newer / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:100])  # truncated by a full disk
    with caplog.at_level("WARNING", logger="xtc_ds"):
        assert select_tag(tmp_path) == older
    assert "global_step20/mp_rank_00_model_states.pt" in caplog.text and "resuming from" in caplog.text


@pytest.mark.parametrize("latest", ["missing", "garbage", "empty", "absent"])
def test_a_bad_latest_file_falls_back_to_the_newest_complete_tag(tmp_path, latest):
    tag = _save_tag(tmp_path, 10)
    content = {"missing": "global_step99", "garbage": "\x00\xff\xfe", "empty": ""}
    if latest == "absent":
        (tmp_path / "latest").unlink()
    else:
        (tmp_path / "latest").write_bytes(content[latest].encode("latin-1"))
    assert select_tag(tmp_path) == tag


def test_a_tag_killed_while_saving_is_passed_over(tmp_path):
    older = _save_tag(tmp_path, 10)
    half = tmp_path / "global_step20"
    half.mkdir()
    (half / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04 half")
    (tmp_path / "latest").write_text(half.name)
    assert select_tag(tmp_path) == older


def test_no_complete_tag_at_all_is_an_error_not_a_fresh_start(tmp_path):
    tag = _save_tag(tmp_path, 10)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"no complete checkpoint in {tmp_path}"):
        select_tag(tmp_path)
    assert select_tag(tmp_path / "never_saved") is None


def _run(out, *flags):
    args = parse_args(["--deepspeed_config", CONFIG, "--output_dir", str(out), *flags])
    args.task = get_task(args.task_name).task
    return RunConfig.from_args(args)


def test_resume_from_a_folder_outside_the_output_dir(tmp_path):
    out = tmp_path / "out"
    copy = tmp_path / "copy_of_student_checkpoints"
    tag = _save_tag(copy, 30)
    run = _run(out, "--resume_from_checkpoint", str(copy))
    assert resume_tag(run, "student") == tag
    assert resume_tag(run, "teacher") is None  # the teacher never saved: it starts
    teacher_tag = _save_tag(out / "teacher" / "checkpoints", 5, phase="teacher")
    assert resume_tag(run, "teacher") == teacher_tag  # the other phase continues its own
    assert resume_tag(_run(out, "--resume_from_checkpoint", str(tag)), "student") == tag


def test_an_external_checkpoint_of_unknown_phase_is_refused_by_name(tmp_path):
    bare = tmp_path / "ds_ckpt" / "global_step3"
    bare.mkdir(parents=True)
    torch.save({"module": {}}, bare / "mp_rank_00_model_states.pt")
    run = _run(tmp_path / "out", "--resume_from_checkpoint", str(bare))
    with pytest.raises(CheckpointError, match="cannot tell whether it holds the teacher or the student"):
        resume_tag(run, "student")
    run = _run(tmp_path / "out", "--resume_from_checkpoint", str(bare), "--teacher_model", str(tmp_path))
    assert resume_tag(run, "student") == bare
    with pytest.raises(CheckpointError, match="no such directory"):
        resume_tag(_run(tmp_path, "--resume_from_checkpoint", str(tmp_path / "nope")), "student")
