"""The state database: districts and their credentials (later: epoch ledger, accounts)."""

from ingest.store.db import Database
from ingest.store.districts import (
    District,
    DistrictError,
    DistrictKey,
    DistrictStore,
    validate_district_name,
)

__all__ = [
    "Database",
    "District",
    "DistrictError",
    "DistrictKey",
    "DistrictStore",
    "validate_district_name",
]
