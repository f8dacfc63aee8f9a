"""Evaluate page: placeholder until its issue lands."""

import streamlit as st

from pages import ui

ui.use_app_navigation()
st.title("Evaluate")
st.info(
    "Coming soon: test metrics, the confusion matrix and the worst predictions.",
    icon=":material/construction:",
)
