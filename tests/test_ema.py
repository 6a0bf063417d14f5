import pytest
import torch

from bladegpt.train.ema import WeightAverage


def model_at(value: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.fill_(value)
        layer.bias.fill_(value)
    return layer


def set_to(layer: torch.nn.Linear, value: float) -> None:
    with torch.no_grad():
        layer.weight.fill_(value)
        layer.bias.fill_(value)


def test_the_average_is_a_mean_until_its_horizon_then_exponential():
    layer = model_at(0.0)
    average = WeightAverage(layer, decay=0.5)  # horizon 2 steps
    expected = None
    for n, w in enumerate([4.0, 2.0, 6.0, 10.0]):
        set_to(layer, w)
        average.update()
        d = min(0.5, n / (n + 1))
        expected = w if expected is None else d * expected + (1 - d) * w
    # updates 0, 1: the mean (4, then 3); then 0.5 * 3 + 0.5 * 6 = 4.5, then 0.5 * 4.5 + 0.5 * 10 = 7.25
    assert expected == 7.25
    assert torch.equal(average.average["weight"], torch.full((2, 2), 7.25))


def test_applied_holds_the_average_and_gives_the_weights_back():
    layer = model_at(1.0)
    average = WeightAverage(layer, decay=0.9)
    average.update()
    set_to(layer, 3.0)
    average.update()  # mean of 1 and 3
    with average.applied():
        assert torch.equal(layer.weight, torch.full((2, 2), 2.0))
        assert layer(torch.ones(1, 2)).tolist() == [[6.0, 6.0]]
    assert torch.equal(layer.weight, torch.full((2, 2), 3.0))


def test_frozen_tensors_are_not_averaged_and_state_round_trips():
    layer = model_at(1.0)
    layer.bias.requires_grad_(False)
    average = WeightAverage(layer, decay=0.9)
    assert list(average.average) == ["weight"]
    average.update()
    state = average.state()
    assert not WeightAverage(model_at(0.0), decay=0.9).load(state)  # an average of other tensors
    target = model_at(5.0)
    target.bias.requires_grad_(False)
    other = WeightAverage(target, decay=0.9)
    assert not other.load({})  # a state without an average
    assert other.load(state) and other.updates == 1
    assert torch.equal(other.average["weight"], average.average["weight"])


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError):
        WeightAverage(model_at(0.0), decay=decay)


def test_what_the_weights_held_before_the_first_update_never_counts():
    """A fine-tune's model is allocated, not initialized, when its average is made (its weights are loaded next):
    memory that happens to hold NaN must not reach the average (a lerp by 1 from NaN stays NaN)."""
    layer = model_at(float("nan"))
    average = WeightAverage(layer, decay=0.9)
    set_to(layer, 3.0)
    average.update()
    assert torch.equal(average.average["weight"], torch.full((2, 2), 3.0))
