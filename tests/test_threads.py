"""The CPU thread policy: free cores by default, --threads and KARST_DEPLOY_THREADS win."""

from __future__ import annotations

import inspect
import os

import pytest
import torch

from karst_deploy.errors import InputError, with_flags
from karst_deploy.threads import available_cores, choose_threads, compute_threads


@pytest.mark.parametrize(
    ("cores", "load", "threads"),
    [(2, 0.0, 2), (2, 0.9, 1), (2, 15.6, 1), (16, 3.2, 13), (8, 0.4, 8)],
)
def test_the_default_is_the_cores_the_load_leaves_free(monkeypatch, cores, load, threads):
    monkeypatch.delenv("KARST_DEPLOY_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    choice = choose_threads()
    assert (choice.threads, choice.cores) == (threads, cores)
    assert f"load average {load:.1f}" in choice.reason


def test_the_affinity_not_the_machine_bounds_the_default(monkeypatch):
    monkeypatch.delenv("KARST_DEPLOY_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # taskset -c 3
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert available_cores() == 1 and choose_threads().threads == 1


def test_an_explicit_count_wins_and_is_checked(monkeypatch):
    monkeypatch.setenv("KARST_DEPLOY_THREADS", "3")
    assert choose_threads().threads == 3
    assert choose_threads(5).threads == 5  # --threads over the environment
    monkeypatch.setenv("KARST_DEPLOY_THREADS", "many")
    with pytest.raises(InputError, match="KARST_DEPLOY_THREADS"):
        choose_threads()
    with pytest.raises(InputError, match=r"^threads is 0") as refused:
        choose_threads(0)
    assert with_flags(refused.value).startswith("--threads is 0")


def test_compute_threads_sets_and_restores_torch():
    before = torch.get_num_threads()
    with compute_threads(1) as choice:
        assert choice.threads == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


COMPUTE_COMMANDS = (
    "train",
    "sensitivity",
    "export",
    "merge",
    "verify-parity",
    "bench",
    "convert-precision",
    "demo",
)


@pytest.mark.parametrize("name", COMPUTE_COMMANDS)
def test_every_compute_command_takes_threads(name):
    from karst_deploy.cli import app

    command = next(c for c in app.registered_commands if c.name == name)
    assert "threads" in inspect.signature(command.callback).parameters
