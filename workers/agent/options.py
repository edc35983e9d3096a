"""What a generation request asks the agent for, with every default filled in.

The API validates requests (`app/api/schemas.py`); this module only reads a stored
job request (which may come from an older API, or the OpenAI surface) and applies the
server's defaults, so the agent has one place to look.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.config import Settings
from workers.llm import SamplingParams
from workers.tuning.generation import sampling_for

MAX_TOOL_CALLS_CAP = 16
MAX_REPAIR_ROUNDS_CAP = 5


@dataclass(frozen=True)
class AgentOptions:
    task: str
    language: str
    project_id: str | None
    conversation: list[dict[str, Any]] | None  # an OpenAI-style chat, when given
    use_memory: bool
    use_tools: bool
    reuse: bool
    tests: str | None
    max_repair_rounds: int
    max_tool_calls: int
    context_budget_tokens: int
    stop: list[str]
    client_tools: list[dict[str, Any]]
    sampling: SamplingParams
    param_sources: dict[str, str]
    tuning_tag: dict[str, Any] | None

    @classmethod
    def from_request(cls, request: dict[str, Any], settings: Settings) -> AgentOptions:
        tests = request.get("tests") or None
        rounds = request.get("max_repair_rounds")
        if rounds is None:
            rounds = settings.agent_max_repair_rounds if tests else 0
        calls = request.get("max_tool_calls")
        if calls is None:
            calls = settings.agent_max_tool_calls
        budget = request.get("context_budget_tokens")
        if budget is None:
            budget = settings.context_budget_tokens
        sampling, sources, tag = _sampling(request, settings)
        return cls(
            task=str(request["task"]),
            language=str(request.get("language") or "python"),
            project_id=request.get("project_id"),
            conversation=request.get("messages") or None,
            use_memory=_flag(request, "use_memory"),
            use_tools=_flag(request, "use_tools"),
            reuse=_flag(request, "reuse"),
            tests=tests,
            max_repair_rounds=max(0, min(int(rounds), MAX_REPAIR_ROUNDS_CAP)),
            max_tool_calls=max(0, min(int(calls), MAX_TOOL_CALLS_CAP)),
            context_budget_tokens=max(0, int(budget)),
            stop=[str(s) for s in request.get("stop") or [] if s],
            client_tools=list(request.get("client_tools") or []),
            sampling=sampling,
            param_sources=sources,
            tuning_tag=tag,
        )

    def params_json(self) -> dict[str, Any]:
        """`result.params`: the values used, and where each came from."""
        s = self.sampling
        values: dict[str, Any] = {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "repetition_penalty": s.repetition_penalty,
            "max_new_tokens": s.max_new_tokens,
            "seed": s.seed,
            "sources": dict(self.param_sources),
        }
        if self.tuning_tag is not None:
            values["tuning"] = self.tuning_tag
        return values


def _flag(request: dict[str, Any], name: str) -> bool:
    value = request.get(name)
    return True if value is None else bool(value)


def _sampling(
    request: dict[str, Any], settings: Settings
) -> tuple[SamplingParams, dict[str, str], dict[str, Any] | None]:
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    defaults = {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "repetition_penalty": settings.repetition_penalty,
        "max_new_tokens": settings.max_new_tokens,
    }
    for name, default in defaults.items():
        given = request.get(name)
        values[name] = default if given is None else given
        sources[name] = "default" if given is None else "request"
    # Temperature and top_p: the request's, a tuning trial's, the language's tuned
    # default, or the settings' (workers/tuning/generation.py decides, cheaply).
    choice = sampling_for(str(request.get("language") or "python"), request)
    values["temperature"], values["top_p"] = choice.temperature, choice.top_p
    sources.update(choice.sources)
    tag = choice.tag
    seed = request.get("seed")
    params = SamplingParams(
        max_new_tokens=int(values["max_new_tokens"]),
        temperature=float(values["temperature"]),
        top_p=float(values["top_p"]),
        repetition_penalty=float(values["repetition_penalty"]),
        seed=None if seed is None else int(seed),
    )
    return params, sources, tag
