"""Memory end to end: a generation is indexed by the generate worker, found by a search
job on its own worker, and rated through the API."""

from __future__ import annotations

from tests.conftest import Platform, wait_until


def finished(http, job_id: str) -> dict:
    job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
    assert job["status"] == "succeeded", job
    return job


def search(http, body: dict) -> list[dict]:
    created = http.post("/search_code", json=body)
    assert created.status_code == 202, created.text
    return list(finished(http, created.json()["id"])["result"]["items"])


def test_generation_is_searchable_and_rateable(platform: Platform):
    task = "parse an ISO 8601 timestamp with a timezone offset into a datetime"
    with platform.client() as http:
        gen = http.post("/generate_code", json={"task": task, "max_new_tokens": 8}).json()
        generation_id = finished(http, gen["id"])["result"]["generation_id"]

        def found() -> list[dict]:
            items = search(http, {"query": task, "language": "python", "k": 5})
            return [i for i in items if i["item_id"] == generation_id]

        hit = wait_until(found, 60, interval=0.5, what="the generation in search results")[0]
        assert hit["item_type"] == "generation" and hit["language"] == "python"
        assert 0 < hit["similarity"] <= 1.0001 and "combined" in hit

        rated = http.post("/feedback", json={"generation_id": generation_id, "score": 1.0})
        assert rated.status_code == 201
        assert rated.json() == {
            "generation_id": generation_id, "feedback_score": 1.0, "feedback_count": 1,
        }  # fmt: skip
        again = [i for i in search(http, {"query": task, "k": 5}) if i["item_id"] == generation_id]
        assert again and again[0]["feedback_score"] == 1.0
        assert again[0]["combined"] > hit["combined"]
        assert http.post("/feedback", json={"generation_id": "nope", "score": 1}).status_code == 404
        java = search(http, {"query": task, "language": "java", "k": 5})
        assert all(i["language"] == "java" for i in java)
