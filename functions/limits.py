"""A team's limits: explain (which binds now) and simulate (what proposed limits would refuse)."""

from __future__ import annotations

import functions_framework

from functions._http import Call, endpoint
from shared.explain import explain_limits as explain
from shared.schemas import ExplainQuery, LimitsExplained, LimitsSimulated, SimulateRequest
from shared.simulate import simulate_limits as simulate


@functions_framework.http
@endpoint("explain_limits")
def explain_limits(call: Call) -> LimitsExplained:
    return explain(call.ctx, call.params["team_id"], call.query(ExplainQuery))


@functions_framework.http
@endpoint("simulate_limits")
def simulate_limits(call: Call) -> LimitsSimulated:
    return simulate(call.ctx, call.params["team_id"], call.body(SimulateRequest))
