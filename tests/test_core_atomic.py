"""Files the platform writes get the umask's mode, as `open()` gives (safetensors alone writes 0600, which
nobody else can read on shared storage), and an export folder is replaced by renames, never deleted first."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from core.atomic import atomic_write, replace_folder, umask_mode
from model.config import LinearDiTConfig
from model.linear_dit import LinearDiT
from model.pretrained import WEIGHTS_FILE, save_pretrained
from training.worker.ema import EMA


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_atomic_writer_gives_the_umask_mode_whatever_wrote_the_temp_file(tmp_path, umask_022):
    def write_private(tmp):  # as mkstemp and safetensors do
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))

    assert umask_mode() == 0o644
    assert _mode(atomic_write(tmp_path / "f.bin", write_private)) == 0o644


def test_exported_weights_and_the_ema_are_readable_by_others(tmp_path, umask_022):
    model = LinearDiT(LinearDiTConfig.from_preset("tiny"))
    assert _mode(save_pretrained(model, tmp_path / "export") / WEIGHTS_FILE) == 0o644
    EMA(torch.nn.Linear(2, 2), decay=0.9).save(tmp_path / "ema.safetensors")
    assert _mode(tmp_path / "ema.safetensors") == 0o644


def test_a_folder_is_replaced_by_renames_and_the_old_one_removed_after(tmp_path):
    target, new = tmp_path / "export", tmp_path / "export.partial"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    (tmp_path / ".export.old").mkdir()  # a crash's leftover between the two renames
    assert replace_folder(new, target) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]
