"""Research notebook launcher: domain package (models, settings, policy, state store, service)."""
