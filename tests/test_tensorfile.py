"""tensorfile.save_tensors: safetensors files written with O_DIRECT, read back by safetensors itself."""

import errno
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bladegpt import tensorfile


def mixed() -> dict[str, torch.Tensor]:
    """Every dtype a checkpoint holds, lengths that end mid-block, a scalar and an empty tensor."""
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(37, 11, generator=g), "bf": torch.randn(5, 3, generator=g).bfloat16(),
            "half": torch.randn(9, generator=g).half(), "step": torch.tensor(7), "rng": torch.randint(0, 255, (5_003,), dtype=torch.uint8, generator=g),
            "mask": torch.tensor([True, False, True]), "i32": torch.arange(3, dtype=torch.int32), "d": torch.randn(2, dtype=torch.float64, generator=g),
            "empty": torch.zeros(0, 4), "scalar": torch.tensor(1.5)}


def direct_io(folder) -> bool:
    """Whether files in `folder` can be opened with O_DIRECT (not on tmpfs, macOS, Windows)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError:
        return False
    return True


def same_file(path, tensors, metadata):
    with safe_open(path, "pt") as f:
        assert f.metadata() == metadata
        assert set(f.keys()) == set(tensors)
        for name, t in tensors.items():
            back = f.get_tensor(name)
            assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t), name


def test_what_safetensors_reads_back_is_what_was_written(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorfile, "CHUNK", 2 * tensorfile.ALIGN)  # many writes, a tensor across several
    tensors, metadata = mixed(), {"format": "bladegpt-1", "info": '{"step": 3}'}
    tensorfile.save_tensors(tensors, str(tmp_path / "ours.safetensors"), metadata)
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata=metadata)
    same_file(tmp_path / "ours.safetensors", tensors, metadata)
    theirs = load_file(tmp_path / "theirs.safetensors")
    assert all(torch.equal(theirs[k], v) for k, v in load_file(tmp_path / "ours.safetensors").items())
    data = (tmp_path / "ours.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert header % 8 == 0 and len(data) == 8 + header + sum(t.numel() * t.element_size() for t in tensors.values())


def test_it_writes_directly_where_the_disk_allows(tmp_path, monkeypatch):
    if not direct_io(tmp_path):
        pytest.skip("no O_DIRECT here (the fallback's test covers it)")
    flags = []
    real_open = os.open
    monkeypatch.setattr(tensorfile.os, "open", lambda path, f, *a: flags.append(f) or real_open(path, f, *a))
    monkeypatch.setattr(tensorfile, "save_file", lambda *a, **k: pytest.fail("fell back to safetensors"))
    tensorfile.save_tensors(mixed(), str(tmp_path / "x.safetensors"))
    assert flags and flags[0] & os.O_DIRECT
    same_file(tmp_path / "x.safetensors", mixed(), None)


@pytest.mark.parametrize("where", ["open", "write"])
def test_a_filesystem_without_o_direct_gets_safetensors_own_file(tmp_path, monkeypatch, where):
    """tmpfs refuses O_DIRECT at open, some filesystems at the first write: either way the file is written."""
    real_open, real_write = os.open, os.write

    def refusing_open(path, flags, *a):
        if where == "open" and flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    def refusing_write(fd, data):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(tensorfile.os, "open", refusing_open)
    if where == "write":
        monkeypatch.setattr(tensorfile.os, "write", refusing_write)
    tensorfile.save_tensors(mixed(), str(tmp_path / "x.safetensors"), {"a": "b"})
    monkeypatch.setattr(tensorfile.os, "write", real_write)
    same_file(tmp_path / "x.safetensors", mixed(), {"a": "b"})


def test_a_failed_write_names_the_file(tmp_path, monkeypatch):
    if not direct_io(tmp_path):
        pytest.skip("no O_DIRECT here")
    monkeypatch.setattr(tensorfile.os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    path = str(tmp_path / "x.safetensors")
    with pytest.raises(OSError) as e:
        tensorfile.save_tensors(mixed(), path)
    assert e.value.errno == errno.ENOSPC and e.value.filename == path


def test_a_dtype_it_does_not_name_goes_to_safetensors(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(tensorfile, "save_file", lambda tensors, path, metadata=None: written.append(set(tensors)))
    tensorfile.save_tensors({"c": torch.zeros(2, dtype=torch.complex64)}, str(tmp_path / "x.safetensors"))
    assert written == [{"c"}]
