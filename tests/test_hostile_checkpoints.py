"""Hostile and damaged checkpoints, given to `minunet predict` (and `train --resume`).

Each file is crafted here with h5py from a valid checkpoint, its checksums recomputed (as an
attacker would) so that the checks behind them are tested; the damage cases are not resealed.
Every case: exit 2, one line, no traceback, no new file, the inputs unchanged.
"""
import json
import os

import h5py
import numpy as np
import pytest

from minunet.errors import UserError
from minunet.model.checkpoint import load_checkpoint, load_model
from minunet.model.checkpoint_schema import parameter_shapes
from minunet.model.unet import UNet
from tests.hostile import assert_limited_refusal, first_param, refused, reseal, run_limited, tiff_image, tiny_model


@pytest.fixture
def work(tmp_path, rng):
    """A folder with a valid tiny model and an input image."""
    tiny_model(tmp_path / "m.h5")
    tiff_image(tmp_path / "in.tif", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    return tmp_path


def _attr(name, value):
    def craft(f):
        if value is None:
            del f.attrs[name]
        else:
            f.attrs[name] = value
    return craft


def _replace_param(make):
    def craft(f):
        name = first_param(f)
        old = f["params"][name]
        shape = old.shape
        del f["params"][name]
        make(f["params"], name, shape)
    return craft


def _soft_loop(f):
    del f["params"]
    f["params"] = h5py.SoftLink("/params")


def _params_as_dataset(f):
    del f["params"]
    f["params"] = np.zeros(4, np.float32)


def _external_storage(target):
    def make(group, name, shape):
        group.create_dataset(name, shape=shape, dtype=np.float32, external=[(str(target), 0, h5py.h5f.UNLIMITED)])
    return _replace_param(make)


def _external_link(other):
    def craft(f):
        with h5py.File(other, "w") as g:
            g.create_group("params")
        del f["params"]
        f["params"] = h5py.ExternalLink(str(other), "/params")
    return craft


def _virtual(other):
    def make(group, name, shape):
        with h5py.File(other, "w") as g:
            g.create_dataset("data", shape=shape, dtype=np.float32)
        layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
        layout[...] = h5py.VirtualSource(str(other), "data", shape=shape)
        group.create_virtual_dataset(name, layout)
    return _replace_param(make)


CRAFTED = {
    "string parameter": (_replace_param(lambda g, n, s: g.create_dataset(n, data=np.array(["x"] * 2, dtype="S3"))),
                         "not real numbers"),
    "complex parameter": (_replace_param(lambda g, n, s: g.create_dataset(n, data=np.zeros(s, np.complex64))),
                          "not real numbers"),
    "int64 parameter": (_replace_param(lambda g, n, s: g.create_dataset(n, data=np.zeros(s, np.int64))),
                        "expected float32"),
    "NaN weights": (_replace_param(lambda g, n, s: g.create_dataset(n, data=np.full(s, np.nan, np.float32))),
                    "NaN or infinite"),
    "model not JSON": (_attr("model", "{depth: 2"), "not valid JSON"),
    "model a list": (_attr("model", json.dumps([2, 2])), "JSON list"),
    "model unknown key": (_attr("model", json.dumps(dict(depth=2, width=2, evil=1))), "unknown key 'evil'"),
    "extra not JSON": (_attr("extra", "{{"), "'extra' is not valid JSON"),
    "extra bad value": (_attr("extra", json.dumps({"config": {"pad": "reflect"}})), "invalid config"),
    "format_version missing": (_attr("format_version", None), "'format_version'"),
    "format_version one": (_attr("format_version", "one"), "'format_version' is 'one'"),
    "iteration missing": (_attr("iteration", None), "'iteration'"),
    "params missing": (lambda f: f.__delitem__("params"), "/params is missing"),
    "params a dataset": (_params_as_dataset, "params is not a group"),
    "soft-link loop": (_soft_loop, "soft link"),
    "absurd width": (_attr("model", json.dumps(dict(depth=2, width=100000))), "width is 100000"),
    "one class": (_attr("model", json.dumps(dict(depth=2, width=2, classes=1))), "classes is 1"),
    "extra parameter": (lambda f: f["params"].create_dataset("hidden", shape=(2 ** 28,), dtype=np.float32),
                        "/params/hidden is unexpected"),
    "huge parameter": (_replace_param(lambda g, n, s: g.create_dataset(n, shape=(2 ** 34,), dtype=np.float32)),
                       "has shape"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_checkpoint_is_refused(work, capsys, case):
    craft, message = CRAFTED[case]
    with h5py.File(work / "m.h5", "a") as f:
        craft(f)
    reseal(work / "m.h5")
    refused(["predict", "-m", work / "m.h5", work / "in.tif", "-o", work / "out.tif", "--device", "reference"],
            capsys, "m.h5", message, folders=[work])


def test_external_storage_is_never_read(work, capsys):
    """A parameter whose bytes live in another file (here a secret beside it) is refused unread."""
    secret = work / "secret.txt"
    secret.write_bytes(os.urandom(4096))
    with h5py.File(work / "m.h5", "a") as f:
        _external_storage(secret)(f)
    reseal(work / "m.h5")
    refused(["predict", "-m", work / "m.h5", work / "in.tif", "-o", work / "out.tif", "--device", "reference"],
            capsys, "another file", "secret.txt", folders=[work])


def test_external_link_and_virtual_dataset_are_refused(work, capsys):
    for name, craft, message in (("link", _external_link(work / "other.h5"), "link to another file"),
                                 ("virtual", _virtual(work / "source.h5"), "virtual dataset")):
        model = work / f"{name}.h5"
        model.write_bytes((work / "m.h5").read_bytes())
        with h5py.File(model, "a") as f:
            craft(f)
        refused(["predict", "-m", model, work / "in.tif", "-o", work / "out.tif", "--device", "reference"],
                capsys, message, folders=[work])


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_truncated_checkpoint_is_incomplete(work, capsys, fraction):
    data = (work / "m.h5").read_bytes()
    (work / "m.h5").write_bytes(data[:int(len(data) * fraction)])
    err = refused(["predict", "-m", work / "m.h5", work / "in.tif", "-o", work / "out.tif",
                   "--device", "reference"], capsys, "m.h5", folders=[work])
    assert "incomplete" in err or "damaged" in err


def test_zeroed_block_is_damage(tmp_path, capsys, rng):
    """4 KB of zeros in the middle of a checkpoint (in its weights) fail the checksum."""
    model = UNet(depth=3, width=8, device="reference")
    from minunet.model.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "m.h5", model)
    tiff_image(tmp_path / "in.tif", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    data = bytearray((tmp_path / "m.h5").read_bytes())
    with h5py.File(tmp_path / "m.h5") as f:           # the middle of the largest parameter's bytes
        ds = max((f["params"][n] for n in f["params"]), key=lambda d: d.size)
        offset = ds.id.get_offset() + ds.id.get_storage_size() // 2 - 2048
    data[offset:offset + 4096] = bytes(4096)
    (tmp_path / "m.h5").write_bytes(bytes(data))
    refused(["predict", "-m", tmp_path / "m.h5", tmp_path / "in.tif", "-o", tmp_path / "out.tif",
             "--device", "reference"], capsys, "damaged", "checksum", folders=[tmp_path])


def test_every_zeroed_block_is_found_or_harmless(tmp_path, rng):
    """Zero each 4 KB block of a checkpoint in turn: it loads identically (unused bytes) or is refused."""
    model = UNet(depth=2, width=4, device="reference")
    from minunet.model.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "m.h5", model)
    good = load_checkpoint(tmp_path / "m.h5")
    data = (tmp_path / "m.h5").read_bytes()
    refused_count = 0
    for start in range(0, len(data), 4096):
        broken = bytearray(data)
        broken[start:start + 4096] = bytes(len(broken[start:start + 4096]))
        (tmp_path / "b.h5").write_bytes(bytes(broken))
        try:
            ck = load_checkpoint(tmp_path / "b.h5")
        except UserError:
            refused_count += 1
            continue
        assert ck.model == good.model and ck.iteration == good.iteration
        assert all(np.array_equal(ck.params[k], good.params[k]) for k in good.params)
    assert refused_count > 0


def test_hidden_datasets_outside_the_schema_are_never_read(work):
    """An 87 KB-class file hiding 2, 16 and 64 GiB datasets: ignored, memory stays bounded."""
    with h5py.File(work / "m.h5", "a") as f:
        for gib in (2, 16, 64):
            f.create_dataset(f"hidden{gib}", shape=(gib << 28,), dtype=np.float32)
    assert (work / "m.h5").stat().st_size < 200_000
    code, err = run_limited(["predict", "-m", "m.h5", "in.tif", "-o", "out.tif", "--device", "reference"], work)
    assert code == 0, err
    assert (work / "out.tif").is_file()


def test_huge_declared_parameter_under_a_memory_limit(work):
    """A parameter declared far larger than memory is refused before it is read (limit: 1 GiB)."""
    with h5py.File(work / "m.h5", "a") as f:
        f.attrs["model"] = json.dumps(dict(depth=6, width=1024))
    reseal(work / "m.h5")
    code, err = run_limited(["predict", "-m", "m.h5", "in.tif", "-o", "out.tif", "--device", "reference"], work)
    assert_limited_refusal(code, err, "memory")
    assert not (work / "out.tif").exists()


def test_checkpoint_of_format_1_still_loads(tmp_path, rng):
    """Checkpoints written before checksums (format 1) load, unverified, and predict the same."""
    model = UNet(depth=2, width=2, device="reference", seed=int(rng.integers(100)))
    with h5py.File(tmp_path / "old.h5", "w") as f:           # the format-1 layout, as minunet 0.1 wrote it
        f.attrs.update(format="minunet-checkpoint", format_version=1, minunet_version="0.1.0",
                       model=json.dumps(model.config()), iteration=5, rng="{}", extra="{}", optimizer="{}")
        for name, p in model.named_parameters():
            f.create_dataset(f"params/{name}", data=p.numpy())
        f.create_group("optimizer")
    loaded, ck = load_model(tmp_path / "old.h5", device="reference")
    assert ck.iteration == 5
    for (_, a), b in zip(model.named_parameters(), loaded.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_schema_matches_the_network():
    """The parameter names and shapes the schema derives equal those of a built UNet."""
    for depth in (1, 2, 3, 5):
        for up_kernel in (2, 4):
            for deep in (False, True):
                kw = dict(depth=depth, width=3, in_channels=2, classes=3, up_kernel=up_kernel, deep_supervision=deep)
                net = UNet(device="reference", **kw)
                config = dict(net.config())
                assert parameter_shapes(config) == [(n, tuple(p.shape)) for n, p in net.named_parameters()]


@pytest.mark.parametrize("optimizer,buffer", [("adam", "m/0"), ("sgd", "velocity/0")])
def test_corrupt_training_state_on_resume(tmp_path, capsys, optimizer, buffer):
    """A checkpoint whose generator or optimizer state is corrupt: --resume refuses it in one line."""
    from tests.test_train import write_data
    data = write_data(tmp_path / "d.h5")
    from tests.backends import fast_device
    tiny = ["--device", fast_device(), "--depth", "2", "--width", "2", "--tile", "44", "--val-slices", "none",
            "--workers", "0", "-q", "--optimizer", optimizer]
    from tests.cli_runner import run
    code, _, err = run(["train", "--data", data, "--out", tmp_path / "run", "--iterations", "2", *tiny], capsys)
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoint.h5"
    good = ckpt.read_bytes()
    cases = [(lambda f: f.attrs.__setitem__("rng", json.dumps({"dropout": {"bit_generator": "PCG64", "state": 3}})),
              "random generator 'dropout'"),
             (lambda f: f.attrs.__setitem__("rng", "[1, 2"), "'rng' is not valid JSON"),
             (lambda f: f["optimizer"].__delitem__(buffer), f"/optimizer/{buffer} is missing"),
             (lambda f: f["optimizer"].attrs.__setitem__("steps", -4), "steps is -4")]
    for craft, message in cases:
        ckpt.write_bytes(good)
        with h5py.File(ckpt, "a") as f:
            craft(f)
        reseal(ckpt)
        refused(["train", "--out", tmp_path / "run", "--resume", "--iterations", "4"], capsys, message,
                folders=[tmp_path])
