import hashlib
import json
import re
from collections import Counter

import pytest

from longreach.data import DEFAULT_TEXT
from longreach.eval.haystack import insert_needles, noise_haystack, text_haystack
from longreach.eval.natural import WORDINGS, NaturalNeedleTask
from longreach.eval.niah import NEEDLE, tokenizer_words
from longreach.eval.passkey import passkey_key, passkey_prompt
from longreach.eval.ruler import RULER_TASKS
from longreach.eval.task import Sample, Task, string_match_all
from longreach.eval.tasks import build_tasks, known_task_names, prompt_version

LENGTHS = [512, 1500, 4096]
DEPTHS = (0.1, 0.5, 0.9)
TASK_NAMES = ["passkey", "niah", "niah-text", "niah-natural", *(f"ruler:{name}" for name in RULER_TASKS)]
BOOK = (
    "It was a bright cold day in April, and the clocks were striking thirteen. "
    "Winston slipped quickly through the glass doors of Victory Mansions. "
    "The hallway smelt of boiled cabbage and old rag mats! Was it worth the climb? "
    "Outside, even through the shut window-pane, the world looked cold.\n\n"
)


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "book.txt"
    path.write_text(BOOK * 3)  # about 250 tokens: longer prompts cycle it
    return path


@pytest.fixture(scope="module")
def tasks(book):
    return {
        task.name: task
        for task in build_tasks(["passkey", "niah", "niah-text", "niah-natural", "ruler"], texts=[book], depths=DEPTHS)
    }


def first_needle(task: str, sample: Sample) -> str:
    """The text of the needle whose depth the sample records."""
    if task == "passkey":
        return f"The pass key is {sample.expected[0]}. Remember it."
    if task == "ruler:vt":
        return "VAR "
    if task == "niah-natural":
        return WORDINGS[(DEPTHS.index(sample.depth) + sample.index) % len(WORDINGS)].needle.split("{")[0]
    return "One of the special magic"


def haystack_span(text: str) -> tuple[int, int]:
    """Where the haystack lies in a decoded prompt: after the first line, before the question."""
    question = text.rfind(", according to the text?")  # niah-natural's questions end so
    end = text.rfind("\n", 0, question) if question >= 0 else max(text.rfind("\nWhat "), text.rfind("\nQuestion:"))
    return text.index("\n") + 1, end


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", TASK_NAMES)
def test_prompts_have_the_exact_length_and_the_answer(tasks, smollm_tokenizer, name, length):
    task = tasks[name]
    assert isinstance(task, Task) and task.name == name
    samples = task.samples(smollm_tokenizer, length, 2, seed=0)
    depth_grid = name in ("passkey", "niah", "niah-text", "niah-natural")
    assert len(samples) == (len(DEPTHS) * 2 if depth_grid else 2)
    for sample in samples:
        assert sample.task == name and sample.length == length and len(sample.prompt_ids) == length
        assert sample.max_new_tokens > 0 and sample.expected
        text = smollm_tokenizer.decode(sample.prompt_ids)
        for expected in sample.expected:
            assert expected in text, (name, expected)
        if name in ("ruler:cwe", "ruler:fwe"):
            assert sample.depth is None
            continue
        # The (first) needle starts near the recorded depth of the haystack.
        start, end = haystack_span(text)
        needle = first_needle(name, sample)
        where = (text.index(needle, start) - start) / (end - start)
        assert abs(where - sample.depth) < 0.05 + 150 / length, (name, where, sample.depth)
    if depth_grid:
        assert [s.depth for s in samples] == [d for d in DEPTHS for _ in range(2)]
        assert [s.index for s in samples] == [0, 1] * len(DEPTHS)


def test_needles_follow_ruler_wording(tasks, smollm_tokenizer):
    sample = tasks["niah"].samples(smollm_tokenizer, 1024, 1, seed=3)[0]
    text = smollm_tokenizer.decode(sample.prompt_ids)
    key = re.search(r"for (\w+) is: " + sample.expected[0], text).group(1)
    assert NEEDLE.format(kind="number", key=key, value=sample.expected[0]) in text
    assert text.startswith("A special magic number is hidden within the following text.")
    assert text.endswith(
        f"What is the special magic number for {key} mentioned in the provided text? "
        f"The special magic number for {key} mentioned in the provided text is"
    )
    assert re.fullmatch(r"\d{7}", sample.expected[0])
    # Needles start after a sentence end.
    assert text[text.index(" One of") - 1] == "."

    uuid = tasks["ruler:niah_single_uuid"].samples(smollm_tokenizer, 1024, 1, seed=0)[0]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid.expected[0])


def test_multi_needle_tasks(tasks, smollm_tokenizer):
    decode = smollm_tokenizer.decode
    multikey = decode(tasks["ruler:niah_multikey"].samples(smollm_tokenizer, 2048, 1, seed=0)[0].prompt_ids)
    assert multikey.count("One of the special magic numbers for") == 4  # 1 asked for, 3 distractors

    multivalue = tasks["ruler:niah_multivalue"].samples(smollm_tokenizer, 2048, 1, seed=0)[0]
    text = decode(multivalue.prompt_ids)
    keys = {re.search(rf"for (\w+) is: {value}\.", text).group(1) for value in multivalue.expected}
    assert len(multivalue.expected) == 4 and len(keys) == 1  # one key, four values
    assert text.rstrip().endswith(f"The special magic numbers for {keys.pop()} mentioned in the provided text are")

    multiquery = tasks["ruler:niah_multiquery"].samples(smollm_tokenizer, 2048, 1, seed=0)[0]
    text = decode(multiquery.prompt_ids)
    keys = [re.search(rf"for (\w+) is: {value}\.", text).group(1) for value in multiquery.expected]
    assert len(set(keys)) == 4 and f"for {keys[0]}, {keys[1]}, {keys[2]}, and {keys[3]} mentioned" in text


def test_variable_tracking_chain_is_in_order(tasks, smollm_tokenizer):
    sample = tasks["ruler:vt"].samples(smollm_tokenizer, 4096, 1, seed=0)[0]
    text = smollm_tokenizer.decode(sample.prompt_ids)
    names = sample.expected
    assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    value = re.search(rf"VAR {names[0]} = (\d{{5}})\.", text).group(1)
    links = [text.index(f"VAR {names[0]} = {value}.")]
    links += [text.index(f"VAR {b} = VAR {a}.") for a, b in zip(names, names[1:], strict=False)]
    assert links == sorted(links)
    assert f"Find all variables that are assigned the value {value} in the text above." in text
    assert text.endswith(f"5 variables are assigned the value {value}, they are:")


@pytest.mark.parametrize("length, often, rarely", [(2048, 6, 1), (4096, 30, 3)])
def test_common_words_counts(tasks, smollm_tokenizer, length, often, rarely):
    sample = tasks["ruler:cwe"].samples(smollm_tokenizer, length, 1, seed=0)[0]
    text = smollm_tokenizer.decode(sample.prompt_ids)
    entries = re.findall(r"(\d+)\. (\w+)", text)
    assert [int(n) for n, _ in entries] == list(range(1, len(entries) + 1))
    counts = Counter(word for _, word in entries)
    assert len(sample.expected) == 10 and all(counts[w] == often for w in sample.expected)
    assert all(c == rarely for w, c in counts.items() if w not in sample.expected)
    assert len(counts) > 20
    # The list fills the length: what is left before the question is a few newlines.
    assert re.search(r"\w\n{1,40}Question: What are the 10 most common words", text)


def test_frequent_words_counts(tasks, smollm_tokenizer):
    sample = tasks["ruler:fwe"].samples(smollm_tokenizer, 4096, 1, seed=0)[0]
    text = smollm_tokenizer.decode(sample.prompt_ids)
    coded = text.split("coded words.", 1)[1].split("\nQuestion:")[0].split()
    ranked = [w for w, _ in Counter(coded).most_common()]
    assert ranked[0] == "..." and tuple(ranked[1:4]) == sample.expected
    counts = Counter(coded)
    assert counts[ranked[3]] > counts[ranked[4]]
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[1:])


def test_passkey_task_matches_the_passkey_command(tasks, smollm_tokenizer):
    samples = tasks["passkey"].samples(smollm_tokenizer, 1024, 2, seed=7)
    for sample in samples:
        key = passkey_key(7, 1024, sample.depth, sample.index)
        assert sample.expected == (key,) and sample.max_new_tokens == 8
        assert sample.prompt_ids == passkey_prompt(smollm_tokenizer, 1024, sample.depth, key)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_scores(tasks, smollm_tokenizer, name):
    task = tasks[name]
    sample = task.samples(smollm_tokenizer, 1024, 1, seed=0)[0]
    assert task.score(sample, " " + ", ".join(sample.expected) + ".") == 1.0
    assert task.score(sample, " " + ", ".join(e.upper() for e in sample.expected)) == 1.0
    assert task.score(sample, "I do not know.") == 0.0
    if len(sample.expected) > 1:
        assert task.score(sample, sample.expected[0]) == pytest.approx(1 / len(sample.expected))


def test_string_match_all():
    assert string_match_all("a 123 b 456", ["123", "456"]) == 1.0
    assert string_match_all("a 123 b", ["123", "456"]) == 0.5
    assert string_match_all("ABCDE", ["abcde"]) == 1.0
    assert string_match_all("", ["x"]) == 0.0
    with pytest.raises(ValueError):
        string_match_all("x", [])


# The list tasks pad with a few newline tokens between the list and the question, which their
# text would merge into fewer tokens.
@pytest.mark.parametrize("length", [512, 4096])
@pytest.mark.parametrize("name", [n for n in TASK_NAMES if n not in ("ruler:cwe", "ruler:fwe")])
def test_prompts_are_what_their_text_tokenizes_to(tasks, smollm_tokenizer, name, length):
    # What a model reads from the prompt's own text (a user's file) is what it was measured on.
    for sample in tasks[name].samples(smollm_tokenizer, length, 1, seed=0):
        text = smollm_tokenizer.decode(sample.prompt_ids)
        assert smollm_tokenizer(text).input_ids == sample.prompt_ids, (name, sample.depth)


# Each task's prompt at 1,024 tokens, seed 0, as (prompt version, sha256 of its token ids). A
# change to a task's prompts fails here: bump the task's PROMPT_VERSIONS entry, so that cells
# asked with the older prompts are asked again rather than reused or reported, and pin the new
# fingerprint.
PROMPT_FINGERPRINTS = {
    "passkey": (2, "4b281e522e12"),
    "niah": (1, "23d6cbe6e1da"),
    "niah-text": (2, "7fd9d5af584d"),
    "niah-natural": (1, "f2ae0bf2e7f0"),
    "ruler:niah_single_1": (1, "50b779c979f4"),
    "ruler:niah_single_uuid": (1, "769c537f1487"),
    "ruler:niah_multikey": (1, "385e2aef08c5"),
    "ruler:niah_multivalue": (1, "f31fbe5b348d"),
    "ruler:niah_multiquery": (1, "eaeadba2dc39"),
    "ruler:vt": (1, "ae9cf9b1c4ab"),
    "ruler:cwe": (1, "be8eb7412874"),
    "ruler:fwe": (1, "3c85f254b420"),
}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_a_change_of_prompts_comes_with_a_new_prompt_version(tasks, smollm_tokenizer, name):
    ids = tasks[name].samples(smollm_tokenizer, 1024, 1, seed=0)[0].prompt_ids
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12]
    assert (prompt_version(name), digest) == PROMPT_FINGERPRINTS[name]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_samples_are_deterministic_and_vary(tasks, smollm_tokenizer, name):
    task = tasks[name]
    first = task.samples(smollm_tokenizer, 1024, 2, seed=0)
    assert task.samples(smollm_tokenizer, 1024, 2, seed=0) == first
    other = task.samples(smollm_tokenizer, 1024, 2, seed=1)
    assert all(a.expected != b.expected for a, b in zip(first, other, strict=True))
    assert first[0].expected != first[1].expected  # different indices, different needles


def test_words_come_from_the_tokenizer(smollm_tokenizer):
    words = tokenizer_words(smollm_tokenizer)
    assert len(words) >= 200 and list(words) == sorted(words)
    assert all(re.fullmatch(r"[a-z]{4,9}", w) for w in words)
    assert "green" not in words and "number" not in words  # the prompts' own words are never keys
    pieces = smollm_tokenizer([" " + w for w in words[:50]], add_special_tokens=False).input_ids
    assert all(len(p) == 1 for p in pieces)


def test_insert_needles_at_sentence_ends_in_depth_order(smollm_tokenizer):
    tok = smollm_tokenizer
    hay = noise_haystack(tok, 300)
    a = tok(" Alpha is 1.", add_special_tokens=False).input_ids
    b = tok(" Beta is 2.", add_special_tokens=False).input_ids
    ids = insert_needles(tok, hay, [a, b], [0.7, 0.2])
    assert len(ids) == 300 + len(a) + len(b)
    text = tok.decode(ids)
    assert text.index("Beta") < text.index("Alpha")
    assert text[text.index(" Beta") - 1] == "." and text[text.index(" Alpha") - 1] == "."
    assert abs(text.index(" Beta") / len(text) - 0.2) < 0.1
    with pytest.raises(ValueError, match="depth"):
        insert_needles(tok, hay, [a], [1.5])


def test_text_haystack_cycles_a_short_text(book, smollm_tokenizer):
    ids = text_haystack(smollm_tokenizer, [book], 2000)
    assert len(ids) == 2000
    assert smollm_tokenizer.decode(ids).count("It was a bright cold day") > 3


def test_build_tasks_names_and_errors(book, tmp_path):
    assert [t.name for t in build_tasks(["ruler"])] == [f"ruler:{n}" for n in RULER_TASKS]
    assert [t.name for t in build_tasks(["ruler:vt", "ruler", "passkey"])][:2] == ["ruler:vt", "ruler:niah_single_1"]
    assert len(build_tasks(["ruler:vt", "ruler"])) == len(RULER_TASKS)
    assert known_task_names()[:5] == ["passkey", "niah", "niah-text", "niah-natural", "ruler"]
    assert build_tasks(["niah"], depths=[0.25])[0].depths == (0.25,)
    with pytest.raises(
        ValueError, match="unknown task 'needle'; known tasks: passkey, niah, niah-text, niah-natural, ruler"
    ):
        build_tasks(["needle"])
    with pytest.raises(ValueError, match="unknown RULER task 'ruler:qa'; known: ruler:niah_single_1"):
        build_tasks(["ruler:qa"])
    assert build_tasks(["niah-text"])[0].texts == (DEFAULT_TEXT,)  # the novel LongReach ships
    assert build_tasks(["niah-natural"], texts=[book])[0].texts == (book,)
    missing = tmp_path / "missing.txt"
    with pytest.raises(ValueError, match=f"text file {re.escape(str(missing))} does not exist"):
        build_tasks(["niah-text"], texts=[missing])
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match=f"text file {re.escape(str(empty))} is empty"):
        build_tasks(["niah-text"], texts=[book, empty])
    with pytest.raises(ValueError, match="depths must be within"):
        build_tasks(["niah"], depths=[1.2])
    with pytest.raises(ValueError, match="no task given"):
        build_tasks([])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_too_short_lengths_name_the_minimum(tasks, smollm_tokenizer, name):
    task = tasks[name]
    with pytest.raises(ValueError, match="at least") as error:
        task.samples(smollm_tokenizer, 40, 1, seed=0)
    minimum = int(re.search(r"at least (\d+) tokens", str(error.value)).group(1))
    assert minimum > 40
    # The minimum is that of the failing sample; others differ by a few tokens (key lengths).
    assert all(len(s.prompt_ids) == minimum + 16 for s in task.samples(smollm_tokenizer, minimum + 16, 1, seed=0))
    with pytest.raises(ValueError, match="samples must be >= 1"):
        task.samples(smollm_tokenizer, 4096, 0, seed=0)


def test_sample_length_must_match_its_prompt():
    with pytest.raises(ValueError, match="3 prompt tokens, not 4"):
        Sample("niah", 4, 0.5, 0, [1, 2, 3], ("1",), 8)


def test_natural_needles_cycle_their_wordings_in_the_given_text(book, smollm_tokenizer):
    """Five samples at a depth ask each wording once; the haystack is the book, the needle's
    number is the answer and the question does not contain it."""
    task = NaturalNeedleTask(depths=(0.5,), texts=(book,))
    assert task.variant == "book.txt"
    samples = task.samples(smollm_tokenizer, 800, len(WORDINGS), seed=0)
    for sample, wording in zip(samples, WORDINGS, strict=True):
        text = smollm_tokenizer.decode(sample.prompt_ids)
        assert "Winston slipped quickly" in text and wording.needle.split("{")[0] in text
        question = text[haystack_span(text)[1] :]
        assert sample.expected[0] in text and sample.expected[0] not in question
        assert task.score(sample, f" {sample.expected[0]}.") == 1.0 and task.score(sample, " 12.") == 0.0
    assert NaturalNeedleTask().texts == (DEFAULT_TEXT,)  # the shipped novel unless told otherwise


def test_natural_needles_take_several_texts_in_turn(book, tmp_path, smollm_tokenizer):
    """With two texts, the prompts of a cell alternate between them, each one text only."""
    other = tmp_path / "other.txt"
    other.write_text("The lighthouse keeper counted the gulls on the rocks every morning. " * 200)
    task = NaturalNeedleTask(depths=(0.3, 0.7), texts=(book, other))
    samples = task.samples(smollm_tokenizer, 600, 2, seed=0)  # depth 0.3 twice, then 0.7 twice
    assert [s.haystack for s in samples] == ["book.txt", "book.txt", "other.txt", "other.txt"]
    # A sample keeps its text (and prompt) when more samples are asked.
    one = task.samples(smollm_tokenizer, 600, 1, seed=0)
    assert [s.prompt_ids for s in one] == [samples[0].prompt_ids, samples[2].prompt_ids]
    texts = [smollm_tokenizer.decode(s.prompt_ids) for s in samples]
    in_book = ["Winston slipped quickly" in text for text in texts]
    in_other = ["lighthouse keeper" in text for text in texts]
    assert in_book == [True, True, False, False] and in_other == [False, False, True, True]
