"""emsync: Meta Ads and Google Ads campaign metrics into SQLite or PostgreSQL, on a cron schedule."""

__version__ = "0.1.0"
