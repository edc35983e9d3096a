"""Webhook delivery in the maintenance worker: the address guard, the pinned HTTP POST,
one attempt and its record (the SQL side lives in `app/core/webhooks.py`)."""
