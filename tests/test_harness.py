"""The lm-eval model type ``longreach``: found by name, runs local tasks, vanilla is plain HFLM exactly."""

import functools
import glob
import json
import os
import runpy
import sys
from pathlib import Path

# Offline: the tasks read local JSON files and the model is a local folder. Set before datasets loads.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
from conftest import tiny_model  # noqa: E402

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from longreach import harness  # noqa: E402
from longreach.harness import LongReachLM  # noqa: E402
from longreach.methods import InputTooLongError, MethodSpecError  # noqa: E402

QUESTIONS = [
    ("The sky is", [" blue", " green", " loud"], 0),
    ("Two plus two is", [" four", " five"], 0),
    ("Cats like to", [" sleep", " fly", " swim"], 0),
    ("Water is", [" wet", " dry"], 0),
]
TASKS = {
    "tiny_mc": "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: choices\n"
    "doc_to_target: answer\nmetric_list:\n  - metric: acc\n",
    "tiny_gen": "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{choices[0]}}'\n"
    "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 3\n  do_sample: false\n"
    "metric_list:\n  - metric: exact_match\n",
}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer):
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer), max_position_embeddings=256)
    model.save_pretrained(folder)
    smollm_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    for name, body in TASKS.items():
        header = (
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {folder / 'cache'}\ntest_split: test\n"
        )
        (folder / f"{name}.yaml").write_text(header + body)
    return folder


@pytest.fixture(scope="module")
def task_manager(task_dir):
    return TaskManager(include_path=str(task_dir), include_defaults=False)  # indexing lm-eval's own tasks takes 30 s


def evaluate(model, model_args, task_manager, tasks=("tiny_mc", "tiny_gen")):
    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=list(tasks),
        task_manager=task_manager,
        log_samples=True,
        device="cpu",
        batch_size=2,
    )


def responses(results, task):
    return [s["filtered_resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def loglikelihoods(results):
    return [float(loglik) for resps in responses(results, "tiny_mc") for loglik, _ in resps]


def test_registered_by_name():
    assert get_model("longreach") is LongReachLM
    assert issubclass(LongReachLM, HFLM)


def test_vanilla_is_plain_hflm_exactly_and_a_window_past_the_input_is_vanilla(tiny_model_dir, task_manager):
    vanilla = evaluate("longreach", {"pretrained": str(tiny_model_dir), "method": "vanilla"}, task_manager)
    plain = evaluate(
        HFLM(pretrained=str(tiny_model_dir), device="cpu", dtype="float32", batch_size=2), None, task_manager
    )
    assert "acc,none" in vanilla["results"]["tiny_mc"] and "exact_match,none" in vanilla["results"]["tiny_gen"]
    assert loglikelihoods(vanilla) == loglikelihoods(plain)
    assert responses(vanilla, "tiny_gen") == responses(plain, "tiny_gen")
    assert vanilla["config"]["longreach_method"] == "vanilla"
    assert vanilla["config"]["longreach_max_length"] == 256  # the trained length

    # The string form goes through lm-eval's own comma split: settings are separated by ';'.
    extended = evaluate(
        "longreach", f"pretrained={tiny_model_dir},method=self-extend:group_size=2;window=64", task_manager
    )
    assert extended["config"]["longreach_method"] == "self-extend:group_size=2,window=64"
    assert extended["config"]["longreach_max_length"] == 2 * (256 - 64 + 32)  # what the settings cover
    assert "exact_match,none" in extended["results"]["tiny_gen"]
    # Every input is shorter than the window, where SelfExtend is plain attention.
    assert loglikelihoods(extended) == pytest.approx(loglikelihoods(vanilla), rel=1e-5, abs=1e-5)


def test_command_line_takes_a_quoted_spec(tiny_model_dir, task_dir, tmp_path, monkeypatch):
    model_args = f'pretrained={tiny_model_dir},method="self-extend:group_size=2,window=64",max_length=300'
    # No --device: lm-eval then asks for cuda:0, which falls back to the CPU on a machine without CUDA.
    argv = f"--model longreach --tasks tiny_mc --include_path {task_dir} --output_path {tmp_path}".split()
    argv += ["--model_args", model_args]
    monkeypatch.setattr(sys, "argv", ["longreach.harness", *argv])
    # Only the speed of the task index changes: the command line has no flag to skip lm-eval's own tasks.
    monkeypatch.setattr(TaskManager, "__init__", functools.partialmethod(TaskManager.__init__, include_defaults=False))
    runpy.run_path(harness.__file__, run_name="__main__")  # what `python -m longreach.harness` runs
    [written] = glob.glob(str(tmp_path / "**" / "results_*.json"), recursive=True)
    results = json.loads(Path(written).read_text())
    assert "acc,none" in results["results"]["tiny_mc"]
    assert results["config"]["longreach_method"] == "self-extend:group_size=2,window=64"
    assert results["config"]["longreach_max_length"] == 300


@pytest.mark.parametrize(
    "args, error, message",
    [
        ({"method": "bogus"}, MethodSpecError, "unknown method 'bogus'"),
        ({"method": "self-extend:group_size=2", "window": 64}, MethodSpecError, "group_size=2;window=64"),
        (
            {"method": "self-extend:group_size=2;window=200", "max_length": 1000},
            InputTooLongError,
            "longer than SelfExtend(group_size=2, window=200) covers",
        ),
        ({"method": "dual-chunk:chunk_size=512;local_window=16"}, ValueError, "chunk_size=512"),
        ({"max_length": "lots"}, ValueError, "bad length 'lots'"),
        ({"method": "self-extend:auto", "batchsize": 4}, MethodSpecError, "unknown model_args batchsize"),
    ],
)
def test_bad_model_args_are_clear_errors(tiny_model_dir, args, error, message):
    with pytest.raises(error) as raised:
        LongReachLM(pretrained=str(tiny_model_dir), **args)
    assert message in str(raised.value)
