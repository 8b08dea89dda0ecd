import pytest


@pytest.fixture(scope="session")
def novel(tmp_path_factory):
    """A plain-text 'novel' of numbered sentences (about 4,000 tokens), for haystacks and perplexity."""
    path = tmp_path_factory.mktemp("text") / "novel.txt"
    sentences = [f"Chapter {n}. The captain walked to the harbour and counted {n * 7} ships. " for n in range(200)]
    path.write_text("".join(sentences))
    return path
