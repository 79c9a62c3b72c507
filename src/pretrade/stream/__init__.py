"""Pushed to subscribers: live portfolio value, P&L and alerts (StreamPortfolio)."""
