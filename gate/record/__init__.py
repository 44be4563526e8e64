"""The system of record: SQLite through sqlite-utils, its migrations, uploads, the outbox and the audit log."""
