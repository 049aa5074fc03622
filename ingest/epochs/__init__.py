"""The epoch layer: which uploads are finished, handed to the processor exactly once.

It knows the naming contract (``names``), the readiness rules (``scan``), the ledger, and
the hand-off interface (``handoff``); it knows nothing of CSV columns.
"""
