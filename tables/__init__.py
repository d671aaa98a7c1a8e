"""The pure domain of quotaflow: models and state transitions, no I/O.

Nothing here imports Faust, a Kafka client or an HTTP library: every function takes the
state and an input and returns the new state, so the whole domain is testable in
microseconds and reused unchanged by the stream workers, the CLI and the edge.
"""
