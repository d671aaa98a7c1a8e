"""The top layer: the `quotaflow` command and the operator tools it runs.

Everything here sits on the faces (`ingress`, `streams`, `edge`) and on the foundation
(the rest of `quotaflow/`, `tables/`, `wire/`), and nothing there imports it back: a
component runs the same with this package absent, which an import contract in
`pyproject.toml` checks (see ARCHITECTURE.md, "Layers and who imports whom").

- `cli`: the one command line, the only module that imports every face;
- `ops/`: replay, dead letters, explain, reconcile, lag, notifications (the verbs);
- `tenants/`: the write side of the tenant registry: writer, onboarding, admin API, CLI;
- `console/`: the operator console served by `quotaflow admin`;
- `dev`, `localkafka` (+ `kafka/`), `workers`: the local pipeline, the local broker,
  and `quotaflow ingress --workers N`'s supervisor.
"""
