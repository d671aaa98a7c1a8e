"""The in-memory registry view: lookups by id and by Connect account, conflicts named."""

from __future__ import annotations

from quotaflow.registry import StaticTenantRegistry
from tests.ingress.conftest import make_tenant


def test_an_account_two_tenants_claim_routes_to_neither_until_one_lets_go() -> None:
    acme = make_tenant("acme", stripe_account="acct_1Shared")
    registry = StaticTenantRegistry([acme])
    assert registry.by_account("acct_1Shared") == acme
    assert registry.conflicts() == {}

    registry.put(make_tenant("globex", stripe_account="acct_1Shared"))
    # Write order decides nothing: routing to either could give one tenant's events to
    # the other.
    assert registry.by_account("acct_1Shared") is None
    assert registry.account_holders("acct_1Shared") == ["acme", "globex"]
    assert registry.conflicts() == {"acct_1Shared": ["acme", "globex"]}

    registry.put(make_tenant("globex", stripe_account="acct_1Globex"))
    assert registry.by_account("acct_1Shared") == acme
    assert registry.by_account("acct_1Globex").id == "globex"  # type: ignore[union-attr]
    assert registry.conflicts() == {}

    registry.remove("acme")
    assert registry.by_account("acct_1Shared") is None
    assert registry.account_holders("acct_1Shared") == []
