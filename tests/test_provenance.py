"""The environment block of a test metrics file: the source commit is read from git, with
``+dirty`` when tracked files changed, and nothing when the code is not in a checkout."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from zoo.provenance import run_environment, source_commit

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@needs_git
def test_source_commit_names_the_checkout_and_whether_it_changed(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "pkg" / "m.py").write_text("x = 1\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert source_commit(repo / "pkg") == head
    (repo / "pkg" / "new.py").write_text("untracked files do not make it dirty\n")
    assert source_commit(repo / "pkg") == head
    (repo / "pkg" / "m.py").write_text("x = 2\n")
    assert source_commit(repo / "pkg") == head + "+dirty"
    outside = tmp_path / "not-a-checkout"
    outside.mkdir()
    assert source_commit(outside) is None


def test_run_environment_records_threads_and_versions():
    env = run_environment()
    assert env["torch"] == torch.__version__ and env["torch_threads"] == torch.get_num_threads()
    assert env["cpu_count"] and env["python"]
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512, DEFAULT
    assert "precision" not in env  # only with a trainer


def test_native_bf16_is_read_from_the_cpu_flags_and_emulated_bf16_on_the_cpu_is_pointed_out(monkeypatch, tmp_path):
    """bf16-mixed on a CPU without avx512_bf16/amx_bf16 is emulated and slower than fp32: a note
    (zoo fit prints it, zoo reproduce's plan shows it), and none on a GPU, in fp32, or where the CPU
    has bf16."""
    import zoo.provenance as prov
    from zoo.experiments.reproduce import Options, Run, Step, plan_text

    monkeypatch.setattr(prov, "_cpuinfo", lambda: {"flags": "fpu sse avx2 fma"})
    assert prov.cpu_native_bf16() is False
    assert "emulated, slower than 32-true" in prov.emulated_bf16_note("bf16-mixed", "cpu")
    assert prov.emulated_bf16_note("32-true", "cpu") is None and prov.emulated_bf16_note("bf16-mixed", "cuda") is None
    assert prov.emulated_bf16_note(None, "auto") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert prov.emulated_bf16_note("bf16-mixed", "auto") is not None
    step = Step(Run({"trainer": {"precision": "bf16-mixed"}}, tmp_path / "x-s0", 0, "h"), "run", "p/d/M seed 0", index=1)
    assert "note: trainer.precision bf16-mixed on a CPU without native bf16" in plan_text([step], Options(out=tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert prov.emulated_bf16_note("bf16-mixed", "auto") is None  # auto picks the GPU
    monkeypatch.setattr(prov, "_cpuinfo", lambda: {"flags": "fpu avx2 avx512f avx512_bf16"})
    assert prov.cpu_native_bf16() is True and prov.emulated_bf16_note("bf16-true", "cpu") is None
    monkeypatch.setattr(prov, "_cpuinfo", lambda: {})
    assert prov.cpu_native_bf16() is None and prov.emulated_bf16_note("bf16-mixed", "cpu") is None  # unknown
    assert run_environment()["cpu_native_bf16"] is None
