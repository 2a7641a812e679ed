"""The ``splitserve`` command line. Each part's commands import that part lazily."""
