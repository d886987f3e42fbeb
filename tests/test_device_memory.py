"""Chunks sized by a CUDA device's free memory (``torch.cuda.mem_get_info``), refused before an
allocation that cannot fit (issue 40). No GPU here: ``mem_get_info`` is replaced by a stand-in
that reports a chosen free size, and the arithmetic is checked by hand."""

from __future__ import annotations

import pytest
import torch

from xrl import limits

CUDA = torch.device("cuda:0")


@pytest.fixture
def free_gb(monkeypatch):
    """Set the free memory the stand-in ``mem_get_info`` reports, in GB."""
    monkeypatch.delenv("XRL_MAX_ALLOC_GB", raising=False)
    state = {"free": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], 80 * 2**30))

    def set_free(gb: float) -> None:
        state["free"] = int(gb * 2**30)

    return set_free


def test_the_bound_on_a_cuda_device_is_half_its_free_memory(free_gb):
    free_gb(10)
    assert limits.max_alloc(CUDA) == 5 * 2**30
    free_gb(1)
    assert limits.max_alloc(CUDA) == 2**29
    assert limits.device_free_memory(torch.device("cpu")) is None
    assert limits.max_alloc(torch.device("cpu")) == limits.max_alloc()  # the CPU's bound is unchanged


def test_xrl_max_alloc_gb_still_rules_on_a_cuda_device(free_gb, monkeypatch):
    free_gb(10)
    monkeypatch.setenv("XRL_MAX_ALLOC_GB", "2")
    assert limits.max_alloc(CUDA) == 2 * 2**30


def test_chunks_shrink_to_what_the_device_holds(free_gb):
    row = 84 * 84 * 4 * 4  # one Atari state, float32: 112,896 bytes
    free_gb(1)  # bound 512 MiB: 4,755 rows
    assert limits.rows_that_fit(row, CUDA, 10_000) == (2**29) // row == 4755
    assert limits.rows_that_fit(row, CUDA, 512) == 512  # a smaller chunk is left as asked
    assert limits.rows_that_fit(row, torch.device("cpu"), 10_000) == 10_000  # the CPU is chunked elsewhere
    free_gb(0)
    assert limits.rows_that_fit(row, CUDA, 512) == 1  # at least one row: check_memory refuses it


def test_an_allocation_that_cannot_fit_is_refused_before_it_is_tried(free_gb):
    free_gb(1)
    with pytest.raises(MemoryError) as err:
        limits.check_memory(3 * 2**30, "a batch of 100 perturbed states", "lower batch_size", CUDA)
    message = str(err.value)
    assert "3.0 GB on cuda:0" in message and "limit 0.5 GB" in message and "lower batch_size" in message
    limits.check_memory(2**28, "a batch", "lower batch_size", CUDA)  # 256 MiB fits
