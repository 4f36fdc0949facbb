"""`prefer serve`: the human-feedback labeling web app (FastAPI + SQLAlchemy 2 + Alembic, SQLite or PostgreSQL).

server.py  app factory, pages, launcher      api.py      JSON API (labelers, admin)
deps.py    who is asking, CSRF               security.py argon2 passwords, session tokens
service.py what the app does (no HTTP)       export.py   JSONL export, progress, agreement
models.py  ORM; migrations/ Alembic          agreement.py pairwise agreement, Kendall's tau-b
"""
