"""The notifier: delivers tenant notifications from the `notifications` topic to the
tenants' endpoints, signed in the Standard Webhooks format, in order per endpoint, with
retries for a day, and commits an offset only once its notification is delivered or in
the dead letters. `quotaflow notifier` runs it (`service.run_notifier`).

Modules: `signing` (the webhook-* headers), `resolver` (the SSRF guard at connect time),
`delivery` (one HTTP attempt), `endpoint_queue` (an endpoint's ordered queue and its
retries), `offsets` (what may be committed), `state` (endpoints the notifier disabled),
`service` (the consumer that ties them together), `metrics`.
"""
