"""Runtimes behind one `Runner` interface; see `base`."""

from karst_deploy.backends.base import RUNNERS, Runner, register_runner, runner_class

__all__ = ["RUNNERS", "Runner", "register_runner", "runner_class"]
