"""The API's routes, one module per resource; /docs and /redoc in docs.py."""
