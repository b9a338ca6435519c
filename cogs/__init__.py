"""Discord surface: slash commands, context menus, buttons and moderator settings (discord.py extensions)."""
