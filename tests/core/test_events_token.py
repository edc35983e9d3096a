"""Events tokens: scoped to one job, bound to their owner, short-lived, unforgeable."""

from __future__ import annotations

from app.core.events_token import issue_events_token, verify_events_token

SECRET = b"s" * 32


def test_a_token_opens_its_own_job_for_its_owner() -> None:
    token = issue_events_token(SECRET, job_id="job-a", owner="owner-1", ttl_s=60, now=1000)
    assert verify_events_token(SECRET, job_id="job-a", token=token, now=1059) == "owner-1"


def test_a_token_opens_no_other_job() -> None:
    token = issue_events_token(SECRET, job_id="job-a", owner="owner-1", ttl_s=60, now=1000)
    assert verify_events_token(SECRET, job_id="job-b", token=token, now=1001) is None


def test_an_expired_token_is_refused() -> None:
    token = issue_events_token(SECRET, job_id="job-a", owner="owner-1", ttl_s=60, now=1000)
    assert verify_events_token(SECRET, job_id="job-a", token=token, now=1061) is None


def test_a_changed_owner_expiry_or_secret_breaks_the_signature() -> None:
    token = issue_events_token(SECRET, job_id="job-a", owner="owner-1", ttl_s=60, now=1000)
    expires, owner, signature = token.split(".")
    assert owner == "owner-1"
    for forged in (f"{expires}.owner-2.{signature}", f"{int(expires) + 999}.{owner}.{signature}"):
        assert verify_events_token(SECRET, job_id="job-a", token=forged, now=1001) is None
    assert verify_events_token(b"t" * 32, job_id="job-a", token=token, now=1001) is None


def test_garbage_is_refused() -> None:
    for garbage in ("", ".", "..", "abc", "1.2", "x.owner.sig", "9" * 400):
        assert verify_events_token(SECRET, job_id="job-a", token=garbage, now=0) is None
