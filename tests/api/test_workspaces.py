"""Workspaces end to end: a real API (auth on), Celery workers, Redis, SQL, the sandbox
and the MiniLM retriever; only the model's text is scripted.

Keys: alice and ann share workspace `team-a`, bob is alone in `team-b`, and an env key
(CODELOOP_API_KEYS) sits in `default`. Memory — history, generations, search, knowledge,
feedback, project files, and what the agent reads (context, reuse, tools) — is shared
inside a workspace and invisible outside it; jobs stay private to their key.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import Platform, platform_env, running_platform
from tests.support import ROOT, _env, read_events

TERMINAL = ("succeeded", "failed", "cancelled")
REVERSE = "```python\ndef reverse_words(s):\n    return ' '.join(s.split()[::-1])\n```"
SCRIPT = {
    "token_chars": 8,
    "rules": [
        {"match": "tool: history",
         "turns": ['<function>get_history</function>{"language": "python"}', "Done."]},
        {"match": "tool: search",
         "turns": ['<function>search_code</function>{"query": "tenant widget parser", "k": 10}',
                   "Done."]},
        {"match": "tool: knowledge",
         "turns": ['<function>get_knowledge</function>{"language": "python", "limit": 10}',
                   "Done."]},
        {"match": "tool: recall",
         "turns": ['<function>get_knowledge</function>{"language": "python", '
                   '"query": "cart totals for team A", "limit": 5}', "Done."]},
        {"match": "reverse the words", "turns": [REVERSE], "repeat_last": True},
    ],
    "default": ["```python\ndef tenant_widget_parser(text):\n    return text.split(',')\n```"],
}  # fmt: skip


@dataclass
class Tenants:
    platform: Platform
    keys: dict[str, str]  # alice, ann (team-a), bob (team-b), env (default)

    def client(self, who: str) -> httpx.Client:
        return self.platform.client(headers={"Authorization": f"Bearer {self.keys[who]}"})


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=_env(env), cwd=ROOT, capture_output=True, text=True, check=check,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tenants(
    redis_server: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tenants]:
    root = tmp_path_factory.mktemp("workspaces")
    script = root / "script.json"
    script.write_text(json.dumps(SCRIPT))
    env_key = "cl_env_" + uuid.uuid4().hex
    env = {**platform_env(redis_server, root, tiny_model_dir, 11),
           "CODELOOP_MODEL_ID": f"scripted:{script}", "CODELOOP_AUTH": "on",
           "CODELOOP_API_KEYS": env_key, "CODELOOP_AGENT_TOOL_OUTPUT_CHARS": "20000"}  # fmt: skip
    cli(env, "knowledge")  # the global starter snippets
    for workspace in ("team-a", "team-b"):
        cli(env, "workspaces", "create", workspace)
    members = (("alice", "team-a"), ("ann", "team-a"), ("bob", "team-b"))
    keys = {
        name: cli(env, "keys", "create", "--name", name, "--workspace", ws).stdout.strip()
        for name, ws in members
    }
    keys["env"] = env_key
    workers = [("generate,search", 1, "wsgen@%h"), ("execute", 2, "wsexe@%h")]
    with running_platform(env, root, workers) as running:
        yield Tenants(running, keys)


def wait_job(http: httpx.Client, job_id: str, wait: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    while job["status"] not in TERMINAL:
        assert time.monotonic() < deadline, job
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    return job


def generate(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    created = http.post("/generate_code", json={"language": "python", **body})
    assert created.status_code == 202, created.text
    job = wait_job(http, created.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def search(http: httpx.Client, query: str, **body: Any) -> list[dict[str, Any]]:
    created = http.post("/search_code", json={"query": query, "k": 20, **body})
    assert created.status_code == 202, created.text
    job = wait_job(http, created.json()["id"])
    assert job["status"] == "succeeded", job
    return list(job["result"]["items"])


def search_until(http: httpx.Client, query: str, item_id: str) -> list[dict[str, Any]]:
    """Search until `item_id` shows up (a worker embeds new rows within seconds)."""
    deadline = time.monotonic() + 60
    while True:
        items = search(http, query)
        if item_id in {item["item_id"] for item in items} or time.monotonic() > deadline:
            return items
        time.sleep(1)


def not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "detail"}
    assert body["error"]["type"] == "not_found"


def test_operators_manage_workspaces_with_the_cli(tenants: Tenants):
    env = tenants.platform.env
    listing = cli(env, "workspaces", "list").stdout
    counts = {line.split()[1]: line.split()[2] for line in listing.splitlines()}
    assert counts == {"default": "0", "team-a": "2", "team-b": "1"}
    keys = cli(env, "keys", "list").stdout
    workspace_of = {line.split()[-1]: line.split()[3] for line in keys.splitlines()}
    assert workspace_of == {"alice": "team-a", "ann": "team-a", "bob": "team-b"}
    unknown = cli(env, "keys", "create", "--workspace", "team-z", check=False)
    assert unknown.returncode == 1 and "codeloop workspaces create team-z" in unknown.stderr
    again = cli(env, "workspaces", "create", "team-a", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert tenants.keys["alice"] not in keys


def test_history_and_generations_are_shared_inside_a_workspace_only(tenants: Tenants):
    with tenants.client("alice") as alice, tenants.client("ann") as ann, \
            tenants.client("bob") as bob, tenants.client("env") as env_key:  # fmt: skip
        job = generate(alice, {"task": "write a tenant widget parser", "use_memory": False})
        gen = job["result"]["generation_id"]
        assert ann.get(f"/generations/{gen}").json()["generation_id"] == gen
        assert gen in [i["generation_id"] for i in ann.get("/history/best/python").json()["items"]]
        for outsider in (bob, env_key):
            not_found(outsider.get(f"/generations/{gen}"))
            history = outsider.get("/history/best/python", params={"limit": 100}).json()
            assert gen not in [i["generation_id"] for i in history["items"]]
        # jobs stay the key's own, inside the workspace too
        for other in (ann, bob):
            not_found(other.get(f"/jobs/{job['id']}"))
            not_found(other.post(f"/jobs/{job['id']}/cancel"))
        assert alice.get(f"/jobs/{job['id']}").status_code == 200


def test_feedback_one_rating_per_key_and_only_inside_the_workspace(tenants: Tenants):
    with tenants.client("alice") as alice, tenants.client("ann") as ann, \
            tenants.client("bob") as bob:  # fmt: skip
        gen = generate(alice, {"task": "a tenant widget to rate", "use_memory": False})[
            "result"]["generation_id"]  # fmt: skip
        not_found(bob.post("/feedback", json={"generation_id": gen, "score": 0.0}))
        first = alice.post("/feedback", json={"generation_id": gen, "score": 0.0})
        assert first.status_code == 201, first.text
        both = ann.post("/feedback", json={"generation_id": gen, "score": 1.0})
        assert both.json() == {"generation_id": gen, "feedback_score": 0.5, "feedback_count": 2}
        replaced = alice.post("/feedback", json={"generation_id": gen, "score": 0.6,
                                                 "comment": "better on reflection"})  # fmt: skip
        assert replaced.json() == {"generation_id": gen, "feedback_score": 0.8,
                                   "feedback_count": 2}  # fmt: skip
        ratings = ann.get(f"/generations/{gen}").json()["feedback"]
    assert ratings["count"] == 2 and ratings["score"] == pytest.approx(0.8)
    assert sorted(r["score"] for r in ratings["ratings"]) == [0.6, 1.0]
    assert "better on reflection" in [r["comment"] for r in ratings["ratings"]]


def test_knowledge_writes_stay_in_their_workspace_and_starter_knowledge_is_global(
    tenants: Tenants,
):
    snippet = {
        "language": "python",
        "title": "Tenant widget parser (team A)",
        "content": "def tenant_widget_parser(text):\n    return text.split(';')\n",
    }
    with tenants.client("alice") as alice, tenants.client("ann") as ann, \
            tenants.client("bob") as bob:  # fmt: skip
        made = alice.post("/knowledge", json=snippet)
        assert made.status_code == 201, made.text
        assert ann.post("/knowledge", json=snippet).status_code == 409  # same workspace
        theirs = bob.post("/knowledge", json=snippet)  # bob's workspace has no such title
        assert theirs.status_code == 201 and theirs.json()["id"] != made.json()["id"]

        def listed(http: httpx.Client) -> dict[str, str]:
            items = http.get("/knowledge/get/python", params={"limit": 200}).json()["items"]
            return {item["id"]: item["source"] for item in items}

        in_a, in_b = listed(ann), listed(bob)
    assert made.json()["id"] in in_a and made.json()["id"] not in in_b
    assert theirs.json()["id"] in in_b and theirs.json()["id"] not in in_a
    starter = {i for i, source in in_a.items() if source == "starter"}
    assert len(starter) >= 12 and starter == {i for i, s in in_b.items() if s == "starter"}


def test_search_never_returns_another_workspaces_items(tenants: Tenants):
    content = "def tenant_widget_parser(text):\n    return [p.strip() for p in text.split('|')]\n"
    with tenants.client("alice") as alice, tenants.client("ann") as ann, \
            tenants.client("bob") as bob:  # fmt: skip
        made = alice.post("/knowledge", json={"language": "python", "content": content,
                                              "title": "Tenant widget parser, pipes"})  # fmt: skip
        assert made.status_code == 201, made.text
        gen = generate(alice, {"task": "tenant widget parser with pipes", "use_memory": False})[
            "result"]["generation_id"]  # fmt: skip
        found = search_until(ann, "tenant widget parser", made.json()["id"])
        assert {made.json()["id"], gen} <= {item["item_id"] for item in found}
        outside = search(bob, "tenant widget parser with pipes")
    assert outside, "bob still sees the global starter snippets"
    with tenants.platform.sql().connect() as conn:
        team_a = set(conn.execute(text(
            "SELECT id FROM code_history WHERE workspace_id <> (SELECT id FROM workspaces "
            "WHERE name = 'team-b') UNION SELECT id FROM knowledge_base WHERE workspace_id "
            "IS NOT NULL AND workspace_id <> (SELECT id FROM workspaces WHERE name = 'team-b')"
        )).scalars())  # fmt: skip
    assert not team_a & {item["item_id"] for item in outside}


def test_project_files_are_per_workspace_and_shared_inside(tenants: Tenants):
    url = "/projects/site/files/src/app.py"
    with tenants.client("alice") as alice, tenants.client("ann") as ann, \
            tenants.client("bob") as bob, tenants.client("env") as env_key:  # fmt: skip
        assert alice.put(url, content=b"print('alice')\n").status_code == 201
        assert ann.get(url).json()["content"] == "print('alice')\n"  # shared in team-a
        assert ann.put(url, content=b"print('ann')\n").status_code == 200  # replaces it
        not_found(bob.get(url))
        not_found(bob.get("/projects/site/files"))
        not_found(bob.delete(url))
        assert bob.put(url, content=b"print('bob')\n").status_code == 201  # his own "site"
        assert alice.get(url).json()["content"] == "print('ann')\n"
        assert bob.get(url).json()["content"] == "print('bob')\n"
        not_found(env_key.get(url))
        assert bob.delete(url).status_code == 204
        assert alice.get(url).json()["content"] == "print('ann')\n"
        assert [f["path"] for f in ann.get("/projects/site/files").json()["files"]] == [
            "src/app.py"
        ]  # fmt: skip


def test_concurrent_writes_to_one_path_from_two_workspaces_never_clobber(tenants: Tenants):
    url = "/projects/race/files/main.py"
    statuses: dict[str, list[int]] = {"alice": [], "ann": [], "bob": []}
    start = threading.Barrier(3)

    def write(who: str) -> None:
        with tenants.client(who) as http:
            start.wait()
            for i in range(15):
                reply = http.put(url, content=f"# {who} {i}\n".encode())
                statuses[who].append(reply.status_code)

    threads = [threading.Thread(target=write, args=(who,)) for who in statuses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    team_a = statuses["alice"] + statuses["ann"]
    assert sorted(set(team_a)) == [200, 201] and team_a.count(201) == 1  # one file, shared
    assert statuses["bob"].count(201) == 1 and set(statuses["bob"]) <= {200, 201}
    with tenants.client("alice") as alice, tenants.client("bob") as bob:
        assert alice.get(url).json()["content"].split()[1] in ("alice", "ann")
        assert bob.get(url).json()["content"] == "# bob 14\n"


def test_the_agent_reads_only_its_jobs_workspace(tenants: Tenants):
    """Context (project files, knowledge, history) and the memory tools of a generation
    come from the job's workspace and the global knowledge, never from another one."""
    with tenants.client("alice") as alice, tenants.client("ann") as ann, \
            tenants.client("bob") as bob:  # fmt: skip
        alice.put("/projects/shop/files/cart.py", content=b"def cart_total(items): ...\n")
        bob.put("/projects/shop/files/billing.py", content=b"def invoice(items): ...\n")
        cart = "def cart_total(items):\n    return sum(i.price for i in items)\n"
        mine = alice.post(
            "/knowledge",
            json={"language": "python", "title": "Cart totals for team A", "content": cart},
        )
        assert mine.status_code == 201
        team_a_gen = generate(alice, {"task": "sum the shopping cart items",
                                      "use_memory": False})["result"]["generation_id"]  # fmt: skip
        search_until(alice, "cart totals", mine.json()["id"])  # embedded by now

        seen = {}
        for who, http in (("ann", ann), ("bob", bob)):
            job = generate(http, {"task": "sum the shopping cart totals", "project_id": "shop"})
            seen[who] = {(c["source"], c["id"]) for c in job["result"]["context"]}
        outputs = {}
        for name, http, task in (("history", bob, "tool: history"), ("search", bob, "tool: search"),
                                 ("knowledge", bob, "tool: knowledge"),
                                 ("recall", bob, "tool: recall"),
                                 ("own_recall", ann, "tool: recall"),
                                 ("own_history", ann, "tool: history")):  # fmt: skip
            job = generate(http, {"task": task, "use_memory": False})
            [result] = [e.data for e in read_events(http, f"/jobs/{job['id']}/events")
                        if e.event == "tool_result"]  # fmt: skip
            assert result["ok"] and "truncated_output" not in result["result"], result
            outputs[name] = json.dumps(result["result"])
    assert ("project_file", "cart.py") in seen["ann"]
    assert ("knowledge", mine.json()["id"]) in seen["ann"]
    assert ("project_file", "billing.py") in seen["bob"]
    assert not {("project_file", "cart.py"), ("knowledge", mine.json()["id"]),
                ("history", team_a_gen)} & seen["bob"]  # fmt: skip
    assert team_a_gen not in outputs["history"] and team_a_gen in outputs["own_history"]
    assert team_a_gen not in outputs["search"] and mine.json()["id"] not in outputs["search"]
    assert '"items": []' not in outputs["knowledge"]  # the global snippets are there…
    assert mine.json()["id"] not in outputs["knowledge"]  # …team A's is not
    assert mine.json()["id"] in outputs["own_recall"] and mine.json()["id"] not in outputs["recall"]


def test_verified_reuse_never_crosses_workspaces(tenants: Tenants):
    body = {"task": "reverse the words of a sentence",
            "tests": "assert reverse_words('a b') == 'b a'"}  # fmt: skip
    with tenants.client("alice") as alice, tenants.client("ann") as ann, \
            tenants.client("bob") as bob:  # fmt: skip
        first = generate(alice, body)["result"]
        assert first["verification"]["status"] == "passed" and first["source"] == "model"
        shared = generate(ann, body)["result"]  # same workspace: alice's solution is reused
        outside = generate(bob, body)["result"]  # bob's workspace has no such solution
    assert shared["source"] == "memory"
    assert shared["reused_from"] == {"source": "history", "id": first["generation_id"]}
    assert outside["source"] == "model" and outside["reused_from"] is None
    assert first["generation_id"] not in {c["id"] for c in outside["context"]}


def test_an_execution_cannot_touch_another_workspaces_generation(tenants: Tenants):
    with tenants.client("alice") as alice, tenants.client("bob") as bob:
        gen = generate(alice, {"task": "a tenant widget to run", "use_memory": False})[
            "result"]["generation_id"]  # fmt: skip
        run = bob.post("/execute_code", json={"language": "python", "code": "raise SystemExit(1)",
                                              "generation_id": gen})  # fmt: skip
        assert run.status_code == 202, run.text
        assert wait_job(bob, run.json()["id"])["result"]["status"] == "runtime_error"
        detail = alice.get(f"/generations/{gen}").json()
    assert detail["last_execution_status"] is None  # bob's run changed nothing
    assert detail["executions"] == []
