"""Fixtures of the sdu_ext suite.

`rng` draws a fresh seed from os.urandom for every test (or takes SDU_TEST_SEED to
reproduce a failure); the seed is in every comparison message and is printed in a
"random seed" section of any failing test's report.
"""
import os
import shutil
import sys
import tempfile

# torch.compile's caches go to a folder of this test run (unless the caller chose one): a run killed
# while inductor wrote a kernel leaves a truncated .so in the shared default cache, which the next
# run would load ("file too short"); the compiled tests stay hermetic.
_OWN_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _OWN_INDUCTOR_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="sdu_inductor_")


def pytest_sessionfinish(session, exitstatus):
    if _OWN_INDUCTOR_CACHE is not None:
        shutil.rmtree(_OWN_INDUCTOR_CACHE, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

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
