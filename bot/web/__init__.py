"""The bot's optional web side, on when PUBLIC_URL is set: provider webhooks, health and metrics.

Nothing here imports discord: the bot hands the server what it needs (storage, the runner, a gateway check).
"""
