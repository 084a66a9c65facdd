"""What-if: the team's recorded calls replayed against proposed limits.

The record is the usage source's one-minute buckets (the ledger's resolution): a bucket's calls
are spread evenly over its minute, each with an equal share of its tokens. They are replayed one
after another with the gateway's semantics: fixed windows that open at a counter's first hit,
a call admitted while every limit that applies to it is below its limit (one call at a time, so
nothing is in flight), tokens or the request counted on each of its counters when admitted, and
the first exhausted limit named as the one that refused.

Within a minute the order of calls is not recorded: calls of different users, or of one user's
different models, are interleaved by that even spread. A team-wide rate can notice the first
(which user's call it refuses, not how many when calls cost alike), a user's rate over every
model the second (which call it refuses, and so how many tokens): `notes` says when a minute
held either. What it cannot know, it says (`notes`):
calls refused when they were made have no recorded cost and are not replayed; where calls are counted without their model (Prometheus over Limitador),
a per-model rate sees none of them.
"""

from __future__ import annotations

from datetime import timedelta

from shared.context import Context
from shared.durations import window_ms
from shared.errors import InvalidRequest
from shared.schemas import LimitsSimulated, RatePublic, SimulateRequest, UserSimulation

_BUCKET_MS = 60_000
MAX_REPLAYED_CALLS = 2_000_000  # a bound on the work one request may ask for (~2 s here)


def simulate_limits(ctx: Context, team_id: str, request: SimulateRequest) -> LimitsSimulated:
    ctx.store.get_team(team_id=team_id)  # NotFound for an unknown team
    end = request.end or ctx.clock()
    start = request.start or end - timedelta(hours=24)
    if start >= end:
        raise InvalidRequest("start must be before end",
                             details=[{"field": "start", "message": "must be before end", "type": "invalid"}])
    usage = ctx.usage()
    points = usage.series(start=start, end=end, step_s=60, team_id=team_id)
    calls = sum(max(0, point.row.authorized_calls) for point in points)
    if calls > MAX_REPLAYED_CALLS:
        raise InvalidRequest(f"the range holds {calls} calls, more than the {MAX_REPLAYED_CALLS} one simulation "
                             "replays; give a shorter range (start, end)")
    rates = request.rates
    windows = [window_ms(rate.window) for rate in rates]
    # (the call's time in ms, user, model, tokens), in time order
    replayed: list[tuple[int, str, str, int]] = []
    previously_limited = 0
    models_in_minute: dict[tuple[int, str], set[str]] = {}
    for point in points:
        row = point.row
        previously_limited += row.limited_calls
        if row.authorized_calls > 0:
            models_in_minute.setdefault((int(point.start.timestamp()), row.user_id), set()).add(row.model)
        count = row.authorized_calls
        if count <= 0:
            continue
        base = int(point.start.timestamp() * 1000)
        share, extra = divmod(max(0, row.tokens), count)
        replayed.extend((base + at * _BUCKET_MS // count, row.user_id, row.model, share + (1 if at < extra else 0))
                        for at in range(count))
    replayed.sort(key=lambda call: call[0])

    counters: dict[tuple[int, str], list[int]] = {}  # (rate, user or "") -> [window end ms, spent]
    per_user: dict[str, UserSimulation] = {}
    for at_ms, user, model, tokens in replayed:
        applying = [index for index, rate in enumerate(rates) if rate.model is None or rate.model == model]
        refused_by: str | None = None
        opened: list[list[int]] = []
        for index in applying:
            rate = rates[index]
            counter = counters.get((index, user if rate.scope == "user" else ""))
            if counter is None or at_ms >= counter[0]:
                counter = counters[(index, user if rate.scope == "user" else "")] = [at_ms + windows[index], 0]
            opened.append(counter)
            if refused_by is None and counter[1] >= rate.limit:
                refused_by = rate.name
        outcome = per_user.get(user)
        if outcome is None:
            outcome = per_user[user] = UserSimulation(user_id=user, requests=0, tokens=0, refused_requests=0,
                                                      refused_tokens=0, refused_by={})
        outcome.requests += 1
        outcome.tokens += tokens
        if refused_by is not None:
            outcome.refused_requests += 1
            outcome.refused_tokens += tokens
            outcome.refused_by[refused_by] = outcome.refused_by.get(refused_by, 0) + 1
            continue
        for index, counter in zip(applying, opened):
            counter[1] += tokens if rates[index].unit == "tokens" else 1

    users = sorted(per_user.values(), key=lambda outcome: outcome.user_id)
    refused_by_total: dict[str, int] = {}
    for outcome in users:
        for name, count in outcome.refused_by.items():
            refused_by_total[name] = refused_by_total.get(name, 0) + count
    notes = []
    if previously_limited:
        notes.append(f"{previously_limited} call(s) refused when they were made have no recorded cost and are not replayed")
    mixed = sorted({user for (_, user), models in models_in_minute.items() if len(models) > 1})
    if mixed and any(rate.model is None for rate in rates):
        notes.append(f"{len(mixed)} user(s) called several models within one minute ({', '.join(mixed[:5])}"
                     f"{', ...' if len(mixed) > 5 else ''}): the order of those calls is not recorded, so which of "
                     "them a limit over every model refuses, and their tokens, may differ from the gateway's")
    users_in_minute: dict[int, set[str]] = {}
    for minute, user in models_in_minute:
        users_in_minute.setdefault(minute, set()).add(user)
    if any(rate.scope == "team" for rate in rates) and any(len(users) > 1 for users in users_in_minute.values()):
        notes.append("several users called within one minute: the order of their calls is not recorded, so "
                     "which user's call a team-wide limit refuses may differ from the gateway's")
    if not usage.calls_by_model and any(rate.model is not None for rate in rates):
        notes.append("the usage source counts calls without their model: per-model rates see no calls")
    return LimitsSimulated(
        team_id=team_id, start=start, end=end, limits=[RatePublic.of(rate) for rate in rates],
        requests=sum(o.requests for o in users), tokens=sum(o.tokens for o in users),
        refused_requests=sum(o.refused_requests for o in users), refused_tokens=sum(o.refused_tokens for o in users),
        refused_by=refused_by_total, users=users, notes=notes,
    )
