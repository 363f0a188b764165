"""Fixtures of the sdu_ext suite.

`rng` draws a fresh seed from os.urandom for every test (or takes SDU_TEST_SEED to
reproduce a failure); the seed is in every comparison message and is printed in a
"random seed" section of any failing test's report.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sdu_ext  # noqa: E402,F401  (registers torch.ops.sdu)
from sdu_testing import Rng, torch_threads  # noqa: E402


def _fresh_seed():
    env = os.environ.get("SDU_TEST_SEED")
    if env:
        return int(env)
    return int.from_bytes(os.urandom(4), "little")


@pytest.fixture
def rng(request):
    seed = _fresh_seed()
    request.node.user_properties.append(("seed", seed))
    return Rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for key, value in item.user_properties:
            if key == "seed":
                report.sections.append(
                    ("random seed", f"seed={value}; reproduce with SDU_TEST_SEED={value}")
                )


@pytest.fixture
def one_thread():
    """One torch thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    small problems run faster than on two threads of a shared machine, and their reductions
    are reproducible."""
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def _no_grad_leak():
    """Every test starts with grad mode on and the default dtype untouched."""
    assert torch.is_grad_enabled()
    assert torch.get_default_dtype() == torch.float32
    yield
