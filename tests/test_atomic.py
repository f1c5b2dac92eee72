"""Atomic writes (csub.checkpoint.atomic_write): permissions as open() gives them, read-only
targets refused, temporaries recognisable and removed once their writer is dead."""
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import csub
from csub import checkpoint, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_NAME = re.compile(r"^\.(.+)\.csub-tmp-[0-9a-f]{8}-([0-9]+)-[0-9a-f]{8}$")


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_new_file_follows_the_umask_like_open(tmp_path, mask):
    old = os.umask(mask)
    try:
        with open(tmp_path / "plain", "wb") as f:
            f.write(b"x")
        checkpoint.atomic_write(str(tmp_path / "atomic"), b"x")
        checkpoint.save(str(tmp_path / "ck.safetensors"), {"model": {"w": np.ones(2, np.float32)}}, {"epoch": 1})
        csub.export(models.mlp(in_features=4, hidden=(3,), num_classes=2), str(tmp_path / "m.safetensors"))
    finally:
        os.umask(old)
    want = _mode(tmp_path / "plain")
    assert want == 0o666 & ~mask
    for name in ("atomic", "ck.safetensors", "m.safetensors"):
        assert _mode(tmp_path / name) == want, name


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o755, 0o600, 0o664])
def test_replaced_file_keeps_its_mode(tmp_path, mode):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    old = os.umask(0o077)  # the umask does not apply to a replaced file
    try:
        checkpoint.atomic_write(str(path), b"new")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new" and _mode(path) == mode


def test_read_only_target_is_refused_unless_asked(tmp_path):
    path = tmp_path / "ro.safetensors"
    checkpoint.save(str(path), {"model": {"w": np.ones(2, np.float32)}}, {"epoch": 1})
    os.chmod(path, 0o444)
    before = path.read_bytes()
    model = models.mlp(in_features=4, hidden=(3,), num_classes=2)
    for write in (lambda: checkpoint.atomic_write(str(path), b"new"),
                  lambda: checkpoint.save(str(path), {"model": {"w": np.zeros(2, np.float32)}}, {"epoch": 2}),
                  lambda: csub.export(model, str(path))):
        with pytest.raises(PermissionError, match="read-only") as e:
            write()
        assert str(path) in str(e.value)
        assert path.read_bytes() == before and _mode(path) == 0o444
    assert sorted(os.listdir(tmp_path)) == ["ro.safetensors"]  # no temporary left behind
    checkpoint.atomic_write(str(path), b"new", overwrite_readonly=True)
    assert path.read_bytes() == b"new" and _mode(path) == 0o444
    csub.export(model, str(path), overwrite_readonly=True)
    assert _mode(path) == 0o444 and isinstance(csub.load(str(path)), models.MLP)


def test_directory_target_and_symlink(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="d"):
        checkpoint.atomic_write(str(tmp_path / "d"), b"x")
    real = tmp_path / "real"
    real.write_bytes(b"old")
    os.chmod(real, 0o640)
    (tmp_path / "link").symlink_to(real)
    checkpoint.atomic_write(str(tmp_path / "link"), b"new")
    assert os.path.islink(tmp_path / "link") and real.read_bytes() == b"new" and _mode(real) == 0o640


def test_failed_verification_keeps_the_target(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def refuse(tmp):
        assert open(tmp, "rb").read() == b"new"
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        checkpoint.atomic_write(str(path), b"new", verify=refuse)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


# ------------------------------------------------- killed writers' leftovers

WRITER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from csub import checkpoint

    def stall(fd):  # the bytes are in the temporary file: say so, then wait to be killed
        print("writing", flush=True)
        time.sleep(600)

    os.fsync = stall
    checkpoint.atomic_write(sys.argv[1], b"x" * 3_000_000)
""")


def _writer(target):
    """A process stopped in the middle of atomic_write(target), its temporary file on disk."""
    p = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT), str(target)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    return p


def _temporaries(directory):
    return sorted(n for n in os.listdir(directory) if TMP_NAME.match(n))


def test_killed_write_leaves_a_temporary_the_next_write_removes(tmp_path):
    (tmp_path / ".tmp-other").write_bytes(b"not ours")            # other programs' files stay
    (tmp_path / ".x.csub-tmp-zz").write_bytes(b"not our pattern")
    live = _writer(tmp_path / "other.safetensors")
    killed = _writer(tmp_path / "ck.safetensors")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    try:
        left = _temporaries(tmp_path)
        assert len(left) == 2
        names = {TMP_NAME.match(n).group(1): int(TMP_NAME.match(n).group(2)) for n in left}
        assert names == {"ck.safetensors": killed.pid, "other.safetensors": live.pid}
        dead_tmp = [n for n in left if n.startswith(".ck.")][0]
        assert os.path.getsize(tmp_path / dead_tmp) == 3_000_000
        assert not (tmp_path / "ck.safetensors").exists()
        # the next write in the directory removes the dead writer's temporary, not the live one's
        checkpoint.save(str(tmp_path / "ck.safetensors"), {"model": {"w": np.ones(2, np.float32)}}, {"epoch": 1})
        assert [n for n in _temporaries(tmp_path)] == [n for n in left if n.startswith(".other.")]
        assert (tmp_path / ".tmp-other").exists() and (tmp_path / ".x.csub-tmp-zz").exists()
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    # reading a checkpoint (as a resume does) removes the one left now
    assert checkpoint.load(str(tmp_path / "ck.safetensors"))["meta"] == {"epoch": 1}
    assert _temporaries(tmp_path) == []


def test_resume_removes_a_killed_writes_temporary(tmp_path):
    from csub import data, train
    tr = data.fashion_mnist("train", bundled=True)
    x, y = tr[0][:128], tr[1][:128]
    csub.manual_seed(0)
    kw = dict(method="lcs_l", epochs=2, batch_size=64, out=str(tmp_path), progress=False)
    train.fit(models.cnn(widths=(4, 8, 8), regime="unstructured", subspace="line"), (x, y), **kw)
    killed = _writer(tmp_path / "checkpoint.safetensors")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(_temporaries(tmp_path)) == 1
    csub.manual_seed(0)
    hist = train.fit(models.cnn(widths=(4, 8, 8), regime="unstructured", subspace="line"), (x, y),
                     resume=True, **kw)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert _temporaries(tmp_path) == []
