"""The operator's side of the tenants: every write (`writer`, `open_writer`), onboarding
with Stripe, the admin HTTP API and its OpenAPI document, `quotaflow tenants …` and
`quotaflow keys …`, the audit trail. Components read tenants through `quotaflow.tenants`
(`open_registry`), which imports nothing from here.
"""
