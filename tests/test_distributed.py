"""Several processes: joining the group, agreement between ranks, signals; the data shards."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sagan_tutorial import distributed
from sagan_tutorial.data import ShuffledBatches
from sagan_tutorial.distributed import Processes, catch_signals, start_processes, weights_digest


@pytest.mark.parametrize(("device", "backend"), [("cpu", "gloo"), ("cuda", "nccl")])
def test_process_group_backend(monkeypatch, device, backend):
    started = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda backend: started.update(backend=backend)
    )
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed, "resolve_device", lambda name: torch.device(device))
    processes = start_processes(device)
    assert started["backend"] == backend
    assert (processes.rank, processes.world, processes.local_rank) == (1, 2, 1)
    assert not processes.main and processes.owned


@pytest.mark.parametrize(
    ("name", "value"),
    [("WORLD_SIZE", "abc"), ("WORLD_SIZE", "-2"), ("LOCAL_RANK", "x"), ("RANK", "2")],
)
def test_bad_launcher_variables_are_named(monkeypatch, name, value):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        start_processes("cpu")


def test_one_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert start_processes("cpu") == Processes()


def test_without_torchrun_several_processes_fail_in_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK"):
        start_processes("cpu")


def test_signals_become_a_request_to_stop():
    seen = []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    restore = catch_signals(seen.append)
    try:
        signal.raise_signal(signal.SIGTERM)
        assert seen == ["SIGTERM"]  # asked to stop after the step: no exception
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            signal.raise_signal(signal.SIGINT)
    finally:
        restore()
    assert seen == ["SIGTERM"]
    # put back as they were (the default handler, or SIG_IGN in a background job)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_weights_digest_sees_every_tensor():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_digest([a]) == weights_digest([b])
    with torch.no_grad():
        b.bias[0] += 1e-7
    assert weights_digest([a]) != weights_digest([b])


def test_shards_are_disjoint_and_cover_each_epoch():
    stand_in = SimpleNamespace(images=torch.arange(4000), labels=torch.zeros(4000))
    one = ShuffledBatches(stand_in, batch_size=8, seed=0)
    shards = [ShuffledBatches(stand_in, batch_size=8, seed=0, rank=r, world=2) for r in range(2)]
    assert one.per_epoch == 500 and [s.per_epoch for s in shards] == [250, 250]
    for epoch in (0, 1):
        orders = [s.order(epoch) for s in shards]
        assert not set(orders[0].tolist()) & set(orders[1].tolist())
        assert set(orders[0].tolist()) | set(orders[1].tolist()) == set(range(4000))
        for rank, order in enumerate(orders):
            assert torch.equal(order, one.order(epoch)[rank::2])
    assert not torch.equal(shards[0].order(1), shards[0].order(0))
    images, _ = shards[1].batch(0)  # a batch holds batch_size images per process
    assert torch.equal(images, one.order(0)[1::2][:8])
    with pytest.raises(ValueError, match="fewer than one batch of 8 per process"):
        ShuffledBatches(
            SimpleNamespace(images=torch.arange(10), labels=torch.zeros(10)), 8, 0, 0, 2
        )
