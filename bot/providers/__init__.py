"""Provider clients: one module per provider, one shared interface (`base.Provider`), one `registry` entry each."""
