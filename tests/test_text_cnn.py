"""Sentence CNN: shapes, padding invariance against a per-sentence reference, gradients, config round trip."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors
from torch.nn import functional as F

from model.config import NetworkConfig
from model.network import DSCMRNet
from model.text import (
    SentenceCNN,
    TextEncoderConfig,
    TokenizerConfig,
    Vocabulary,
    build_sentence_cnn,
    rebuild_sentence_cnn,
    text_encoder_config_from_dict,
    text_encoder_config_to_dict,
)


def _reference(cnn: SentenceCNN, ids: list[int]) -> torch.Tensor:
    """Slow, obvious Kim CNN on one unpadded sentence (zero-padded up to the kernel width if shorter)."""
    emb = cnn.embedding.weight[torch.tensor(ids, dtype=torch.long)] if ids else torch.zeros(0, cnn.embed_dim)
    feats = []
    for width, conv in zip(cnn.widths, cnn.convs):
        x = emb if len(ids) >= width else torch.cat([emb, torch.zeros(width - len(ids), cnn.embed_dim)])
        windows = [conv(x[t : t + width].T.unsqueeze(0)).squeeze() for t in range(x.shape[0] - width + 1)]
        feats.append(torch.stack(windows).max(0).values)
    pooled = torch.cat(feats)
    return {"relu": F.relu, "elu": F.elu, "leaky_relu": lambda x: F.leaky_relu(x, 0.01)}[cnn.activation](pooled)


@pytest.mark.parametrize("activation", ["elu", "relu", "leaky_relu"])
def test_output_shape_and_matches_reference_whatever_the_padding(activation):
    torch.manual_seed(0)
    cnn = SentenceCNN(vocab_size=30, embed_dim=8, widths=(3, 4, 5), maps=6, dropout=0.5, activation=activation).eval()
    sentences = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [], [2, 2, 2, 2, 2], [7]]
    assert cnn.output_dim == 18
    for width in (7, 9, 20):
        ids = torch.zeros(len(sentences), width, dtype=torch.long)
        for i, s in enumerate(sentences):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        with torch.no_grad():
            out = cnn(ids)
            expected = torch.stack([_reference(cnn, s) for s in sentences])
        assert out.shape == (5, 18)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        short = cnn(torch.tensor([[3, 4]]))  # shorter than the widest kernel: padded inside
    torch.testing.assert_close(short[0], _reference(cnn, [3, 4]), rtol=1e-5, atol=1e-5)


def test_appending_pads_does_not_change_output_and_dropout_only_in_training():
    torch.manual_seed(1)
    cnn = SentenceCNN(vocab_size=50, embed_dim=12, maps=10)
    ids = torch.randint(2, 50, (4, 9))
    ids[1, 6:] = 0
    ids[2, 2:] = 0
    cnn.eval()
    with torch.no_grad():
        base = cnn(ids)
        padded = cnn(F.pad(ids, (0, 17)))
    torch.testing.assert_close(base, padded, rtol=0, atol=0)
    cnn.train()
    with torch.no_grad():
        assert (cnn(ids) == 0).float().mean() > (base == 0).float().mean()  # dropout zeroes features


def test_a_nonzero_pad_row_does_not_leak_into_the_output():
    # padding_idx keeps the PAD row at zero only in training; loaded or edited weights may carry another one.
    torch.manual_seed(2)
    cnn = SentenceCNN(vocab_size=30, embed_dim=8, widths=(3, 4, 5), maps=6, dropout=0.0, mean_vector=True).eval()
    with torch.no_grad():
        cnn.embedding.weight[0] = torch.randn(8)
        short = torch.tensor([[4, 5]])  # shorter than the widest filter
        longer = torch.tensor([[7, 8, 9, 10, 11, 12]])
        alone = [cnn(short), cnn(longer)]
        batch = torch.zeros(2, 6, dtype=torch.long)
        batch[0, :2], batch[1] = short[0], longer[0]
        together = cnn(F.pad(batch, (0, 5)))
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-6)


@pytest.mark.parametrize("freeze", [True, False])
def test_gradient_reaches_embeddings_only_when_not_frozen(freeze):
    pretrained = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    cnn = SentenceCNN(20, 6, widths=(2, 3), maps=4, dropout=0.0, pretrained=pretrained, freeze_embeddings=freeze)
    np.testing.assert_array_equal(cnn.embedding.weight[1:].detach().numpy(), pretrained[1:])
    assert torch.all(cnn.embedding.weight[0] == 0)  # PAD row is zero even if the matrix had something there
    ids = torch.tensor([[4, 5, 6, 0, 0], [7, 8, 0, 0, 0]])
    cnn(ids).sum().backward()
    assert cnn.convs[0].weight.grad is not None and cnn.convs[0].weight.grad.abs().sum() > 0
    assert cnn.freeze_embeddings is freeze
    grad = cnn.embedding.weight.grad
    if freeze:
        assert grad is None
    else:
        assert grad[[4, 5, 6, 7, 8]].abs().sum(1).gt(0).all()
        assert grad[0].abs().sum() == 0 and grad[9:].abs().sum() == 0  # PAD and unused ids get nothing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(2)
    cnn = SentenceCNN(40, 8, maps=5).eval()
    ids = torch.randint(1, 40, (6, 11))
    ids[3, 4:] = 0
    with torch.no_grad():
        expected = cnn(ids)
        got = cnn.cuda()(ids.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_explained():
    cnn = SentenceCNN(10, 4, maps=2)
    with pytest.raises(ValueError, match="vocabulary"):
        cnn(torch.tensor([[1, 2, 10]]))
    with pytest.raises(ValueError, match="N x L"):
        cnn(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="shape"):
        SentenceCNN(10, 4, pretrained=np.zeros((9, 4)))


def test_config_round_trip_and_validation():
    cfg = TextEncoderConfig(
        kind="sentence_cnn",
        embed_dim=50,
        word_vectors="glove-6b-50d",
        widths=(2, 3),
        tokenizer=TokenizerConfig(numbers="placeholder", cjk="bigram"),
    )
    data = json.loads(json.dumps(text_encoder_config_to_dict(cfg)))
    assert text_encoder_config_from_dict(data) == cfg
    assert cfg.output_dim == 200 and TextEncoderConfig(kind="minilm").output_dim == 384
    assert TextEncoderConfig(kind="features").output_dim is None
    with pytest.raises(ValueError, match="embed_dim=50"):
        TextEncoderConfig(word_vectors="glove-6b-50d", embed_dim=300)
    with pytest.raises(ValueError, match="kind"):
        TextEncoderConfig(kind="bert")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown"):
        text_encoder_config_from_dict({**data, "colour": "red"})


TRAIN = [
    "a small dog runs in the green park",
    "a big dog sleeps in the park",
    "the cat sits on a red mat",
    "a black cat sleeps on the mat",
    "the dog and the cat play",
    "a red bird sings in the tree",
] * 3


def test_build_train_save_and_rebuild_inside_dscmr(tmp_path):
    torch.manual_seed(0)
    cfg = TextEncoderConfig(
        embed_dim=16,
        maps=8,
        min_count=1,
        max_len=12,
        word_vectors="word2vec",
        word2vec_epochs=2,
        tokenizer=TokenizerConfig(cjk="bigram"),
    )
    bundle = build_sentence_cnn(cfg, TRAIN, seed=0)
    assert bundle.coverage.from_fallback == len(bundle.vocab) - 2 and bundle.coverage.random == 0
    net = DSCMRNet(
        NetworkConfig(image_input_dim=10, text_input_dim=bundle.encoder.output_dim, hidden_dim=32, common_dim=16, num_classes=3),
        text_encoder=bundle.encoder,
    )
    ids = bundle.vocab.encode(TRAIN[:4], cfg.max_len)
    before = net.text_encoder.embedding.weight.detach().clone()
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    _, v, pu, pv = net(torch.randn(4, 10), ids)
    assert v.shape == (4, 16)
    (pu.sum() + pv.sum()).backward()
    optimiser.step()
    assert not torch.equal(before, net.text_encoder.embedding.weight)  # trained end to end

    bundle.vocab.save(tmp_path / "vocab.json")
    cfg_again = text_encoder_config_from_dict(json.loads(json.dumps(text_encoder_config_to_dict(cfg))))
    vocab_again = Vocabulary.load(tmp_path / "vocab.json")
    rebuilt = DSCMRNet(net.cfg, text_encoder=rebuild_sentence_cnn(cfg_again, vocab_again))
    assert isinstance(SentenceCNN.from_config(cfg_again, len(vocab_again)), SentenceCNN)
    with pytest.raises(ValueError, match="only 'sentence_cnn'"):
        SentenceCNN.from_config(TextEncoderConfig(kind="minilm"), 10)
    rebuilt.load_state_dict(net.state_dict())
    net.eval(), rebuilt.eval()
    with torch.no_grad():
        query = vocab_again.encode(["a dog in the park"], cfg.max_len)
        torch.testing.assert_close(rebuilt.encode_text(query), net.encode_text(query))


def test_build_with_glove_primary_and_corpus_fallback():
    from model.text import load_glove_6b_50d

    glove = load_glove_6b_50d(limit=20000)
    texts = TRAIN + ["the zorblax glimmers near the qwertyfoo", "zorblax and qwertyfoo again near a dog"] * 2
    cfg = TextEncoderConfig(
        embed_dim=50, maps=4, min_count=1, word_vectors="glove-6b-50d", word2vec_epochs=1, tokenizer=TokenizerConfig(cjk="bigram")
    )
    bundle = build_sentence_cnn(cfg, texts, seed=0, primary=glove)
    cov = bundle.coverage
    unknown_to_glove = [t for t in bundle.vocab.tokens[2:] if t not in glove.key_to_index]
    assert {"zorblax", "qwertyfoo"} <= set(unknown_to_glove)
    assert cov.from_fallback == len(unknown_to_glove) and cov.random == 0  # corpus word2vec fills the gaps
    assert cov.from_primary == len(bundle.vocab) - 2 - len(unknown_to_glove) and cov.alignment_anchors >= 10
    weight = bundle.encoder.embedding.weight.detach().numpy()
    np.testing.assert_allclose(weight[bundle.vocab.id_of("dog")], glove["dog"])
    with pytest.raises(ValueError, match="embed_dim=50"):
        build_sentence_cnn(TextEncoderConfig(embed_dim=300, word_vectors="word2vec"), texts, primary=glove)


def test_pretrained_vocab_keeps_words_the_training_texts_lack():
    from model.text import load_glove_6b_50d

    glove = load_glove_6b_50d(limit=5000)
    cfg = TextEncoderConfig(
        embed_dim=50, maps=4, min_count=1, word_vectors="glove-6b-50d", word2vec_epochs=1, tokenizer=TokenizerConfig(cjk="bigram")
    )
    plain = build_sentence_cnn(cfg, TRAIN, seed=0, primary=glove)
    wider = build_sentence_cnn(dataclasses.replace(cfg, pretrained_vocab=2000), TRAIN, seed=0, primary=glove)
    # the training words keep their ids; the 2,000 most frequent GloVe words follow
    assert wider.vocab.tokens[: len(plain.vocab)] == plain.vocab.tokens
    assert 2000 - len(plain.vocab) <= len(wider.vocab) - len(plain.vocab) <= 2000
    unseen = "government"  # frequent in GloVe, absent from TRAIN
    assert unseen not in plain.vocab and plain.vocab.ids(f"the {unseen}")[1] == 1  # OOV
    row = wider.vocab.id_of(unseen)
    assert row > 1
    np.testing.assert_allclose(wider.encoder.embedding.weight[row].detach().numpy(), glove[unseen])
    # the extra words are counted apart: the training words' coverage is the same with or without them
    assert wider.coverage.pretrained_extra == len(wider.vocab) - len(plain.vocab)
    assert (wider.coverage.from_primary, wider.coverage.from_fallback, wider.coverage.random) == (
        plain.coverage.from_primary,
        plain.coverage.from_fallback,
        plain.coverage.random,
    )
    assert wider.coverage.pretrained_fraction == plain.coverage.pretrained_fraction < 1
    # a mixed-case key (like "iPhone") cannot be found again from its token ("iphone"): it is not added to the vocabulary
    mixed = KeyedVectors(50)
    mixed.add_vectors(["zzQuux", "Zzcapital"] + glove.index_to_key[:2000], np.vstack([np.ones((2, 50)), glove.vectors[:2000]]))
    bundle = build_sentence_cnn(dataclasses.replace(cfg, pretrained_vocab=100), TRAIN, seed=0, primary=mixed)
    assert "zzquux" not in bundle.vocab and "zzcapital" in bundle.vocab and bundle.coverage.random_extra == 0
    with pytest.raises(ValueError, match="pretrained_vocab"):
        TextEncoderConfig(pretrained_vocab=-1)
    with pytest.raises(ValueError, match="needs pretrained word vectors"):
        TextEncoderConfig(word_vectors="word2vec", pretrained_vocab=1000)


def test_word_dropout_blanks_tokens_in_training_only():
    torch.manual_seed(0)
    cnn = SentenceCNN(vocab_size=30, embed_dim=8, widths=(2, 3), maps=5, dropout=0.0, word_dropout=0.4)
    ids = torch.randint(2, 30, (6, 9))
    cnn.train()
    torch.manual_seed(1)
    trained_view = cnn(ids)
    torch.manual_seed(1)
    blank = torch.rand(ids.shape) < 0.4  # the draw the forward pass makes
    assert 0 < int(blank.sum()) < blank.numel()
    with torch.no_grad():
        # a blanked token is a zero vector inside a text that keeps its length
        expected = torch.stack([_reference(cnn, row.tolist()) for row in ids.masked_fill(blank, 0)])
    torch.testing.assert_close(trained_view, expected)
    cnn.eval()
    assert not torch.equal(trained_view, cnn(ids))  # evaluation sees every token
    with pytest.raises(ValueError, match="word_dropout"):
        TextEncoderConfig(word_dropout=1.0)


def test_mean_vector_appends_the_mean_word_vector_whatever_the_padding():
    torch.manual_seed(0)
    cnn = SentenceCNN(vocab_size=20, embed_dim=6, widths=(2, 3), maps=4, dropout=0.0, mean_vector=True).eval()
    assert cnn.output_dim == 2 * 4 + 6
    texts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    padded = torch.zeros(2, 9, dtype=torch.long)
    for i, ids in enumerate(texts):
        padded[i, : len(ids)] = torch.tensor(ids)
    with torch.no_grad():
        out = cnn(padded)
        for row, ids in zip(out, texts):
            torch.testing.assert_close(row[:8], _reference(cnn, ids))
            torch.testing.assert_close(row[8:], cnn.embedding.weight[torch.tensor(ids)].mean(0))
    assert TextEncoderConfig(embed_dim=50, maps=100, mean_vector=True).output_dim == 350
    # with word dropout, training averages the tokens it kept (the same scale as evaluation)
    cnn.word_dropout = 0.5
    cnn.train()
    torch.manual_seed(3)
    trained_view = cnn(padded)
    torch.manual_seed(3)
    blank = torch.rand(padded.shape) < 0.5
    for row, ids, row_blank in zip(trained_view, texts, blank):
        kept = [t for t, b in zip(ids, row_blank[: len(ids)].tolist()) if not b]
        expected = cnn.embedding.weight[torch.tensor(kept)].mean(0) if kept else torch.zeros(6)
        torch.testing.assert_close(row[8:], expected)


def test_map_activity_counts_maps_that_fire_and_texts_on_which_none_fires():
    torch.manual_seed(4)
    cnn = SentenceCNN(vocab_size=40, embed_dim=6, widths=(2, 3), maps=4, dropout=0.5, activation="relu")
    with torch.no_grad():
        for conv in cnn.convs:
            conv.bias.fill_(-100.0)  # every map dead ...
        cnn.convs[0].bias[1] = 100.0  # ... but map 1 of width 2, which fires on every text
        cnn.convs[1].bias[3] = 0.0  # map 3 of width 3 fires on some texts only
    ids = torch.randint(2, 40, (50, 7))
    activity = cnn.map_activity(ids)
    assert activity.maps == 8 and activity.texts == 50 and activity.silent_texts == 0
    pre = cnn.convs[1](cnn.embedding(ids).transpose(1, 2)).amax(2)[:, 3]
    assert activity.live == 1 + int((pre > 0).any()) and cnn.training  # restored to training mode
    with torch.no_grad():
        cnn.convs[0].bias[1] = -100.0
        cnn.convs[1].bias[3] = -100.0
    dead = cnn.map_activity(ids)
    assert dead.live == 0 and dead.silent_text_fraction == 1.0
    cnn.eval()
    with torch.no_grad():
        features = cnn(ids)
    assert (features == 0).all()  # with ReLU, dead maps leave an all-zero feature: the same for every text
    assert cnn.silent_features(features).all()
    cnn.activation = "elu"  # the same dead maps under ELU: every map at its floor, -1
    with torch.no_grad():
        features = cnn(ids)
    assert torch.allclose(features, torch.full_like(features, -1.0)) and cnn.silent_features(features).all()


def test_leaky_activation_and_pool_norm_keep_a_gradient_and_an_informative_feature_for_dead_maps():
    cfg = TextEncoderConfig(kind="sentence_cnn", embed_dim=6, widths=(2, 3), maps=4, activation="leaky_relu")
    assert text_encoder_config_from_dict(json.loads(json.dumps(text_encoder_config_to_dict(cfg)))) == cfg
    with pytest.raises(ValueError, match="activation"):
        TextEncoderConfig(activation="gelu")  # type: ignore[arg-type]
    ids = torch.randint(2, 40, (20, 7))
    for kind, norm in (("relu", False), ("leaky_relu", False), ("relu", True)):
        torch.manual_seed(5)
        cnn = SentenceCNN.from_config(dataclasses.replace(cfg, activation=kind, pool_norm=norm), vocab_size=40)
        with torch.no_grad():
            for conv in cnn.convs:
                conv.bias.fill_(-100.0)
        cnn.train()
        cnn(ids).sum().backward()
        grad = cnn.convs[0].weight.grad
        if kind == "relu" and not norm:
            assert grad is None or (grad == 0).all()  # a dead map never learns again
        else:
            assert grad.abs().sum() > 0
            with torch.no_grad():
                for _ in range(100):  # batch norm's running statistics settle on these texts
                    cnn(ids)
            cnn.eval()
            with torch.no_grad():
                out = cnn(ids)
            assert not (out == 0).all(1).any() and len({tuple(r) for r in out.round(decimals=5).tolist()}) == 20
    assert "pool_norm.running_mean" in SentenceCNN.from_config(dataclasses.replace(cfg, pool_norm=True), 40).state_dict()
    assert not any("pool_norm" in k for k in SentenceCNN.from_config(cfg, 40).state_dict())  # old models load as before
