"""Finding the model's tool calls in its decoded text, as it streams.

The model calls a tool by writing `<function>NAME</function>{json arguments}`. The
parser sees decoded text increments, not token ids: a tag may arrive split across any
number of increments, so text that could still become `<function>` is held back until
it either completes the tag or cannot. No byte of the markup is ever returned as
visible text: clients only ever see the answer.

Inside a fenced code block (a line opening with ``` or ~~~) the model is writing its
answer's code, so a `<function>` there is code (a string in a test, an HTML snippet),
not a call. Fences are tracked by line starts, as CommonMark does.

Once the JSON object after the tag is complete (brace depth back to zero, strings and
escapes respected) the parser reports the call and swallows anything after it: the
agent stops decoding there (`stop_requested`) and runs the tool. A tag that is not
followed by a JSON object, a name that never closes, or arguments that grow past the
cap are reported as a malformed call, which the agent answers with an error result.

`StopSequences` does the same hold-back for a request's `stop` strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

OPEN_TAG = "<function>"
CLOSE_TAG = "</function>"
MAX_NAME_CHARS = 64
MAX_ARGUMENT_CHARS = 65_536
_FENCE_CHARS = "`~"


@dataclass(frozen=True)
class ParsedCall:
    """A call as the model wrote it; `error` says why it is malformed (None: well formed)."""

    name: str
    arguments: str  # the raw JSON text, `{...}`
    error: str | None = None

    @property
    def markup(self) -> str:
        """The call as it goes back into the conversation."""
        return f"{OPEN_TAG}{self.name}{CLOSE_TAG}{self.arguments}"


class _State(Enum):
    TEXT = 1
    NAME = 2  # after <function>, until </function>
    BEFORE_ARGS = 3  # after </function>, until the opening brace
    ARGS = 4  # inside the JSON object
    DONE = 5  # a call was found; everything after it is ignored


class ToolCallParser:
    """Splits streamed text into visible text and at most one tool call (one per turn)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.call: ParsedCall | None = None
        self._state = _State.TEXT
        self._held = ""  # a prefix of OPEN_TAG seen outside a fence, not yet decided
        self._in_fence = False
        self._fence_char = ""
        self._line_head: str | None = ""  # the current line's leading fence chars; None: decided
        self._name = ""
        self._args: list[str] = []
        self._args_len = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False

    @property
    def stop_requested(self) -> bool:
        """True once a call (well formed or not) is complete: decoding should stop."""
        return self._state is _State.DONE

    @property
    def in_call(self) -> bool:
        return self._state in (_State.NAME, _State.BEFORE_ARGS, _State.ARGS)

    def feed(self, text: str) -> str:
        """Take the next decoded increment; return the text that is safe to show now."""
        if not self.enabled:
            return text
        if self._state is _State.DONE:
            return ""
        if (
            self._state is _State.TEXT
            and not self._held
            and "<" not in text
            and "\n" not in text
            and not any(c in text for c in _FENCE_CHARS)
        ):  # the common case: plain text in the middle of a line
            if self._line_head is not None and text.strip(" \t"):
                self._line_head = None
            return text
        out: list[str] = []
        for char in text:
            if self._state is _State.TEXT:
                self._text_char(char, out)
            elif self._state is _State.DONE:
                break
            else:
                self._call_char(char)
        return "".join(out)

    def finish(self) -> str:
        """The decoding ended: release held text; a call cut off midway becomes malformed."""
        if self._state is _State.TEXT:
            held, self._held = self._held, ""
            return held
        if self.in_call:
            self.call = ParsedCall(
                self._name[:MAX_NAME_CHARS].strip(),
                "".join(self._args),
                "the call was cut off before its JSON arguments were complete",
            )
            self._state = _State.DONE
        return ""

    # --- text outside calls --------------------------------------------------------------
    def _text_char(self, char: str, out: list[str]) -> None:
        if self._in_fence:
            self._visible(char, out)
            return
        if self._held or char == "<":
            candidate = self._held + char
            if OPEN_TAG.startswith(candidate):
                if candidate == OPEN_TAG:
                    self._held = ""
                    self._state = _State.NAME
                else:
                    self._held = candidate
                return
            # Not a tag after all: the first held char is text; rescan the rest.
            self._held = ""
            self._visible(candidate[0], out)
            for rest in candidate[1:]:
                self._text_char(rest, out)
            return
        self._visible(char, out)

    def _visible(self, char: str, out: list[str]) -> None:
        out.append(char)
        if char == "\n":
            self._line_head = ""
            return
        head = self._line_head
        if head is None:
            return
        if char in " \t" and head == "":
            return
        if char in _FENCE_CHARS and (head == "" or head[0] == char):
            head += char
            if len(head) == 3:
                self._toggle_fence(char)
                self._line_head = None
            else:
                self._line_head = head
            return
        self._line_head = None

    def _toggle_fence(self, char: str) -> None:
        if not self._in_fence:
            self._in_fence, self._fence_char = True, char
        elif char == self._fence_char:
            self._in_fence = False

    # --- inside a call ---------------------------------------------------------------------
    def _call_char(self, char: str) -> None:
        if self._state is _State.NAME:
            self._name += char
            if self._name.endswith(CLOSE_TAG):
                self._name = self._name[: -len(CLOSE_TAG)].strip()
                self._state = _State.BEFORE_ARGS
            elif len(self._name) > MAX_NAME_CHARS + len(CLOSE_TAG):
                self._fail(f"the tool name was not closed with {CLOSE_TAG}")
        elif self._state is _State.BEFORE_ARGS:
            if char.isspace():
                return
            if char != "{":
                self._fail(f"expected a JSON object after {CLOSE_TAG}, got {char!r}")
                return
            self._state, self._depth = _State.ARGS, 1
            self._append_arg(char)
        else:
            self._append_arg(char)
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char == "{":
                self._depth += 1
            elif char == "}":
                self._depth -= 1
                if self._depth == 0:
                    self.call = ParsedCall(self._name, "".join(self._args))
                    self._state = _State.DONE
            if self._state is _State.ARGS and self._args_len > MAX_ARGUMENT_CHARS:
                self._fail(f"the arguments are longer than {MAX_ARGUMENT_CHARS} characters")

    def _append_arg(self, char: str) -> None:
        self._args.append(char)
        self._args_len += 1

    def _fail(self, error: str) -> None:
        self.call = ParsedCall(self._name[:MAX_NAME_CHARS].strip(), "".join(self._args), error)
        self._state = _State.DONE


class StopSequences:
    """Ends the visible text before the first of a request's `stop` strings.

    Text that could still be the start of a stop string is held back, so the stop
    string itself never reaches a client, however the increments split it.
    """

    def __init__(self, stops: list[str] | None) -> None:
        self._stops = [s for s in (stops or []) if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self._stops:
            return text
        if self.stopped:
            return ""
        buffer = self._held + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return buffer[:cut]
        keep = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), 0, -1):
                if buffer.endswith(stop[:size]):
                    keep = max(keep, size)
                    break
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def finish(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held
