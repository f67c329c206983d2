"""Folder swaps that survive a kill at every step: a reader always finds the old folder or the new one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crossgraft.files import recover_folder, replace_folder

# a process that swaps `new` in as `out` and is killed (os._exit, no clean-up) at one step of the swap
KILLED_SWAP = textwrap.dedent(
    """
    import os, shutil, sys
    from pathlib import Path
    from crossgraft.files import replace_folder

    out, staging, step = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    calls = {"n": 0}

    def kill_at(name, real):
        def wrapped(*args, **kwargs):
            if calls["n"] == step:
                os._exit(9)
            calls["n"] += 1
            return real(*args, **kwargs)
        return wrapped

    os.rename = kill_at("rename", os.rename)
    os.unlink = kill_at("unlink", os.unlink)  # rmtree removes the old folder's files one by one
    replace_folder(staging, out)
    sys.exit(0)
    """
)


def dead_pid() -> int:
    """The id of a process that has ended (a writer that was killed)."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(ended.stdout)


def make_version(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True)
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text(version)
    return folder


def version_of(folder: Path) -> str:
    texts = {path.read_text() for path in folder.iterdir()}
    assert len(texts) == 1 and len(list(folder.iterdir())) == 3, f"{folder} holds a mix: {texts}"
    return texts.pop()


# steps: 0 before moving the old folder aside, 1 between the renames, 2-4 while the old folder is removed
@pytest.mark.parametrize("step", [0, 1, 2, 3, 4])
def test_a_swap_killed_at_any_step_leaves_the_old_or_the_new_folder(tmp_path, step):
    out = make_version(tmp_path / "export", "old")
    staging = make_version(tmp_path / f".export.partial-{dead_pid()}", "new")
    killed = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(out), str(staging), str(step)], timeout=120)
    assert killed.returncode == 9, "the swap was not killed"
    if step == 1:
        assert not out.exists(), "the kill did not fall between the renames"
    recovered = recover_folder(out)
    assert version_of(out) == ("old" if step <= 1 else "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"], recovered
    if step == 1:
        assert any(line.startswith("restored") for line in recovered)


def test_the_next_swap_removes_what_killed_ones_left(tmp_path):
    out = make_version(tmp_path / "export", "new")
    pid = dead_pid()
    make_version(tmp_path / f".export.previous-{pid}", "old")
    make_version(tmp_path / f".export.partial-{pid}", "half")
    replace_folder(make_version(tmp_path / f".export.partial-{os.getpid()}", "newer"), out)
    recover_folder(out)
    assert version_of(out) == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_live_writers_work_in_progress_is_left_alone(tmp_path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as writer:
        try:
            out = make_version(tmp_path / "export", "old")
            partial = make_version(tmp_path / f".export.partial-{writer.pid}", "new")
            assert recover_folder(out) == []
            assert partial.is_dir() and version_of(out) == "old"
            os.rename(out, tmp_path / f".export.previous-{writer.pid}")  # as if it were between its renames
            assert recover_folder(out, wait_seconds=0.2) == []
            assert not out.exists(), "a reader took a live writer's folder"
        finally:
            writer.kill()
    assert recover_folder(out) and version_of(out) == "old"


DEEP = "[" * 100_000 + "]" * 100_000
HUGE_NUMBER = "1" * 100_000
HOSTILE_DOCUMENTS = {
    "deep.json": DEEP,
    "nested.json": '{"a": ' + "[" * 150 + "]" * 150 + "}",  # within the parser's reach, past MAX_NESTING
    "huge.json": '{"a": ' + HUGE_NUMBER + "}",
    "deep.yaml": DEEP,
    "huge.yaml": "a: " + HUGE_NUMBER,
    "cycle.yaml": "a: &x [1, *x]\n",
    "deep.jsonl": DEEP + "\n",
    "huge.jsonl": HUGE_NUMBER + "\n",
}


def readers():
    from crossgraft.anomaly.data.formats import read_jsonl, read_meta_json
    from crossgraft.anomaly.prompts import load_class_descriptions
    from crossgraft.args import read_config_file
    from crossgraft.llava.data import read_records

    return {
        "--config": read_config_file,
        "class descriptions": load_class_descriptions,
        "--meta jsonl": read_jsonl,
        "meta.json": read_meta_json,
        "LLaVA data": lambda path: read_records(str(path)),
    }


@pytest.mark.parametrize("name", sorted(HOSTILE_DOCUMENTS))
def test_deep_huge_and_self_referencing_documents_are_one_error_in_every_reader(tmp_path, name):
    from crossgraft.errors import CrossgraftError

    path = tmp_path / name
    path.write_text(HOSTILE_DOCUMENTS[name])
    for what, reader in readers().items():
        with pytest.raises(CrossgraftError) as refused:
            reader(path)
        assert str(path) in str(refused.value), (what, refused.value)


@pytest.mark.parametrize(
    "literal", ["[" * 100_000 + "]" * 100_000, "(" * 150 + ")" * 150, HUGE_NUMBER, "{'a': 'b' * 10**9}"]
)
def test_a_constants_py_with_deep_or_huge_literals_is_one_error(tmp_path, literal):
    from crossgraft.anomaly.prompts import load_class_descriptions
    from crossgraft.errors import ConfigError

    path = tmp_path / "constants.py"
    path.write_text(f"REAL_NAMES = {literal}\n")
    with pytest.raises(ConfigError, match="constants.py"):
        load_class_descriptions(path)


def test_a_settings_file_larger_than_any_real_one_is_refused_unread(tmp_path):
    from crossgraft.args import read_config_file
    from crossgraft.errors import ConfigError
    from crossgraft.limits import MAX_SETTINGS_BYTES

    path = tmp_path / "big.yaml"
    with path.open("w") as handle:
        handle.truncate(MAX_SETTINGS_BYTES + 1)
    with pytest.raises(ConfigError, match=r"big.yaml: 16,777,217 bytes, more than a config file holds"):
        read_config_file(path)
