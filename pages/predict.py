"""Predict page: placeholder until its issue lands."""

import streamlit as st

st.title("Predict")
st.info(
    "Coming soon: classify new images with a saved run, with saliency maps.",
    icon=":material/construction:",
)
