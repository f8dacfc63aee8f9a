"""cnnlab: a local CNN lab. Pure-Python core (no Streamlit) used by the dashboard and the CLI."""

__version__ = "0.1.0"
