"""Which ad accounts a freshly connected login can reach: Google Ads customers and Meta ad accounts.

Callers pass an ``HttpClient`` (its retry policy applies) and get plain frozen
rows back; nothing here touches the database. See ``google`` and ``meta``
for the API documents each behaviour comes from.
"""

from .google import (
    CUSTOMER_CLIENT_QUERY,
    CustomerRefused,
    GoogleAdsApi,
    GoogleCustomer,
    GoogleDiscovery,
    customer_clients,
    discover_google,
    list_accessible_customers,
)
from .meta import (
    GraphApi,
    GraphRefused,
    MetaAdAccount,
    MetaDiscovery,
    MetaToken,
    ad_account,
    ad_accounts,
    businesses,
    debug_token,
    discover_meta,
    require_ads_scopes,
)

__all__ = [
    "CUSTOMER_CLIENT_QUERY",
    "CustomerRefused",
    "GoogleAdsApi",
    "GoogleCustomer",
    "GoogleDiscovery",
    "customer_clients",
    "discover_google",
    "list_accessible_customers",
    "GraphApi",
    "GraphRefused",
    "MetaAdAccount",
    "MetaDiscovery",
    "MetaToken",
    "ad_account",
    "ad_accounts",
    "businesses",
    "debug_token",
    "discover_meta",
    "require_ads_scopes",
]
