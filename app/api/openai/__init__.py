"""The OpenAI-compatible surface under `/v1`: `router` (HTTP), `protocol` (wire shapes),
`serving` (requests as generate jobs, jobs' events as completions)."""
