"""Apps served by the HTTP tests (tests/test_http.py)."""
