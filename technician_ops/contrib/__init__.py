"""Helpers of bundled runbooks that are not step kinds (db-failover's controller logic)."""
