"""Business flows behind the API's routes: they speak domain types and raise domain errors;
the routers speak HTTP and map those errors to status codes (api/errors.py)."""
