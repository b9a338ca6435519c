"""Local fake provider servers (real HTTP on 127.0.0.1) shared by provider, bot and benchmark tests."""
