"""The saved-model directory: round trip, content hash, and clear refusals of damaged directories."""

import json

import numpy as np
import pytest
import torch

from model.artefact import FORMAT_VERSION, ModelArtefactError, load_model, read_model_hash
from model.encoder import load_encoder
from training.config import preset, with_dims
from training.features import FeatureSplits, SplitArrays
from training.train import features_spec, save_trained_model, train_dscmr


def tiny_splits(seed=0, n=(60, 20, 20), d_img=12, d_txt=6, c=3) -> FeatureSplits:
    rng = np.random.default_rng(seed)
    proto_i, proto_t = rng.normal(size=(c, d_img)), rng.normal(size=(c, d_txt))

    def part(m):
        cls = np.arange(m) % c
        y = np.eye(c, dtype=np.float32)[cls]
        return SplitArrays(
            (proto_i[cls] + 0.8 * rng.normal(size=(m, d_img))).astype(np.float32),
            (proto_t[cls] + 0.8 * rng.normal(size=(m, d_txt))).astype(np.float32),
            y,
            [f"i{k}" for k in range(m)],
        )

    return FeatureSplits(part(n[0]), part(n[1]), part(n[2]), [f"c{k}" for k in range(c)], name="tiny")


def tiny_config(epochs=5, **train):
    cfg = with_dims(preset("paper", epochs=epochs, progress=False, batch_size=16, **train), 12, 6, 3)
    import dataclasses

    return dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, hidden_dim=32, common_dim=16))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    data = tiny_splits()
    result = train_dscmr(data, tiny_config(8))
    out = tmp_path_factory.mktemp("m") / "model"
    digest = save_trained_model(result, out, data.label_names, features_spec(12, 6))
    return data, result, out, digest


def test_round_trip_gives_identical_vectors(saved):
    data, result, out, digest = saved
    assert read_model_hash(out) == digest and len(digest) == 64
    enc = load_encoder(out, device="cpu")
    assert enc.content_hash == digest and enc.dim == 16 and enc.label_names == ["c0", "c1", "c2"]
    u = enc.encode_image_features(data.test.image)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(result.model.encode_image(torch.tensor(data.test.image)), dim=1).numpy()
    np.testing.assert_allclose(u, ref, atol=1e-6)
    assert np.allclose(np.linalg.norm(enc.encode_text_features(data.test.text), axis=1), 1.0, atol=1e-5)
    art = load_model(out)
    assert art.config["train"]["lr"] == 1e-4 and art.metrics["best_epoch"] == result.best_epoch
    assert not enc.can_encode_images and not enc.can_encode_texts
    with pytest.raises(ModelArtefactError, match="no text encoder"):
        enc.encode_texts(["a cat"])


def _mapped_ranges(name: str) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(name):
                low, high = line.split()[0].split("-")
                ranges.append((int(low, 16), int(high, 16)))
    return ranges


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_loaded_weights_stay_memory_mapped_and_copy_on_write(saved):
    """A served network's weights are the file's pages (processes serving one model share them), and writing to them
    changes neither the file nor another load."""
    data, result, out, digest = saved
    first, second = load_encoder(out, device="cpu"), load_encoder(out, device="cpu")
    ranges = _mapped_ranges("weights.safetensors")
    assert ranges, "weights.safetensors is not mapped into the process"
    for name, param in first.network.named_parameters():
        assert any(low <= param.data_ptr() < high for low, high in ranges), f"{name} was copied out of the mapping"
    before = second.encode_image_features(data.test.image)
    with torch.no_grad():
        for param in first.network.parameters():
            param.add_(1.0)
    np.testing.assert_array_equal(second.encode_image_features(data.test.image), before)
    np.testing.assert_array_equal(load_encoder(out, device="cpu").encode_image_features(data.test.image), before)
    assert read_model_hash(out) == digest and load_model(out).content_hash == digest


def test_same_model_same_hash_and_metrics_do_not_change_it(saved, tmp_path):
    data, result, out, digest = saved
    again = save_trained_model(result, tmp_path / "again", data.label_names, features_spec(12, 6), metrics={"note": "different"})
    assert again == digest


@pytest.mark.parametrize("damage", ["missing_weights", "truncated_weights", "missing_manifest", "bad_version", "edited_config"])
def test_damaged_directory_is_refused_with_named_problem(saved, tmp_path, damage):
    import shutil

    _, _, out, _ = saved
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    if damage == "missing_weights":
        (bad / "weights.safetensors").unlink()
        match = "weights.safetensors is missing"
    elif damage == "truncated_weights":
        raw = (bad / "weights.safetensors").read_bytes()
        (bad / "weights.safetensors").write_bytes(raw[: len(raw) // 2])
        match = "weights.safetensors does not match its checksum"
    elif damage == "missing_manifest":
        (bad / "manifest.json").unlink()
        match = "manifest.json is missing"
    elif damage == "bad_version":
        m = json.loads((bad / "manifest.json").read_text())
        m["format_version"] = FORMAT_VERSION + 1
        (bad / "manifest.json").write_text(json.dumps(m))
        match = "format version"
    else:
        (bad / "config.json").write_text((bad / "config.json").read_text().replace("0.0001", "0.1"))
        match = "config.json does not match"
    with pytest.raises(ModelArtefactError, match=match):
        load_encoder(bad, device="cpu")


def test_missing_directory_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelArtefactError, match="python -m training train"):
        load_encoder(tmp_path / "nope")


def test_weights_of_another_dtype_are_cast_to_the_network_s(saved):
    """Keeping the file's tensors (assign) must not keep a dtype the network does not compute in."""
    import dataclasses

    from model.encoder import build_network

    data, result, out, digest = saved
    artefact = load_model(out)
    wide = dataclasses.replace(artefact, state_dict={k: v.double() for k, v in artefact.state_dict.items()})
    net = build_network(wide)
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    with torch.no_grad():
        expected = build_network(artefact).encode_image(torch.tensor(data.test.image))
        np.testing.assert_allclose(net.encode_image(torch.tensor(data.test.image)).numpy(), expected.numpy(), atol=1e-6)
