"""What a reply without a usage report is charged: its generated text, counted in tokens.

A backend that reports no usage (a lenient server, a stream cut before its usage event, a
client gone) still generated what it sent. Without the model's tokenizer:
- a stream: a token is taken as at most 4 bytes of UTF-8 text (English averages about 4
  characters a token), and every event as at least one token, which is what holds when a
  backend streams one token an event (vLLM does), whatever the tokens' length;
- a whole reply has no events to count, so a token is taken as at least one byte: a
  byte-level BPE token decodes to one byte or more, so this never charges less than was
  generated (text of short tokens, `a `, digits, CJK, included), and the caller caps it at
  the request's reservation, which bounds what the backend could generate.
The gateway adds the prompt's estimate.

Only the members that carry generated text count: `content`, `text`, `delta` (a string: the
Responses API's stream), `arguments` (tool calls), `reasoning` and `reasoning_content`,
`refusal`. Run only
when usage is missing, never on the common path.
"""

from __future__ import annotations

import json
from typing import Any

BYTES_PER_TOKEN = 4  # a stream's text
WHOLE_REPLY_BYTES_PER_TOKEN = 1
# `reasoning`: vLLM's reasoning text since it dropped `reasoning_content` (vllm PR #33402).
_TEXT_MEMBERS = frozenset({"content", "text", "delta", "arguments", "reasoning", "reasoning_content", "refusal"})
_MAX_DEPTH = 32


def _text_tokens(value: Any, depth: int = 0, per_token: int = BYTES_PER_TOKEN) -> int:
    """Tokens of the generated text in a decoded JSON value, `per_token` bytes a token."""
    if depth > _MAX_DEPTH:
        return 0
    tokens = 0
    if isinstance(value, dict):
        for name, member in value.items():
            if name in _TEXT_MEMBERS and isinstance(member, str):
                if member:
                    tokens += max(1, -(-len(member.encode("utf-8", "replace")) // per_token))
            elif isinstance(member, (dict, list)):
                tokens += _text_tokens(member, depth + 1, per_token)
    elif isinstance(value, list):
        for item in value:
            tokens += _text_tokens(item, depth + 1, per_token)
    return tokens


def reply_tokens(body: bytes) -> int:
    """Generated-text tokens of a whole JSON reply, at most (0 when it is not JSON)."""
    try:
        return _text_tokens(json.loads(body), per_token=WHOLE_REPLY_BYTES_PER_TOKEN)
    except (ValueError, RecursionError):
        return 0


def stream_tokens(stream: bytes) -> int:
    """Generated-text tokens of a server-sent event stream's `data:` events."""
    tokens = 0
    for line in stream.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data[:1] != b"{":
            continue  # [DONE], or not JSON
        try:
            tokens += _text_tokens(json.loads(data))
        except (ValueError, RecursionError):
            continue
    return tokens


def _usage_total(value: Any) -> int | None:
    usage = value.get("usage") if isinstance(value, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return total if type(total) is int and 0 <= total < 10**9 else None


def reply_total(body: bytes) -> int | None:
    """`usage.total_tokens` of a whole JSON reply, read as JSON (not searched for)."""
    try:
        return _usage_total(json.loads(body))
    except (ValueError, RecursionError):
        return None


_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def responses_stream_total(stream: bytes) -> int | None:
    """The usage of a Responses stream: `response.usage.total_tokens` of its final event."""
    for line in reversed(stream.split(b"\n")):
        line = line.strip()
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            event = json.loads(line[5:])
        except (ValueError, RecursionError):
            continue
        if isinstance(event, dict) and event.get("type") in _FINAL_EVENTS:
            return _usage_total(event.get("response"))
    return None
