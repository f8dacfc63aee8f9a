"""Predict page: placeholder until its issue lands."""

import streamlit as st

from pages import ui

ui.use_app_navigation()
st.title("Predict")
st.info(
    "Coming soon: classify new images with a saved run, with saliency maps.",
    icon=":material/construction:",
)
