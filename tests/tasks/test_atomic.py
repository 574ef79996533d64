"""The one atomic writer: the target holds the old or the new content, never a partial one."""
import os

import pytest
import torch

from tasks.atomic import atomic_path, write_atomic


def test_atomic_path_replaces_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "weights.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        torch.save({"x": torch.ones(2)}, tmp)
    assert torch.equal(torch.load(target)["x"], torch.ones(2))
    assert [p.name for p in target.parent.iterdir()] == ["weights.pt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = write_atomic(tmp_path / "report.md", "old\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_written_files_get_the_umask_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "table.csv", "a,b\r\n")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.read_bytes() == b"a,b\r\n"  # newlines as given
