"""The OpenAI-compatible surface (/v1), driven by the official `openai` client, sync and
async, streaming and not, against the real API and worker on the tiny model."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from tests.api.test_auth import create_key
from tests.conftest import Platform, free_port, wait_until
from tests.support import ApiServer

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write hello world."}]


def client(platform: Platform, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.url}/v1", api_key="unused", max_retries=0, **kwargs)


def job(platform: Platform, job_id: str) -> dict:
    with platform.client() as http:
        return http.get(f"/jobs/{job_id}", params={"wait": 30}).json()


def test_models_lists_the_served_model(platform: Platform):
    models = [m.id for m in client(platform).models.list()]
    assert models == ["codeloop", platform.env["CODELOOP_MODEL_ID"]]
    assert client(platform).models.retrieve("codeloop").owned_by == "codeloop"
    with pytest.raises(openai.NotFoundError) as missing:
        client(platform).models.retrieve("gpt-9")
    assert missing.value.code == "model_not_found"


def test_completion_is_a_listed_generate_job(platform: Platform):
    raw = client(platform).chat.completions.with_raw_response.create(
        model="codeloop", messages=HI, max_tokens=12, temperature=0, seed=7, top_p=0.5
    )
    completion = raw.parse()
    job_id = raw.headers["x-job-id"]
    assert completion.id == f"chatcmpl-{job_id}" and completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    stored = job(platform, job_id)
    assert stored["kind"] == "generate" and stored["status"] == "succeeded"
    assert choice.message.content == stored["result"]["text"] != ""
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == 12 == stored["result"]["usage"]["completion_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + 12
    request = stored["request"]
    assert request["messages"] == HI and request["task"] == HI[0]["content"]
    assert (request["max_new_tokens"], request["temperature"], request["top_p"]) == (12, 0, 0.5)
    assert request["seed"] == 7 and request["reuse"] is False
    with platform.client() as http:
        listed = http.get("/jobs", params={"kind": "generate", "limit": 100}).json()["items"]
    assert job_id in [j["id"] for j in listed]


def test_stream_chunks_share_one_id_role_first_finish_last_usage_then_done(platform: Platform):
    stream = client(platform).chat.completions.create(
        model="codeloop", messages=HI, max_completion_tokens=40, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in with_choices[1:])
    reasons = [c.choices[0].finish_reason for c in with_choices]
    assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
    last_usage = chunks[-1].usage
    assert chunks[-1].choices == [] and last_usage is not None
    assert last_usage.completion_tokens == 40
    assert all(c.usage is None for c in chunks[:-1])
    stored = job(platform, chunks[0].id.removeprefix("chatcmpl-"))
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == stored["result"]["text"]


def test_stream_wire_ends_with_done_and_ignores_unknown_fields(platform: Platform):
    body = {"model": "codeloop", "messages": HI, "max_tokens": 5, "stream": True,
            "temperature": 0, "logit_bias": {}, "user": "u1", "frequency_penalty": 0,
            "some_vendor_field": {"x": 1}}  # fmt: skip
    with platform.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-job-id"]
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: {") for line in lines[:-1])
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_async_client_streaming_and_not(platform: Platform):
    async def run() -> tuple[str, str]:
        aclient = openai.AsyncOpenAI(base_url=f"{platform.url}/v1", api_key="k", max_retries=0)
        whole = await aclient.chat.completions.create(
            model=platform.env["CODELOOP_MODEL_ID"], messages=HI, max_tokens=10, temperature=0
        )
        stream = await aclient.chat.completions.create(
            model="codeloop", messages=HI, max_tokens=10, temperature=0, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await aclient.close()
        return whole.choices[0].message.content or "", "".join(parts)

    whole, streamed = asyncio.run(run())
    assert whole and streamed


def test_conversation_and_stop_strings_reach_the_agent(platform: Platform):
    stops = [" ", "e", "a", "t"]
    conversation: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": [{"type": "text", "text": "Write a"},
                                     {"type": "text", "text": " sum."}]},
        {"role": "assistant", "content": "def add(a, b): return a + b"},
        {"role": "user", "content": "Now subtract."},
    ]  # fmt: skip
    raw = client(platform).chat.completions.with_raw_response.create(
        model="codeloop", messages=conversation, max_tokens=200, temperature=0, stop=stops
    )
    completion = raw.parse()
    request = job(platform, raw.headers["x-job-id"])["request"]
    assert request["task"] == "Now subtract." and request["stop"] == stops
    assert request["messages"][1] == {"role": "user", "content": "Write a sum."}
    text = completion.choices[0].message.content or ""
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens < 200
    assert not any(s in text for s in stops)


def test_errors_are_in_openai_shape(platform: Platform):
    c = client(platform)
    cases: list[tuple[dict[str, Any], type[openai.APIStatusError], str, str | None]] = [
        ({"model": "gpt-9"}, openai.NotFoundError, "model", "model_not_found"),
        ({"temperature": 3}, openai.BadRequestError, "temperature", "invalid_value"),
        ({"n": 2}, openai.BadRequestError, "n", "unsupported_parameter"),
        ({"logprobs": True}, openai.BadRequestError, "logprobs", "unsupported_parameter"),
        ({"tool_choice": "required"}, openai.BadRequestError, "tool_choice", None),
        ({"max_tokens": 10**6}, openai.BadRequestError, "max_tokens", None),
        ({"stop": ["x"] * 5}, openai.BadRequestError, "stop", "invalid_value"),
        ({"messages": [{"role": "system", "content": "no user"}]}, openai.BadRequestError,
         "messages", None),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         openai.BadRequestError, "messages", "unsupported_parameter"),
    ]  # fmt: skip
    for override, error, param, code in cases:
        kwargs: dict[str, Any] = {"model": "codeloop", "messages": HI, **override}
        with pytest.raises(error) as raised:
            c.chat.completions.create(**kwargs)
        body = raised.value.body
        assert isinstance(body, dict), body
        assert set(body) == {"message", "type", "param", "code"}, body
        assert body["type"] == "invalid_request_error" and body["param"] == param
        if code:
            assert body["code"] == code
    with platform.client() as http:
        broken = http.post(
            "/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400 and broken.json()["error"]["param"] is None
        assert http.get("/v1/no-such-thing").json()["error"]["code"] == "unknown_url"
        # The rest of the API keeps its own shape.
        assert http.post("/generate_code", json={}).json()["error"]["type"] == "invalid_input"


def test_an_error_after_the_stream_began_is_a_data_line(platform: Platform):
    too_long = "word " * 30_000  # fits the request cap, not the model's context window
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": too_long}, *HI]
    body = {"model": "codeloop", "stream": True, "max_tokens": 5, "messages": messages}
    with platform.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    with pytest.raises(openai.APIError) as raised:
        list(
            client(platform).chat.completions.create(
                model="codeloop", stream=True, messages=messages, max_tokens=5
            )
        )
    assert raised.value.code == "context_length_exceeded" and "4096" in raised.value.message


def test_tools_map_onto_client_tools_and_the_wire_stays_plain_when_none_is_called(
    platform: Platform,
):
    tools: list[ChatCompletionFunctionToolParam] = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    raw = client(platform).chat.completions.with_raw_response.create(
        model="codeloop", messages=HI, max_tokens=8, temperature=0, tools=tools, stream=True
    )
    chunks = list(raw.parse())
    request = job(platform, raw.headers["x-job-id"])["request"]
    assert request["client_tools"] == [{
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]  # fmt: skip
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert all(c.choices[0].delta.tool_calls is None for c in chunks)
    none = client(platform).chat.completions.with_raw_response.create(
        model="codeloop", messages=HI, max_tokens=4, tools=tools, tool_choice="none"
    )
    assert job(platform, none.headers["x-job-id"])["request"]["client_tools"] == []


def test_closing_a_stream_cancels_its_job(platform: Platform):
    stream = client(platform).chat.completions.with_raw_response.create(
        model="codeloop", messages=HI, max_tokens=4000, temperature=0, stream=True
    )
    job_id = stream.headers["x-job-id"]
    chunks = stream.parse()
    first = list(itertools.islice(chunks, 5))  # the stream is flowing
    assert first
    chunks.close()
    closed_at = time.monotonic()
    stored = wait_until(
        lambda: (j := job(platform, job_id))["status"] == "cancelled" and j,
        30,
        0.1,
        "the job to be cancelled",
    )
    assert time.monotonic() - closed_at < 10
    assert 0 < stored["result"]["usage"]["completion_tokens"] < 4000
    assert stored["result"]["finish_reason"] == "cancelled"


def test_closing_a_non_streaming_request_cancels_its_job(platform: Platform):
    body = {"model": "codeloop", "messages": HI, "max_tokens": 4000, "temperature": 0}
    with httpx.Client(base_url=platform.url, timeout=1.5) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=body)
    with platform.client() as http:
        newest = http.get("/jobs", params={"kind": "generate", "limit": 1}).json()["items"][0]
    assert newest["request"]["max_new_tokens"] == 4000
    stored = wait_until(
        lambda: (j := job(platform, newest["id"]))["status"] == "cancelled" and j,
        30,
        0.1,
        "the job to be cancelled",
    )
    assert stored["result"]["usage"]["completion_tokens"] < 4000


@pytest.fixture
def keyed_api(platform: Platform, tmp_path):
    env = {**platform.env, "CODELOOP_AUTH": "on"}
    key = create_key(env, "openai-user")
    api = ApiServer(env, free_port(), tmp_path / "api.log").wait_ready()
    yield api, key
    api.stop()


def test_the_same_bearer_keys_guard_v1(keyed_api):
    api, key = keyed_api
    anonymous = openai.OpenAI(base_url=f"{api.url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        anonymous.models.list()
    assert refused.value.code == "invalid_api_key"
    keyed = openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    assert "codeloop" in [m.id for m in keyed.models.list()]
    completion = keyed.chat.completions.create(model="codeloop", messages=HI, max_tokens=3)
    assert completion.usage is not None and completion.usage.completion_tokens == 3
