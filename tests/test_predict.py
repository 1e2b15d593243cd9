"""TTA: the plain prediction blended (beta) with the mean over named views and random draws."""

import numpy as np
import pytest
import torch

from pipeline.inference import VIEWS, predict_views
from pipeline.preds import mean_probs
from pipeline.stages.predict import blend_tta, choose_beta

ALL_VIEWS = list(VIEWS)


class FlipInvariant(torch.nn.Module):
    """Logits from the mean colour of each channel: the same for any flipped or rotated image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class LeftHalf(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        return torch.stack([x[..., : w // 2].mean((1, 2, 3)), x[..., w // 2 :].mean((1, 2, 3))], 1)


class Corner(torch.nn.Module):
    """Sensitive to every view: logits from the top-left quarter and the whole image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return torch.stack([x[..., : h // 2, : w // 2].mean((1, 2, 3)), x.mean((1, 2, 3))], 1) * 5


def loader(x: torch.Tensor):
    return [(x[i : i + 4], torch.zeros(len(x[i : i + 4]))) for i in range(0, len(x), 4)]


def test_flip_invariant_model_gets_the_plain_prediction_back():
    torch.manual_seed(0)
    x, net = torch.rand(10, 3, 8, 8), FlipInvariant()
    outs = predict_views(net, loader(x), ["identity", "hflip", "vflip", "rot90s", "transposes"])
    assert outs["plain"].shape == (10, 4)
    for beta in (0.0, 0.3, 1.0):
        for combine in ("probs", "logits"):
            np.testing.assert_allclose(
                blend_tta(outs, beta, combine, "single_label"), outs["plain"], atol=1e-6
            )


def test_every_view_keeps_the_ids_order():
    """Each view's row i is that view of image i alone, whatever the batching."""
    torch.manual_seed(2)
    x, net = torch.rand(9, 3, 8, 8), Corner()
    outs = predict_views(net, loader(x), ALL_VIEWS)
    for i in range(len(x)):
        alone = predict_views(net, [(x[i : i + 1], torch.zeros(1))], ALL_VIEWS)
        for v in ["plain", *ALL_VIEWS]:
            np.testing.assert_allclose(outs[v][i], alone[v][0], atol=1e-6, err_msg=v)
    # and the views really differ from the plain image for a sensitive model
    assert all(not np.allclose(outs[v], outs["plain"]) for v in ALL_VIEWS if v != "identity")


def test_beta_one_is_the_plain_and_zero_the_augmented_only_prediction():
    x = torch.zeros(2, 3, 8, 8)
    x[..., :4] = 1.0  # bright left half
    outs = predict_views(LeftHalf(), loader(x), ["hflip", "shift"])
    views = (outs["hflip"] + outs["shift"]) / 2
    np.testing.assert_allclose(blend_tta(outs, 1.0, "probs", "single_label"), outs["plain"])
    np.testing.assert_allclose(blend_tta(outs, 0.0, "probs", "single_label"), views)
    half = blend_tta(outs, 0.5, "probs", "single_label")
    np.testing.assert_allclose(half, (outs["plain"] + views) / 2)
    assert outs["plain"][0, 0] > outs["plain"][0, 1] and outs["hflip"][0, 0] < outs["hflip"][0, 1]


def test_beta_auto_picks_what_scores_best_on_the_rows():
    targets = np.array([0, 1, 0, 1])
    good = np.eye(2)[targets] * 0.8 + 0.1
    bad = 1 - good
    assert choose_beta({"plain": good, "v": bad}, targets, "accuracy", "probs", "x") == 1.0
    assert choose_beta({"plain": bad, "v": good}, targets, "accuracy", "probs", "x") == 0.0


def test_logits_mean_is_the_softmax_of_mean_logits():
    z = np.random.default_rng(0).normal(size=(3, 5, 4))
    p = np.exp(z) / np.exp(z).sum(2, keepdims=True)
    want = np.exp(z.mean(0)) / np.exp(z.mean(0)).sum(1, keepdims=True)
    np.testing.assert_allclose(mean_probs(list(p), "logits", "single_label"), want, atol=1e-6)
    sig = 1 / (1 + np.exp(-z))
    want = 1 / (1 + np.exp(-z.mean(0)))
    np.testing.assert_allclose(mean_probs(list(sig), "logits", "multi_label"), want, atol=1e-6)


def test_shift_view_moves_without_wrapping():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    shifted = VIEWS["shift"](x)
    assert len(shifted) == 4
    assert shifted[0][0, 0, 0].tolist() == [0.0, 0.0, 1.0, 2.0]  # right by one, edge repeated


def test_multi_label_probabilities_are_per_class_sigmoids():
    torch.manual_seed(1)
    x, net = torch.rand(6, 3, 8, 8), FlipInvariant()
    probs = predict_views(net, loader(x), [], "multi_label")["plain"]
    torch.testing.assert_close(torch.from_numpy(probs), net(x).detach().sigmoid())
    single = predict_views(net, loader(x), [])["plain"]
    torch.testing.assert_close(torch.from_numpy(single).sum(1), torch.ones(6))


def test_each_view_weighs_the_same_however_many_batches_it_feeds():
    x = torch.zeros(2, 3, 8, 8)
    x[..., :4] = 1.0
    outs = predict_views(LeftHalf(), loader(x), ["identity", "shift"])
    shifted = np.mean([torch.softmax(LeftHalf()(b), 1).numpy() for b in VIEWS["shift"](x)], 0)
    np.testing.assert_allclose(outs["shift"], shifted, atol=1e-6)
    blended = blend_tta(outs, 0.0, "probs", "single_label")
    np.testing.assert_allclose(blended, (outs["identity"] + shifted) / 2, atol=1e-6)


@pytest.mark.parametrize("view", ALL_VIEWS)
def test_views_keep_the_batch_shape(view):
    x = torch.rand(3, 3, 10, 10)
    for b in VIEWS[view](x):
        assert b.shape == x.shape
