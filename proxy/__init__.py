"""eodh-proxy: a local authenticating reverse proxy for the EODH API."""

__version__ = "0.1.0"
