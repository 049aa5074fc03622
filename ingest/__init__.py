"""ingest: an SFTP ingest daemon that turns districts' nightly CSV uploads into accounts."""

__version__ = "0.1.0"
