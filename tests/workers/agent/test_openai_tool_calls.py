"""A client tool called through /v1: the agent's `tool_call` event becomes OpenAI
`tool_calls` (streamed deltas and the non-streaming message), `finish_reason:
"tool_calls"`, and the caller's answer goes back as a `tool` message."""

from __future__ import annotations

import json

import openai
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from tests.conftest import Platform

TOOLS: list[ChatCompletionFunctionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "client weather in Oslo, please"}
]


def client(platform: Platform) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.url}/v1", api_key="k", max_retries=0)


def test_a_streamed_client_tool_call(agent_platform: Platform):
    stream = client(agent_platform).chat.completions.create(
        model="codeloop", messages=ASK, tools=TOOLS, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    first, *rest = deltas
    assert first.function is not None
    assert (first.index, first.type, first.function.name) == (0, "function", "get_weather")
    assert first.id and all(d.index == 0 and d.id is None for d in rest)
    arguments = ""
    for d in deltas:
        assert d.function is not None, d
        arguments += d.function.arguments or ""
    assert json.loads(arguments) == {"city": "Oslo"}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    shown = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<function>" not in shown
    assert chunks[-1].usage is not None


def test_a_client_tool_call_and_its_answer_round_trip(agent_platform: Platform):
    c = client(agent_platform)
    raw = c.chat.completions.with_raw_response.create(model="codeloop", messages=ASK, tools=TOOLS)
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    with agent_platform.client() as http:
        job = http.get(f"/jobs/{raw.headers['x-job-id']}", params={"wait": 30}).json()
    assert job["result"]["tool_calls"][0]["call_id"] == call.id
    # The caller runs the tool and sends the answer back: a new job carries the whole turn.
    conversation: list[ChatCompletionMessageParam] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 4}'},
    ]
    follow_up = c.chat.completions.with_raw_response.create(
        model="codeloop", messages=conversation, tools=TOOLS
    )
    with agent_platform.client() as http:
        request = http.get(f"/jobs/{follow_up.headers['x-job-id']}").json()["request"]
    assistant, tool = request["messages"][1:]
    assert assistant["content"] == '<function>get_weather</function>{"city": "Oslo"}'
    assert tool == {"role": "tool", "content": '{"temp_c": 4}', "tool_call_id": call.id}
