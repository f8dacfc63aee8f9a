"""Tune page: placeholder until its issue lands."""

import streamlit as st

from pages import ui

ui.use_app_navigation()
st.title("Tune")
st.info(
    "Coming soon: hyperparameter search with Optuna and pruning.", icon=":material/construction:"
)
