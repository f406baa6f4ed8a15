"""Server aggregation: weighted and uniform means, computed by hand."""

import pytest
import torch

from fedbt.federated.aggregate import WeightedAverage, client_weight


def test_weighted_average_hand_computed():
    average = WeightedAverage()
    average.add({"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}, client_weight(10, "weighted"))
    average.add({"w": torch.tensor([4.0, 8.0]), "b": torch.tensor([3.0])}, client_weight(30, "weighted"))
    result = average.result()
    # (10*1 + 30*4) / 40 = 3.25, (10*2 + 30*8) / 40 = 6.5, (0 + 90) / 40 = 2.25
    assert torch.allclose(result["w"], torch.tensor([3.25, 6.5]))
    assert torch.allclose(result["b"], torch.tensor([2.25]))


def test_uniform_average_is_plain_mean():
    average = WeightedAverage()
    for value, n in ((1.0, 5), (2.0, 50), (6.0, 500)):
        average.add({"x": torch.tensor([value])}, client_weight(n, "uniform"))
    assert torch.allclose(average.result()["x"], torch.tensor([3.0]))


def test_partial_uploads_renormalise_per_tensor():
    average = WeightedAverage()
    average.add({"a": torch.tensor([2.0]), "b": torch.tensor([1.0])}, 1.0)
    average.add({"a": torch.tensor([4.0])}, 3.0)
    result = average.result()
    assert torch.allclose(result["a"], torch.tensor([3.5]))
    assert torch.allclose(result["b"], torch.tensor([1.0]))


def test_bad_weights_and_schemes():
    with pytest.raises(ValueError, match="must be > 0"):
        WeightedAverage().add({"a": torch.zeros(1)}, 0.0)
    with pytest.raises(ValueError, match="allowed: weighted, uniform"):
        client_weight(3, "median")
