"""Tests of the vLLM plugin: they run in the environment that has vLLM (``.venv-vllm``, made by
``make test``), each engine in its own process, against LongReach's transformers path on the same
weights. Elsewhere the root conftest leaves this folder out."""

from pathlib import Path

import pytest
from vllm_engines import save_tiny, save_tiny_gpt2


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes, not seconds (still part of `make test`)")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("llama"), "Llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("qwen2"), "Qwen2")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))
