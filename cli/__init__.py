"""`maas`: the key manager's command line for admins, team admins and members.

It speaks HTTP to the admin API only, as any client would (cli/client.py), so it works the same
against `make run` and a cluster. The exceptions: `maas serve` starts the local runtime
(cli/serve.py), `maas cluster-check` runs tools/cluster_check.py, and `maas policy render`
renders with shared/policies.py, which is pure (cli/policy.py).
"""
