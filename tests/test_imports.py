"""The layers import one way: what only needs a model's facts or a method's reach does not load
the attention code, and ``import longreach`` loads nothing heavy until a name is used."""

import subprocess
import sys

import pytest


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import longreach", {"torch", "transformers"}),
        ("from longreach.models.config import trained_length, sliding_window", {"torch", "transformers"}),
        (
            "from longreach.methods import check_length, method_for, parse_method",
            {"transformers", "longreach.engine", "longreach.integrations"},
        ),
        ("from longreach.methods.recommend import recommend", {"transformers", "longreach.integrations"}),
        ("from longreach.models.info import model_info", {"longreach.integrations"}),
    ],
)
def test_light_imports_stay_light(statement, absent):
    assert not absent & loaded_after(statement)


def test_public_names_load_on_first_use():
    loaded = loaded_after("import longreach; longreach.SelfExtend; longreach.extend")
    assert {"longreach.methods", "longreach.integrations.transformers.attention"} <= loaded
