"""The Streamlit console: login, the Notebooks page for researchers, the Admin page."""
