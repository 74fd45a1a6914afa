"""The device lab: every measurement kept in a database (:mod:`.store`), its history and
trend (:mod:`.history`), two results compared with statistics (:mod:`.diff`,
:mod:`.stats`), and the device's own speed measured beside each sitting (:mod:`.reference`).
Host side only (SQLAlchemy, Alembic; PostgreSQL through psycopg)."""
