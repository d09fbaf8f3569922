"""Checkpoints: round trip, atomic writes, clear refusals."""
import h5py
import numpy as np
import pytest

from minunet.engine.optim import SGD
from minunet.errors import UserError
from minunet.model.checkpoint import load_checkpoint, load_model, load_weights, save_checkpoint
from minunet.model.unet import UNet


def test_round_trip(tmp_path, rng):
    model = UNet(depth=3, width=2, device="reference", seed=int(rng.integers(100)))
    opt = SGD(model.parameters(), lr=0.1)
    for p, v in zip(model.parameters(), opt.velocity):
        v[...] = rng.standard_normal(v.shape)
    state = np.random.default_rng(5).bit_generator.state
    save_checkpoint(tmp_path / "c.h5", model, opt, iteration=17, rng={"sampler": state})
    ck = load_checkpoint(tmp_path / "c.h5")
    assert ck.iteration == 17 and ck.rng["sampler"] == state and ck.optimizer["momentum"] == 0.99
    loaded, _ = load_model(tmp_path / "c.h5", device="reference")
    for (name, a), b in zip(model.named_parameters(), loaded.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    opt2 = SGD(loaded.parameters())
    opt2.load_state(ck.optimizer_state)
    for a, b in zip(opt.velocity, opt2.velocity):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]       # no temporary file left


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    model = UNet(depth=2, width=2, device="reference")
    save_checkpoint(tmp_path / "c.h5", model, iteration=1)

    class Boom(Exception):
        pass

    def broken(*args, **kwargs):
        raise Boom
    monkeypatch.setattr("minunet.model.checkpoint.optimizer_settings", broken)
    with pytest.raises(Boom):
        save_checkpoint(tmp_path / "c.h5", model, SGD(model.parameters()), iteration=2)
    assert load_checkpoint(tmp_path / "c.h5").iteration == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]


def test_refusals(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(UserError, match="not an HDF5 file"):
        load_checkpoint(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(UserError, match="not a minunet checkpoint"):
        load_checkpoint(tmp_path / "other.h5")
    model = UNet(depth=2, width=2, device="reference")
    save_checkpoint(tmp_path / "new.h5", model)
    with h5py.File(tmp_path / "new.h5", "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(UserError, match="newer"):
        load_checkpoint(tmp_path / "new.h5")
    save_checkpoint(tmp_path / "ok.h5", model)
    with pytest.raises(UserError, match="different architecture.*width"):
        load_weights(UNet(depth=2, width=4, device="reference"), load_checkpoint(tmp_path / "ok.h5"))
