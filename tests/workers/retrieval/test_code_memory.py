"""CodeMemory.context_window: knowledge, rated generations and project files in a budget."""

from __future__ import annotations

from app.core.feedback import record_feedback
from app.core.models import CodeHistory, KnowledgeItem
from app.core.project_files import put_project_file
from tests.workers.retrieval.helpers import add_generation, add_knowledge
from workers.retrieval.memory import CodeMemory, approx_tokens

UTILS = "def slugify(text):\n    return '-'.join(text.lower().split())\n"
LIKED = "import re\n\ndef slugify(title):\n    return re.sub(r'\\W+', '-', title.strip().lower())\n"


def _setup(sessions):
    snippet = add_knowledge(
        sessions, "python", "Slugify a title", "import re\nre.sub(r'[^a-z0-9]+', '-', s.lower())"
    )
    slug = "def slug(s):\n    return '-'.join(s.lower().split())"
    add_knowledge(sessions, "python", "Slug helper (global)", slug, workspace=None)
    add_knowledge(sessions, "javascript", "Slugify in JS", "s.toLowerCase().split(' ').join('-')")
    liked = add_generation(sessions, "slugify a blog post title", LIKED)
    disliked = add_generation(sessions, "slugify a title for urls", "def slugify(t): return t")
    with sessions.begin() as session:
        record_feedback(session=session, generation_id=liked, score=0.9)
        record_feedback(session=session, generation_id=disliked, score=0.1)
        put_project_file(session=session, project_id="blog", path="blog/utils.py", content=UTILS)
        put_project_file(session=session, project_id="blog", path="docs/deploy.md",
                         content="Deploy with docker compose up -d\n" * 40)  # fmt: skip
    return snippet, liked, disliked


def test_context_window_draws_from_all_three_sources(sessions, make_retriever):
    snippet, liked, disliked = _setup(sessions)
    memory = CodeMemory(make_retriever())
    window = memory.context_window(
        "add a slugify helper to utils.py", "python", "blog", token_budget=1200,
        workspace="default",
    )  # fmt: skip
    refs = {
        name: [i.ref for i in window.section(name)]
        for name in ("project_file", "knowledge", "generation")
    }
    assert refs["project_file"][0] == "blog/utils.py"  # named in the task, most relevant
    assert snippet in refs["knowledge"]
    assert refs["generation"] == [liked]  # the badly rated one is never shown
    assert window.tokens <= 1200
    assert all(item.section != "knowledge" or item.ref != disliked for item in window.items)
    text = window.render()
    assert "## Project files" in text and "Slugify a title" in text and UTILS.strip() in text

    with sessions() as session:  # what went into the prompt was counted as used
        assert session.get(KnowledgeItem, snippet).usage_count == 1
        assert session.get(CodeHistory, liked).usage_count == 1
        assert session.get(CodeHistory, disliked).usage_count == 0

    stranger = memory.context_window(  # another workspace: only the global snippet
        "add a slugify helper to utils.py", "python", "blog", workspace="elsewhere",
        record_usage=False,
    )  # fmt: skip
    assert [item.title for item in stranger.items] == ["Slug helper (global)"]


def test_context_window_respects_a_small_budget(sessions, make_retriever):
    _setup(sessions)
    memory = CodeMemory(make_retriever())
    for budget in (40, 120, 300):
        window = memory.context_window(
            "deploy the blog with docker", "python", "blog", token_budget=budget,
            record_usage=False,
        )  # fmt: skip
        assert window.items and window.tokens <= budget
        assert sum(approx_tokens(item.render()) for item in window.items) <= budget
    tight = memory.context_window(
        "deploy the blog with docker", "python", "blog", token_budget=80, record_usage=False
    )
    assert tight.items[0].ref == "docs/deploy.md" and tight.items[0].truncated


def test_context_window_without_project_or_matches_is_empty(sessions, make_retriever):
    add_knowledge(sessions, "java", "Read lines", "Files.readAllLines(path)")
    memory = CodeMemory(make_retriever())
    window = memory.context_window("sort a list", "python", None)
    assert window.items == [] and window.render() == ""


def test_near_duplicates_are_shown_once(sessions, make_retriever):
    first = add_generation(sessions, "slugify a blog post title", UTILS)
    again = add_generation(sessions, "make a url slug from a title", UTILS + "\n")
    memory = CodeMemory(make_retriever())
    window = memory.context_window("slugify a title", "python", None, record_usage=False)
    shown = [i.ref for i in window.section("generation")]
    assert len(shown) == 1 and shown[0] in (first, again)


def test_generations_whose_code_failed_are_not_shown(sessions, make_retriever):
    failed = add_generation(sessions, "slugify a blog post title", UTILS)
    with sessions.begin() as session:
        session.get(CodeHistory, failed).last_execution_status = "runtime_error"
    memory = CodeMemory(make_retriever())
    window = memory.context_window("slugify a title", "python", None, record_usage=False)
    assert failed not in [i.ref for i in window.items]
