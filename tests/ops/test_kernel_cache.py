"""The JIT kernel cache: one folder per Python environment, and stale build locks that never hang a run."""

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import job_env
from xtc_ds.ops import builder, cache

PROBE = textwrap.dedent(
    """
    import sys
    sys.prefix = sys.argv[1]  # stands for another virtual environment
    import xtc_ds  # sets TORCH_EXTENSIONS_DIR for this environment
    from torch.utils.cpp_extension import load_inline
    load_inline(name="xtc_cache_probe", cpp_sources="int probe() { return 7; }", functions=["probe"])
    """
)


def test_each_environment_and_host_gets_its_own_folder(monkeypatch):
    first = cache.environment_key()
    assert cache.environment_key() == first
    monkeypatch.setattr(sys, "prefix", "/somewhere/else/venv")
    other_prefix = cache.environment_key()
    monkeypatch.setattr(cache.socket, "gethostname", lambda: "node-2")
    assert len({first, other_prefix, cache.environment_key()}) == 3


def test_a_user_setting_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    assert cache.configure_extensions_dir() == tmp_path
    monkeypatch.delenv(cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.configure_extensions_dir() == tmp_path / "xtc_ds" / "torch_extensions" / cache.environment_key()


def test_a_lock_without_a_build_is_removed_with_a_warning(tmp_path, caplog):
    (tmp_path / "lock").write_text("")
    old = time.time() - 120
    os.utime(tmp_path / "lock", (old, old))
    with caplog.at_level("WARNING", logger="xtc_ds"):
        assert cache.clear_stale_lock(tmp_path)
    assert not (tmp_path / "lock").exists() and "left by a build that was killed" in caplog.text
    assert not cache.clear_stale_lock(tmp_path)  # no lock: nothing to wait for


def test_a_lock_of_a_running_build_is_waited_for(tmp_path):
    (tmp_path / "lock").write_text("")
    old = time.time() - 120
    os.utime(tmp_path / "lock", (old, old))
    builder_process = subprocess.Popen(["sleep", "3"], cwd=tmp_path)  # a compiler at work in the folder
    started = time.time()
    assert cache.clear_stale_lock(tmp_path, grace=0.5)
    assert time.time() - started >= 2.5 and builder_process.poll() is not None


@pytest.mark.slow
def test_two_environments_building_in_turn_do_not_rebuild_each_other(tmp_path):
    env = job_env(XDG_CACHE_HOME=str(tmp_path))
    env.pop(cache.ENV_VAR, None)

    def build(prefix):
        result = subprocess.run(
            [sys.executable, "-c", PROBE, prefix], env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]

    build("/venvs/a")
    build("/venvs/b")
    folders = sorted((tmp_path / "xtc_ds" / "torch_extensions").iterdir())
    built = {so: so.stat().st_mtime_ns for so in (tmp_path / "xtc_ds" / "torch_extensions").rglob("*.so")}
    build("/venvs/a")
    assert len(folders) == 2
    for folder in folders:  # one build each; torch would add xtc_cache_probe_v1 for a rebuild over another's
        assert [p.name for p in (folder / "xtc_cache_probe").glob("*.so")] == ["xtc_cache_probe.so"]
    # the third run loaded the first environment's build: no library was compiled or rewritten
    assert {so: so.stat().st_mtime_ns for so in (tmp_path / "xtc_ds" / "torch_extensions").rglob("*.so")} == built


@pytest.mark.slow
def test_a_stale_lock_in_the_ops_folder_does_not_hang_a_run(tmp_path):
    """In a copy of this environment's built ops: the real folder is shared with the tests of other workers, whose
    runs would clear the lock first."""
    from xtc_ds.ops import native

    assert native.load_cpu() is not None, native.status()
    name = builder.cpu_extension_name()
    shutil.copytree(builder.build_dir(name), tmp_path / "ops" / name)  # mtimes kept: nothing to rebuild
    lock = tmp_path / "ops" / name / "lock"
    lock.write_text("")
    old = time.time() - 600
    os.utime(lock, (old, old))
    code = "from xtc_ds.ops import native; assert native.load_cpu() is not None"
    env = job_env(**{cache.ENV_VAR: str(tmp_path / "ops")})
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left by a build that was killed" in result.stderr
