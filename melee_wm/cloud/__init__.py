"""Cloud runs on Modal: the plain functions `modal_launcher.py` wraps (testable without a Modal token)."""
