"""One real model with a randomized δ-mem adapter, shared by the reliability tests of this process."""

from __future__ import annotations

import pytest

from tests.reliability._model import delta_model


@pytest.fixture(scope="session")
def delta_model_tok():
    return delta_model()
