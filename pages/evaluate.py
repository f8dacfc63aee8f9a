"""Evaluate page: placeholder until its issue lands."""

import streamlit as st

st.title("Evaluate")
st.info(
    "Coming soon: test metrics, the confusion matrix and the worst predictions.",
    icon=":material/construction:",
)
