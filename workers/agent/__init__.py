"""The agent: what a generation job does, step by step (see `orchestrator`).

Modules: `engine` (the one interface to a model), `scripted` (a test engine),
`markup` (tool-call parsing on decoded text), `tools` and `calls` (the tools and how
one call is run, bounded and audited), `children` (execute/lint as child jobs),
`context` and `reuse` (memory), `prompts` (the conversation format), `turns` (one
answer, across tool calls), `verify` (tests in the sandbox), `orchestrator`.
"""
