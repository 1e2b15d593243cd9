"""TTA is a list of named views whose softmax outputs are averaged."""

import torch

from pipeline.stages.predict import VIEWS, predict_tta


class FlipInvariant(torch.nn.Module):
    """Logits from the mean colour of each channel: the same for any flipped or shifted image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class LeftHalf(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        return torch.stack([x[..., : w // 2].mean((1, 2, 3)), x[..., w // 2 :].mean((1, 2, 3))], 1)


def loader(x: torch.Tensor):
    return [(x[i : i + 4], torch.zeros(len(x[i : i + 4]))) for i in range(0, len(x), 4)]


def test_flip_invariant_model_same_with_and_without_tta():
    torch.manual_seed(0)
    x, net = torch.rand(10, 3, 8, 8), FlipInvariant()
    plain = predict_tta(net, loader(x), ["basic"])
    both = predict_tta(net, loader(x), ["basic", "hflip", "vflip"])
    assert plain.shape == (10, 4)
    torch.testing.assert_close(torch.from_numpy(both), torch.from_numpy(plain))


def test_views_change_what_a_sensitive_model_sees():
    x = torch.zeros(2, 3, 8, 8)
    x[..., :4] = 1.0  # bright left half
    plain = predict_tta(LeftHalf(), loader(x), ["basic"])
    mirrored = predict_tta(LeftHalf(), loader(x), ["hflip"])
    averaged = predict_tta(LeftHalf(), loader(x), ["basic", "hflip"])
    assert plain[0, 0] > plain[0, 1] and mirrored[0, 0] < mirrored[0, 1]
    torch.testing.assert_close(torch.from_numpy(averaged), torch.full((2, 2), 0.5))


def test_shift_view_moves_without_wrapping():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    shifted = VIEWS["shift"](x)
    assert len(shifted) == 4
    assert shifted[0][0, 0, 0].tolist() == [0.0, 0.0, 1.0, 2.0]  # right by one, edge repeated


def test_multi_label_probabilities_are_per_class_sigmoids():
    torch.manual_seed(1)
    x, net = torch.rand(6, 3, 8, 8), FlipInvariant()
    probs = predict_tta(net, loader(x), ["basic"], "multi_label")
    torch.testing.assert_close(torch.from_numpy(probs), net(x).detach().sigmoid())
    single = predict_tta(net, loader(x), ["basic"])
    torch.testing.assert_close(torch.from_numpy(single).sum(1), torch.ones(6))


def test_each_view_weighs_the_same_however_many_batches_it_feeds():
    x = torch.zeros(2, 3, 8, 8)
    x[..., :4] = 1.0  # bright left half: LeftHalf gives [1, 0] as logits on the plain view
    plain = predict_tta(LeftHalf(), loader(x), ["basic"])
    shifted = predict_tta(LeftHalf(), loader(x), ["shift"])
    both = predict_tta(LeftHalf(), loader(x), ["basic", "shift"])
    torch.testing.assert_close(torch.from_numpy(both), torch.from_numpy((plain + shifted) / 2))
