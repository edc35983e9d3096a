"""The conversation the agent holds with the model, in one documented format.

- System: the language's code prompt (`workers.llm.prompts`), then, when tools are on,
  the tools with their JSON schemas and the call format.
- User: the task, after the reference material from memory between <context> tags
  (or, for a chat request, the caller's own conversation, context before its last
  user message).
- A tool call and its result, as two more turns: the assistant's text so far ending in
  the call exactly as written (`<function>NAME</function>{json}`), then a user turn
  `<function_result name="NAME" call_id="ID">\\n{"result": …} or {"error": …}\\n
  </function_result>`. A plain user turn works with every chat template; a `tool`
  role does not.
- A repair round: the assistant's previous answer, then a user turn with the failure
  (status, exit code, the tail of stderr) asking for the corrected complete code.
"""

from __future__ import annotations

from typing import Any

from app.core.names import LANGUAGES
from workers.agent.engine import Messages
from workers.agent.markup import CLOSE_TAG, OPEN_TAG
from workers.llm.prompts import code_messages

TOOLS_INTRO = (
    "\n\nTools: to call one, write {open}NAME{close} then its arguments as one JSON "
    "object, outside code blocks, and stop; its <function_result> follows. A language "
    "is one of {languages}.\n{tools}"
)
FAILURE_TAIL_CHARS = 1500


def tools_section(descriptions: list[str]) -> str:
    if not descriptions:
        return ""
    return TOOLS_INTRO.format(
        open=OPEN_TAG,
        close=CLOSE_TAG,
        languages=", ".join(LANGUAGES),
        tools="\n".join(descriptions),
    )


def task_messages(task: str, language: str, *, context: str | None, tools: list[str]) -> Messages:
    """System + user turns for a code-generation task."""
    messages = code_messages(task, language, context)
    messages[0]["content"] += tools_section(tools)
    return messages


def chat_messages(
    conversation: list[dict[str, Any]], language: str, *, context: str | None, tools: list[str]
) -> Messages:
    """The caller's conversation (OpenAI-style), with our system prompt, tools and context."""
    caller_system = [m["content"] for m in conversation if m["role"] == "system"]
    system = (
        "\n\n".join(caller_system) if caller_system else code_messages("", language)[0]["content"]
    )
    messages: Messages = [{"role": "system", "content": system + tools_section(tools)}]
    for message in conversation:
        role, content = message["role"], str(message.get("content") or "")
        if role == "system":
            continue
        if role == "tool":
            call_id = message.get("tool_call_id", "")
            content = f'<function_result call_id="{call_id}">\n{content}\n</function_result>'
            role = "user"
        messages.append({"role": role, "content": content})
    if context and context.strip():
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is not None:
            with_context = code_messages(messages[last_user]["content"], language, context)
            messages[last_user] = {"role": "user", "content": with_context[1]["content"]}
    return messages


def with_tool_result(messages: Messages, text_before: str, markup: str, result: str) -> Messages:
    """The conversation after a tool call: the call as an assistant turn, its result."""
    return [
        *messages,
        {"role": "assistant", "content": text_before + markup},
        {"role": "user", "content": result},
    ]


def repair_request(messages: Messages, answer: str, execution: dict[str, Any] | None) -> Messages:
    """The conversation asking for a corrected version after the tests failed."""
    return [
        *messages,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": failure_report(execution)},
    ]


def failure_report(execution: dict[str, Any] | None) -> str:
    if not execution:
        return (
            "The code could not be tested (no runnable code was found). Reply with the "
            "complete code in one fenced code block."
        )
    status, exit_code = execution.get("status"), execution.get("exit_code")
    output = str(execution.get("stderr") or "") or str(execution.get("stdout") or "")
    tail = output[-FAILURE_TAIL_CHARS:].strip()
    shown = f"\nThe end of its output:\n```\n{tail}\n```" if tail else ""
    return (
        f"The code failed its tests (status: {status}, exit code: {exit_code}).{shown}\n"
        "Fix the code. Reply with the corrected complete code in one fenced code block."
    )
