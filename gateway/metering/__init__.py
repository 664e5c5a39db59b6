"""Metering: weigh → debit (Lua, one script per account) → decide → settle.

The budget logic lives in Lua only (`lua/`); Python builds keys and arguments (pure),
makes the one round trip, and turns the reply into a decision (pure).
"""
