"""Window geometry and position bias (swinssl.models.windows): the log-CPB inverse against its forward formula."""

import random

import torch

from swinssl.models.windows import log_spaced_coordinates, trained_window


def test_trained_window_inverts_log_spaced_coordinates():
    rng = random.Random(0)
    for _ in range(200):
        dims = rng.choice((2, 3))
        window = tuple(rng.randint(2, 32) for _ in range(dims))
        trained = tuple(rng.randint(2, 32) for _ in range(dims))
        table = log_spaced_coordinates(window, trained, torch.device("cpu"))
        for axis in range(dims):
            assert trained_window(table[:, axis], window[axis]) == trained[axis], (window, trained, axis)


def test_trained_window_of_degenerate_tables():
    cpu = torch.device("cpu")
    assert trained_window(log_spaced_coordinates((1, 1), (8, 8), cpu)[:, 0], 1) == 1  # no offsets
    assert trained_window(log_spaced_coordinates((6, 6), (1, 1), cpu)[:, 0], 6) == 2  # P = 1 normalizes as P = 2
    assert trained_window(torch.zeros(11), 6) == 6  # an empty (all-zero) table names no other window
