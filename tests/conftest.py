"""Shared test set-up: one torch thread.

Tests run tiny models, for which thread start-up dominates; with another process busy on the
same cores (a training run, CI neighbours) two threads made small forward passes ~65× slower.
"""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
