"""Provider clients: one module per provider, one shared interface (`base.Provider`)."""
