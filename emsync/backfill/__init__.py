"""`emsync backfill`: campaign history before the regular window, chunk by chunk.

``plan`` cuts the dates into chunks (pure), ``chunks`` keeps plans, leases and
progress in the database, ``allowance`` holds the backfill's share of Google
Ads operations, ``runner`` (``Backfiller``) fetches and saves, ``results`` is
what it reports (``BackfillOptions``, ``BackfillResult``).
"""
