"""One name for one thing: every block's residual shortcut is ``shortcut``.

ResNet18's BasicBlock called it ``short`` before; state dicts and model files
written then (tensors ``blocks.K.short.0.weight`` ..., graph names to match)
still load: ``load_state_dict`` reads the old names (``Module._renamed``),
``csub.load`` rebuilds the network from such a file, and the C runtime runs
it as it finds it (it reads tensors by the names the file's graph gives).
"""
import json

import numpy as np
import pytest

import csub
from csub import checkpoint, models, modelfile, nn, train

SHAPE = (3, 32, 32)  # small images: ResNet18's stem and stages still leave a 1x1 map


def _resnet(seed=0):
    csub.manual_seed(seed)
    net = models.resnet18(num_classes=5, regime="unstructured", norm="gn")
    rng = np.random.default_rng(seed)
    for _, p in net.named_parameters():  # break the symmetry of the initial norms
        p.data[...] += rng.normal(0, 0.05, p.shape).astype(np.float32)
    return net.eval().set_alpha(0.5)


def _old_name(key):
    return key.replace(".shortcut.", ".short.")


def _old_file(net):
    """The model file older csub wrote for ``net``: every name under ``short`` instead of ``shortcut``."""
    data = modelfile.to_bytes(net, SHAPE)
    _, tensors = checkpoint.read(data)
    meta = modelfile.read_meta(data)
    old_meta = json.loads(json.dumps(meta).replace(".shortcut.", ".short."))
    assert old_meta != meta
    old = checkpoint.to_bytes({_old_name(k): v for k, v in tensors.items()},
                              {"csub": json.dumps(old_meta, allow_nan=False)})
    assert b".short.0.weight" in old and b".shortcut." not in old
    return old


def test_every_block_names_its_shortcut_shortcut():
    nets = [models.resnet18(num_classes=5), models.cpreresnet20(n=1),
            models.cpreresnet20(n=1, regime="quantized", layout="reference", norm="bn")]
    for net in nets:
        keys = list(net.state_dict())
        assert any(".shortcut." in k for k in keys), type(net).__name__
        assert not any(".short." in k for k in keys)
        for block in net.blocks:
            assert "short" not in block._modules


def test_old_state_dict_loads(rng):
    net, other = _resnet(0), _resnet(1)
    old = {_old_name(k): v for k, v in net.state_dict().items()}
    assert any(".short." in k for k in old)
    assert other.load_state_dict(old) is other
    for (k, a), (k2, b) in zip(net.state_dict().items(), other.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a, b, err_msg=k)
    x = rng.standard_normal((2,) + SHAPE).astype(np.float32)
    np.testing.assert_array_equal(other(x), net(x))


def test_old_and_new_name_together_are_refused():
    net = _resnet(0)
    sd = net.state_dict()
    key = next(k for k in sd if ".shortcut." in k)
    sd[_old_name(key)] = sd[key].copy()
    before = net.state_dict()
    with pytest.raises(ValueError, match="short"):
        net.load_state_dict(sd)
    for k, a in net.state_dict().items():
        np.testing.assert_array_equal(a, before[k])


def test_renamed_child_of_a_user_module():
    """``_renamed`` is the mechanism, not a special case of ResNet18: any module may declare one."""
    class Block(nn.Module):
        _renamed = {"proj": "projection"}

        def __init__(self):
            super().__init__()
            self.projection = nn.Linear(2, 3)

    net = nn.Sequential(Block(), Block())
    sd = {k.replace("projection", "proj"): np.full(v.shape, i, np.float32)
          for i, (k, v) in enumerate(net.state_dict().items())}
    net.load_state_dict(sd)
    np.testing.assert_array_equal(net[1].projection.bias.data, np.full(3, 3, np.float32))
    with pytest.raises(KeyError, match="unexpected"):
        net.load_state_dict({**sd, "0.proj2.weight": np.zeros(1, np.float32)})


def test_old_model_file_loads_and_runs(tmp_path, rng):
    net = _resnet(0)
    old = _old_file(net)
    path = tmp_path / "old.safetensors"
    path.write_bytes(old)
    assert modelfile.check(old)["model"] == "resnet18"  # every reader takes it, the C runtime's included

    back = csub.load(path)
    for k, a in net.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], a, err_msg=k)
    x = rng.standard_normal((2,) + SHAPE).astype(np.float32)
    np.testing.assert_array_equal(back.set_alpha(0.5)(x), net(x))

    new_run = csub.CompressedNet(modelfile.to_bytes(net, SHAPE), 0.5)
    old_run = csub.CompressedNet(str(path), 0.5)
    np.testing.assert_array_equal(old_run(x), new_run(x))
    np.testing.assert_allclose(old_run(x), net(x), rtol=1e-3, atol=2e-4 * np.abs(net(x)).max())


def test_old_training_checkpoint_resumes(tmp_path, rng, monkeypatch):
    """A ResNet18 training checkpoint with the old ``short`` names resumes to the same weights."""
    x = rng.integers(0, 256, (8,) + SHAPE, dtype=np.uint8)
    y = rng.integers(0, 5, 8)

    def run(out, resume):
        csub.manual_seed(3)
        net = models.resnet18(num_classes=5, regime="unstructured", subspace="line", norm="gn")
        train.fit(net, (x, y), method="lcs_l", epochs=2, batch_size=8, out=str(out), resume=resume,
                  progress=False, seed=3, augment=False)
        return net

    class Killed(Exception):
        pass

    save = checkpoint.save

    def save_then_die(*a, **k):  # the process dies right after the first epoch's checkpoint
        save(*a, **k)
        raise Killed

    whole = run(tmp_path / "whole", False)
    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        run(tmp_path / "old", False)
    monkeypatch.setattr(checkpoint, "save", save)
    path = tmp_path / "old" / "checkpoint.safetensors"
    state = checkpoint.load(path)
    meta = state.pop("meta")
    state["model"] = {_old_name(k): v for k, v in state["model"].items()}
    assert any(".short." in k for k in state["model"])
    checkpoint.save(path, state, meta)

    resumed = run(tmp_path / "old", True)
    for k, v in whole.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)
