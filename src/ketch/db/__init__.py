"""The metadata database: models, engine and sessions, migrations."""
