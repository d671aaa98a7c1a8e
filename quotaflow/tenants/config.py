"""What the tenants package derives from the settings: allowed regions, the audit topic."""

from __future__ import annotations

from quotaflow.settings import AdminSettings, KafkaGroup


def known_regions(settings: AdminSettings) -> frozenset[str]:
    """The regions a tenant may name (see `TenantsConfig.regions`)."""
    configured = settings.regions
    if configured:
        return frozenset(configured)
    return (
        frozenset(settings.edge_nodes)
        | frozenset(settings.push_signing_keys)
        | frozenset(settings.push_verify_keys)
        | {settings.region}
    )


def audit_topic(settings: KafkaGroup) -> str:
    """`{prefix}tenants.audit` (proposed as `settings.topics.tenants_audit`)."""
    return settings.topics.tenants_audit
