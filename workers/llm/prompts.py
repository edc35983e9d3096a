"""Chat messages for a code-generation request.

The system prompt asks for exactly one fenced block tagged with the fence that
`codeblocks.extract_code` prefers, so extraction works even for weak models that
chatter around the code. Retrieved snippets go into the user turn between explicit
<context> tags, marked as reference material, so the model does not answer them.
"""

from __future__ import annotations

from workers.llm.languages import language_profile

SYSTEM_TEMPLATE = (
    "You are an expert {description} programmer. Write complete, working code for the "
    "user's task. Reply with exactly one fenced code block that starts with ```{fence} "
    "and nothing outside it; put any explanation in brief code comments.{hint}"
)


def code_messages(task: str, language: str, context: str | None = None) -> list[dict[str, str]]:
    """System + user messages asking for `task` in `language`, with optional `context`."""
    profile = language_profile(language)
    system = SYSTEM_TEMPLATE.format(
        description=profile.description,
        fence=profile.fence,
        hint=f" {profile.hint}" if profile.hint else "",
    )
    user = task.strip()
    if context and context.strip():
        user = (
            "Reference code that may help (snippets from the knowledge base and the "
            "project; reuse what fits, ignore the rest):\n"
            f"<context>\n{context.strip()}\n</context>\n\n"
            f"Task: {user}"
        )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
